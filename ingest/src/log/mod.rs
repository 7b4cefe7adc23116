//! Event-log backends. The trait lives in `tributary_core::log`; [`conformance`] is the
//! one test suite every backend must pass.

pub mod conformance;
pub mod embedded;

pub use embedded::EmbeddedLog;
