//! The Tidings email dispatcher: consumes ticket events and guest code requests and sends
//! notification-only emails — to signed-in customers at their account address, to guests with
//! a link bound to their address — once per event and recipient.

pub mod app;
mod compose;
pub mod config;
pub mod handler;
pub mod mailer;
pub mod render;

pub use app::Application;
pub use config::Config;
