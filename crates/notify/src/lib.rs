//! Notification planning: which ticket updates reach the requester, on which channel, as
//! what kind of message. Pure functions of the update (and the clock where expiry matters);
//! sending is the dispatchers' business.

mod email;

pub use email::{Audience, EmailKind, EmailPlan, SkipReason, plan_code_email, plan_email};
