//! Where a batch run's partial plans execute: in this process, or on an Apache Ballista
//! cluster. Either way the plan is the view's own DataFusion partial plan, so the states
//! are those the speed layer merges with (the same accumulators, bit for bit).

use std::sync::Arc;

use tributary_core::config::{BatchConfig, BatchEngine};

use crate::ballista::Cluster;

/// A batch run's engine (`batch.engine`).
#[derive(Debug, Clone, Default)]
pub enum Engine {
    /// DataFusion in this process, on every core.
    #[default]
    Local,
    /// A Ballista scheduler and its executors.
    Ballista(Arc<Cluster>),
}

impl Engine {
    /// The engine `config` asks for.
    pub fn from_config(config: &BatchConfig) -> Self {
        match config.engine {
            BatchEngine::Local => Engine::Local,
            BatchEngine::Ballista => Engine::Ballista(Arc::new(Cluster::new(&config.ballista))),
        }
    }

    /// Its name, as the run history shows it.
    pub fn name(&self) -> &'static str {
        match self {
            Engine::Local => BatchEngine::Local.name(),
            Engine::Ballista(_) => BatchEngine::Ballista.name(),
        }
    }
}
