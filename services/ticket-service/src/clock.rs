//! The clock lives in the domain crate (the dispatchers use it too).

pub use tidings_domain::clock::{Clock, ManualClock, SystemClock};
