//! A Ballista recompute cluster for tests: `tributary ballista-scheduler` and executors,
//! each a real process on loopback, stopped (SIGKILL) when dropped.

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use super::free_port;

pub struct Cluster {
    /// The scheduler's `host:port`, for `[batch.ballista] scheduler`.
    pub scheduler: String,
    dir: PathBuf,
    /// The configuration the executors read `[storage]` from (object store options).
    config: Option<PathBuf>,
    scheduler_child: Child,
    pub executors: Vec<Child>,
}

fn spawn(dir: &Path, name: &str, config: Option<&Path>, args: &[String]) -> Child {
    let log = std::fs::File::create(dir.join(format!("{name}.log"))).unwrap();
    let mut command = Command::new(env!("CARGO_BIN_EXE_tributary"));
    if let Some(config) = config {
        command.arg("--config").arg(config);
    }
    command
        .args(args)
        .current_dir(dir)
        .env("TRIBUTARY_STORAGE_ROOT", dir.join("data"))
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("spawning a Ballista role")
}

impl Cluster {
    /// A scheduler and `executors` executors, logs under `dir`; returns once the
    /// scheduler accepts connections.
    pub fn start(dir: &Path, executors: usize) -> Cluster {
        Self::start_with(dir, executors, None)
    }

    /// The same, every role reading `config` (its `[storage]` options reach the
    /// object store the tables are on).
    pub fn start_with(dir: &Path, executors: usize, config: Option<&Path>) -> Cluster {
        let dir = dir.join("cluster");
        std::fs::create_dir_all(&dir).unwrap();
        let scheduler = format!("127.0.0.1:{}", free_port());
        let scheduler_child = spawn(
            &dir,
            "scheduler",
            config,
            &[
                "ballista-scheduler".into(),
                "--bind".into(),
                scheduler.clone(),
                // A lost executor's tasks move within seconds, not the default 20.
                "--executor-timeout-secs".into(),
                "4".into(),
            ],
        );
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(&scheduler).is_err() {
            assert!(
                Instant::now() < deadline,
                "the Ballista scheduler did not listen"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        let mut cluster = Cluster {
            scheduler,
            dir,
            config: config.map(Path::to_path_buf),
            scheduler_child,
            executors: Vec::new(),
        };
        for _ in 0..executors {
            cluster.add_executor();
        }
        cluster
    }

    /// Start one more executor.
    pub fn add_executor(&mut self) {
        let i = self.executors.len();
        let work = self.dir.join(format!("work-{i}"));
        std::fs::create_dir_all(&work).unwrap();
        let child = spawn(
            &self.dir,
            &format!("executor-{i}"),
            self.config.as_deref(),
            &[
                "ballista-executor".into(),
                "--scheduler".into(),
                self.scheduler.clone(),
                "--flight-port".into(),
                free_port().to_string(),
                "--grpc-port".into(),
                free_port().to_string(),
                "--vcores".into(),
                "2".into(),
                "--work-dir".into(),
                work.display().to_string(),
                "--heartbeat-secs".into(),
                "1".into(),
            ],
        );
        self.executors.push(child);
    }

    /// Send `signal` (`STOP`, `KILL`, …) to executor `i`.
    pub fn signal_executor(&self, i: usize, signal: &str) {
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.executors[i].id().to_string())
            .status()
            .unwrap();
        assert!(status.success(), "kill -{signal} executor {i}");
    }

    /// The environment that sends a Tributary's batch runs to this cluster.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("TRIBUTARY_BATCH__ENGINE", "ballista".into()),
            (
                "TRIBUTARY_BATCH__BALLISTA__SCHEDULER",
                self.scheduler.clone(),
            ),
            ("TRIBUTARY_BATCH__BALLISTA__PARTITIONS", "4".into()),
            // A job the scheduler never finishes (a stage it failed to plan) fails the
            // run in a minute, so a test fails with the reason instead of hanging for
            // the default ten minutes.
            ("TRIBUTARY_BATCH__BALLISTA__JOB_TIMEOUT_MS", "60000".into()),
        ]
    }

    pub fn logs(&self) -> String {
        let mut out = String::new();
        for e in std::fs::read_dir(&self.dir).unwrap().flatten() {
            if e.file_name().to_string_lossy().ends_with(".log") {
                out.push_str(&format!("--- {}\n", e.file_name().to_string_lossy()));
                out.push_str(&std::fs::read_to_string(e.path()).unwrap_or_default());
            }
        }
        out
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for c in self.executors.iter_mut().chain([&mut self.scheduler_child]) {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
