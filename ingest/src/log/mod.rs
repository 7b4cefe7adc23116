//! Event-log backends. The trait lives in `tributary_core::log`; [`conformance`] is the
//! one test suite every backend must pass.

mod chunk;
pub mod conformance;
pub mod embedded;
pub mod kafka;
pub mod membership;

pub use embedded::EmbeddedLog;
pub use kafka::KafkaLog;
