//! Push: signed-in customers' devices hear about the support team's replies, requests for
//! information and resolutions — as far as their preferences allow, and not during their
//! quiet hours (those pushes are held to the end of the window). Guests never get push.

use chrono::{DateTime, Duration, NaiveTime, TimeZone as _, Utc};
use chrono_tz::Tz;
use tidings_domain::{ActorKind, Change, Locale, Requester, TicketUpdate};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PushKind {
    AgentReplied,
    InfoRequested,
    Resolved,
}

impl PushKind {
    pub fn name(&self) -> &'static str {
        match self {
            PushKind::AgentReplied => "agent_replied",
            PushKind::InfoRequested => "info_requested",
            PushKind::Resolved => "resolved",
        }
    }
    pub fn parse(raw: &str) -> Option<Self> {
        match raw {
            "agent_replied" => Some(PushKind::AgentReplied),
            "info_requested" => Some(PushKind::InfoRequested),
            "resolved" => Some(PushKind::Resolved),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Platform {
    /// APNs.
    Ios,
    /// FCM.
    Android,
}

impl Platform {
    pub fn name(&self) -> &'static str {
        match self {
            Platform::Ios => "ios",
            Platform::Android => "android",
        }
    }
}

/// A device token as the provider issued it, checked for its platform: APNs tokens are 64 hex
/// characters (kept lowercase), FCM registration tokens are opaque but printable and bounded.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DeviceToken(String);

pub const FCM_TOKEN_MAX_CHARS: usize = 4096;

impl DeviceToken {
    pub fn parse(platform: Platform, raw: &str) -> Result<Self, String> {
        let raw = raw.trim();
        match platform {
            Platform::Ios => {
                if raw.len() == 64 && raw.chars().all(|c| c.is_ascii_hexdigit()) {
                    Ok(Self(raw.to_ascii_lowercase()))
                } else {
                    Err("must be the 64 hexadecimal characters of an APNs device token".into())
                }
            }
            Platform::Android => {
                if raw.is_empty() {
                    Err("must not be empty".into())
                } else if raw.chars().count() > FCM_TOKEN_MAX_CHARS {
                    Err(format!("must be at most {FCM_TOKEN_MAX_CHARS} characters"))
                } else if !raw.chars().all(|c| c.is_ascii_graphic()) {
                    Err("must be printable ASCII without spaces".into())
                } else {
                    Ok(Self(raw.to_owned()))
                }
            }
        }
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// An app's bundle id (the APNs topic) or Android package name.
pub fn parse_app_id(raw: &str) -> Result<String, String> {
    let raw = raw.trim();
    let ok = !raw.is_empty()
        && raw.len() <= 255
        && raw
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'));
    if ok {
        Ok(raw.to_owned())
    } else {
        Err("must be a bundle id or package name such as com.example.app".into())
    }
}

/// A registered device of the requester's account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Device {
    pub id: uuid::Uuid,
    pub platform: Platform,
    pub token: DeviceToken,
    /// The app's bundle id (APNs topic) or package name.
    pub app_id: String,
    pub locale: Locale,
}

/// A daily window in the user's time zone; `start > end` crosses midnight (22:00–07:00).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuietHours {
    pub start: NaiveTime,
    pub end: NaiveTime,
    pub time_zone: Tz,
}

impl QuietHours {
    /// When the window that contains `now` ends, or `None` outside the window.
    pub fn ends_after(&self, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        if self.start == self.end {
            return None;
        }
        let local = now.with_timezone(&self.time_zone);
        let t = local.time();
        let inside = if self.start < self.end {
            t >= self.start && t < self.end
        } else {
            t >= self.start || t < self.end
        };
        if !inside {
            return None;
        }
        let day = if self.start > self.end && t >= self.start {
            local.date_naive() + Duration::days(1)
        } else {
            local.date_naive()
        };
        let end = day.and_time(self.end);
        // A wall-clock time that a DST change skips is taken an hour later.
        let resolved = self
            .time_zone
            .from_local_datetime(&end)
            .earliest()
            .or_else(|| {
                self.time_zone
                    .from_local_datetime(&(end + Duration::hours(1)))
                    .earliest()
            })?;
        Some(resolved.with_timezone(&Utc))
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Preferences {
    pub enabled: bool,
    pub agent_replies: bool,
    pub info_requests: bool,
    pub resolutions: bool,
    pub quiet_hours: Option<QuietHours>,
}

impl Default for Preferences {
    /// Everything on, no quiet hours: what a user who never opened the settings gets.
    fn default() -> Self {
        Self {
            enabled: true,
            agent_replies: true,
            info_requests: true,
            resolutions: true,
            quiet_hours: None,
        }
    }
}

impl Preferences {
    pub fn allows(&self, kind: PushKind) -> bool {
        self.enabled
            && match kind {
                PushKind::AgentReplied => self.agent_replies,
                PushKind::InfoRequested => self.info_requests,
                PushKind::Resolved => self.resolutions,
            }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum When {
    Now,
    /// Quiet hours: hold until then.
    HoldUntil(DateTime<Utc>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushPlan {
    pub device: Device,
    pub kind: PushKind,
    pub when: When,
}

/// What kind of push an update is, if any.
pub fn push_kind(u: &TicketUpdate) -> Option<PushKind> {
    if !matches!(u.requester, Requester::Customer { .. }) {
        return None;
    }
    match &u.change {
        Change::ReplyAdded {
            author: ActorKind::Agent,
            ..
        } => Some(PushKind::AgentReplied),
        Change::InfoRequested { .. } => Some(PushKind::InfoRequested),
        Change::Resolved { .. } => Some(PushKind::Resolved),
        _ => None,
    }
}

/// One push per registered device of the requester, if the update is one they hear about by
/// push and their preferences allow it; held while their quiet hours last.
pub fn plan_push(
    u: &TicketUpdate,
    devices: &[Device],
    prefs: &Preferences,
    now: DateTime<Utc>,
) -> Vec<PushPlan> {
    let Some(kind) = push_kind(u) else {
        return vec![];
    };
    if !prefs.allows(kind) {
        return vec![];
    }
    let when = match prefs.quiet_hours.as_ref().and_then(|q| q.ends_after(now)) {
        Some(end) => When::HoldUntil(end),
        None => When::Now,
    };
    devices
        .iter()
        .map(|d| PushPlan {
            device: d.clone(),
            kind,
            when,
        })
        .collect()
}

/// At the end of quiet hours: a held push about a reply or a request for information is
/// dropped if the ticket was resolved after it was held (the resolution, if the user allows
/// those pushes, says everything that still matters); anything else is sent.
pub fn release_held(kind: PushKind, resolved_since: bool) -> bool {
    kind == PushKind::Resolved || !resolved_since
}

#[cfg(test)]
mod tests {
    use super::*;
    use tidings_domain::{AccountId, Email, TicketId, TicketNumber};

    fn at(rfc3339: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(rfc3339)
            .unwrap()
            .with_timezone(&Utc)
    }

    fn customer() -> Requester {
        Requester::Customer {
            account_id: AccountId::parse("ann").unwrap(),
            email: Email::parse("ann@example.com").unwrap(),
            locale: Locale::parse("it").unwrap(),
            display_name: None,
        }
    }

    fn devices() -> Vec<Device> {
        vec![
            Device {
                id: uuid::Uuid::now_v7(),
                platform: Platform::Ios,
                token: DeviceToken::parse(Platform::Ios, &"a".repeat(64)).unwrap(),
                app_id: "com.example.app".into(),
                locale: Locale::parse("it").unwrap(),
            },
            Device {
                id: uuid::Uuid::now_v7(),
                platform: Platform::Android,
                token: DeviceToken::parse(Platform::Android, "fcm-token").unwrap(),
                app_id: "com.example.app".into(),
                locale: Locale::parse("en").unwrap(),
            },
        ]
    }

    /// Given a ticket filed by `requester`, when `actor` causes `change`.
    fn update(requester: Requester, actor: ActorKind, change: Change) -> TicketUpdate {
        TicketUpdate {
            event_id: uuid::Uuid::now_v7(),
            ticket_id: TicketId::new(),
            ticket_number: TicketNumber::parse(12345).unwrap(),
            sequence: 2,
            occurred_at: Utc::now(),
            requester,
            actor,
            actor_name: "Giulia".into(),
            subject: "Withdrawal".into(),
            change,
        }
    }

    fn agent_reply() -> Change {
        Change::ReplyAdded {
            author: ActorKind::Agent,
            excerpt: "hi".into(),
        }
    }

    fn resolved() -> Change {
        Change::Resolved {
            note_excerpt: String::new(),
        }
    }

    #[test]
    fn an_agent_reply_plans_one_push_per_device_now() {
        let plans = plan_push(
            &update(customer(), ActorKind::Agent, agent_reply()),
            &devices(),
            &Preferences::default(),
            Utc::now(),
        );
        assert_eq!(plans.len(), 2);
        assert!(
            plans
                .iter()
                .all(|p| p.kind == PushKind::AgentReplied && p.when == When::Now)
        );
    }

    #[test]
    fn guests_never_get_push() {
        let guest = Requester::Guest {
            email: Email::parse("g@example.com").unwrap(),
            locale: Locale::parse("en").unwrap(),
        };
        let u = update(guest, ActorKind::Agent, agent_reply());
        assert!(plan_push(&u, &devices(), &Preferences::default(), Utc::now()).is_empty());
    }

    #[test]
    fn the_customers_own_reply_and_opening_push_nothing() {
        let own = Change::ReplyAdded {
            author: ActorKind::Customer,
            excerpt: "me".into(),
        };
        let opened = Change::Opened {
            excerpt: "help".into(),
        };
        for change in [own, opened, Change::Reopened] {
            let u = update(customer(), ActorKind::Customer, change);
            assert!(plan_push(&u, &devices(), &Preferences::default(), Utc::now()).is_empty());
        }
    }

    #[test]
    fn replies_off_silences_replies_but_not_resolutions() {
        let prefs = Preferences {
            agent_replies: false,
            ..Preferences::default()
        };
        let reply = update(customer(), ActorKind::Agent, agent_reply());
        let done = update(customer(), ActorKind::Agent, resolved());
        assert!(plan_push(&reply, &devices(), &prefs, Utc::now()).is_empty());
        assert_eq!(plan_push(&done, &devices(), &prefs, Utc::now()).len(), 2);
        let off = Preferences {
            enabled: false,
            ..Preferences::default()
        };
        assert!(plan_push(&done, &devices(), &off, Utc::now()).is_empty());
    }

    fn night_in_rome() -> QuietHours {
        QuietHours {
            start: NaiveTime::from_hms_opt(22, 0, 0).unwrap(),
            end: NaiveTime::from_hms_opt(7, 0, 0).unwrap(),
            time_zone: chrono_tz::Europe::Rome,
        }
    }

    #[test]
    fn during_quiet_hours_pushes_are_held_to_the_end_of_the_window() {
        let prefs = Preferences {
            quiet_hours: Some(night_in_rome()),
            ..Preferences::default()
        };
        let u = update(customer(), ActorKind::Agent, agent_reply());
        // 23:30 in Rome (CET, UTC+1) → held until 07:00 Rome = 06:00 UTC next day.
        let plans = plan_push(&u, &devices(), &prefs, at("2026-11-25T22:30:00Z"));
        assert!(
            plans
                .iter()
                .all(|p| p.when == When::HoldUntil(at("2026-11-26T06:00:00Z")))
        );
        // 05:00 in Rome, the same window after midnight → 07:00 the same day.
        let plans = plan_push(&u, &devices(), &prefs, at("2026-11-26T04:00:00Z"));
        assert_eq!(plans[0].when, When::HoldUntil(at("2026-11-26T06:00:00Z")));
        // 12:00 in Rome → now.
        let plans = plan_push(&u, &devices(), &prefs, at("2026-11-26T11:00:00Z"));
        assert_eq!(plans[0].when, When::Now);
    }

    #[test]
    fn a_window_within_one_day_and_daylight_saving_time_are_respected() {
        let lunch = QuietHours {
            start: NaiveTime::from_hms_opt(12, 0, 0).unwrap(),
            end: NaiveTime::from_hms_opt(14, 0, 0).unwrap(),
            time_zone: chrono_tz::America::New_York,
        };
        // 13:00 in New York in July (EDT, UTC-4) → 14:00 EDT = 18:00 UTC.
        assert_eq!(
            lunch.ends_after(at("2026-07-01T17:00:00Z")),
            Some(at("2026-07-01T18:00:00Z"))
        );
        assert_eq!(lunch.ends_after(at("2026-07-01T19:00:00Z")), None);
    }

    #[test]
    fn device_tokens_are_checked_for_their_platform() {
        let apns = "A1".repeat(32);
        assert_eq!(
            DeviceToken::parse(Platform::Ios, &apns).unwrap().as_str(),
            apns.to_ascii_lowercase()
        );
        assert!(DeviceToken::parse(Platform::Ios, "abc").is_err());
        assert!(DeviceToken::parse(Platform::Ios, &"g".repeat(64)).is_err());
        assert!(DeviceToken::parse(Platform::Android, "dGhpcyBpcyBh:APA91b").is_ok());
        assert!(DeviceToken::parse(Platform::Android, "").is_err());
        assert!(DeviceToken::parse(Platform::Android, "has space").is_err());
        assert!(DeviceToken::parse(Platform::Android, &"x".repeat(4097)).is_err());
        assert!(parse_app_id("com.example.app").is_ok());
        assert!(parse_app_id("com example").is_err());
    }

    #[test]
    fn held_replies_are_dropped_when_the_ticket_was_resolved_meanwhile() {
        assert!(release_held(PushKind::AgentReplied, false));
        assert!(!release_held(PushKind::AgentReplied, true));
        assert!(!release_held(PushKind::InfoRequested, true));
        assert!(release_held(PushKind::Resolved, true));
    }

    proptest::proptest! {
        /// Any registration input is accepted only in the provider's token shape, and an
        /// accepted token parses to itself.
        #[test]
        fn device_tokens_are_accepted_only_in_their_shape(raw in "\\PC{0,200}|[0-9a-fA-F]{64}") {
            if let Ok(t) = DeviceToken::parse(Platform::Ios, &raw) {
                proptest::prop_assert!(t.as_str().len() == 64 && t.as_str().chars().all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
                proptest::prop_assert_eq!(DeviceToken::parse(Platform::Ios, t.as_str()).unwrap(), t);
            }
            if let Ok(t) = DeviceToken::parse(Platform::Android, &raw) {
                proptest::prop_assert!(!t.as_str().is_empty() && t.as_str().chars().all(|c| c.is_ascii_graphic()));
                proptest::prop_assert_eq!(DeviceToken::parse(Platform::Android, t.as_str()).unwrap(), t);
            }
        }
    }
}
