//! The Tidings customer portal: the pages every notification links to. It owns no ticket
//! data; every page is a gRPC call to the ticket service with the visitor's credentials.

mod app;
mod backend;
mod config;
mod customer;
mod guest;
mod i18n;
mod oidc;
mod pages;
mod requests;
mod web;

pub use app::{Application, router};
pub use config::Config;
pub use i18n::Lang;
