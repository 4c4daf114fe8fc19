//! The Tidings ticket service: support tickets as event streams in Postgres, served over
//! gRPC, published to Kafka through a transactional outbox.

pub mod api;
pub mod app;
pub mod clock;
pub mod commands;
pub mod config;
pub mod error;

pub use app::Application;
pub use clock::{Clock, ManualClock, SystemClock};
pub use config::Config;
