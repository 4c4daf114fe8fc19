//! Notification planning: which ticket updates reach the requester, on which channel, as
//! what kind of message. Pure functions of the update (and the clock where expiry matters);
//! sending is the dispatchers' business.

mod email;
mod push;

pub use email::{Audience, EmailKind, EmailPlan, SkipReason, plan_code_email, plan_email};
pub use push::{
    Device, DeviceToken, FCM_TOKEN_MAX_CHARS, Platform, Preferences, PushKind, PushPlan,
    QuietHours, When, parse_app_id, plan_push, push_kind, release_held,
};
