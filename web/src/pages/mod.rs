//! One module per page of the dashboard.

pub mod batch;
pub mod login;
pub mod new_view;
pub mod overview;
pub mod sql;
pub mod streams;
pub mod view;
