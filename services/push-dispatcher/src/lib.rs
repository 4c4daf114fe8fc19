//! The Tidings push dispatcher: a registry of signed-in customers' devices and their push
//! preferences (gRPC `tidings.push.v1`), and the consumer that turns ticket events into APNs
//! and FCM pushes — once per event and device, held during quiet hours, never for guests.

pub mod api;
pub mod apns;
pub mod app;
pub mod config;
pub mod fcm;
pub mod handler;
pub mod payload;
pub mod registry;
pub mod transport;

pub use app::Application;
pub use config::Config;
pub use registry::Registry;
