//! Devices, preferences, held pushes and resolutions, in the dispatcher's own schema.

use chrono::{DateTime, NaiveTime, Utc};
use sqlx::{PgPool, Row};
use tidings_domain::Locale;
use tidings_notify::{Device, DeviceToken, Platform, Preferences, PushKind, QuietHours};
use uuid::Uuid;

#[derive(Clone)]
pub struct Registry {
    pool: PgPool,
}

/// A push waiting for the end of quiet hours.
pub struct Held {
    pub id: i64,
    pub event_id: Uuid,
    pub device_id: Uuid,
    pub kind: PushKind,
    /// The ticket event (protobuf) it came from.
    pub event: Vec<u8>,
    pub traceparent: Option<String>,
    /// The ticket was resolved after this push was held.
    pub resolved_since: bool,
}

fn platform_from(raw: &str) -> Platform {
    if raw == "ios" {
        Platform::Ios
    } else {
        Platform::Android
    }
}

fn device_from(r: &sqlx::postgres::PgRow) -> Option<Device> {
    let platform = platform_from(r.get::<&str, _>("platform"));
    Some(Device {
        id: r.get("device_id"),
        platform,
        token: DeviceToken::parse(platform, r.get("token")).ok()?,
        app_id: r.get("app_id"),
        locale: Locale::parse(r.get("locale")).unwrap_or_else(|_| Locale::english()),
    })
}

fn preferences_from(r: &sqlx::postgres::PgRow) -> Preferences {
    let quiet = match (
        r.get::<Option<NaiveTime>, _>("quiet_start"),
        r.get::<Option<NaiveTime>, _>("quiet_end"),
        r.get::<Option<String>, _>("time_zone"),
    ) {
        (Some(start), Some(end), Some(tz)) => tz.parse().ok().map(|time_zone| QuietHours {
            start,
            end,
            time_zone,
        }),
        _ => None,
    };
    Preferences {
        enabled: r.get("push_enabled"),
        agent_replies: r.get("agent_replies"),
        info_requests: r.get("info_requests"),
        resolutions: r.get("resolutions"),
        quiet_hours: quiet,
    }
}

impl Registry {
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }

    /// Registers a token for `account`; the same token again is the same device (moved to
    /// `account` if another one had it). Returns the device and when it was registered.
    pub async fn register(
        &self,
        account: &str,
        platform: Platform,
        token: &DeviceToken,
        app_id: &str,
        locale: &Locale,
    ) -> Result<(Device, DateTime<Utc>), sqlx::Error> {
        let row = sqlx::query(
            "INSERT INTO devices (device_id, account_id, platform, token, app_id, locale)
             VALUES ($1, $2, $3, $4, $5, $6)
             ON CONFLICT (platform, token) DO UPDATE
                 SET account_id = EXCLUDED.account_id, app_id = EXCLUDED.app_id,
                     locale = EXCLUDED.locale, registered_at = now()
             RETURNING device_id, platform, token, app_id, locale, registered_at",
        )
        .bind(Uuid::now_v7())
        .bind(account)
        .bind(platform.name())
        .bind(token.as_str())
        .bind(app_id)
        .bind(locale.as_str())
        .fetch_one(&self.pool)
        .await?;
        let device = device_from(&row)
            .ok_or_else(|| sqlx::Error::Protocol("stored token is invalid".into()))?;
        Ok((device, row.get("registered_at")))
    }

    /// Removes one of `account`'s devices by id or token; false if it had no such device.
    pub async fn unregister(
        &self,
        account: &str,
        device_id: Option<Uuid>,
        token: Option<&str>,
    ) -> Result<bool, sqlx::Error> {
        let n = sqlx::query(
            "DELETE FROM devices WHERE account_id = $1
               AND (device_id = $2 OR ($2 IS NULL AND token = $3))",
        )
        .bind(account)
        .bind(device_id)
        .bind(token)
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(n > 0)
    }

    pub async fn list(&self, account: &str) -> Result<Vec<(Device, DateTime<Utc>)>, sqlx::Error> {
        let rows = sqlx::query(
            "SELECT device_id, platform, token, app_id, locale, registered_at
             FROM devices WHERE account_id = $1 ORDER BY registered_at, device_id",
        )
        .bind(account)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .iter()
            .filter_map(|r| Some((device_from(r)?, r.get("registered_at"))))
            .collect())
    }

    /// A provider said the token is dead.
    pub async fn remove_device(&self, device_id: Uuid) -> Result<(), sqlx::Error> {
        sqlx::query("DELETE FROM devices WHERE device_id = $1")
            .bind(device_id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    pub async fn device(&self, device_id: Uuid) -> Result<Option<Device>, sqlx::Error> {
        let row = sqlx::query(
            "SELECT device_id, platform, token, app_id, locale FROM devices WHERE device_id = $1",
        )
        .bind(device_id)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.as_ref().and_then(device_from))
    }

    pub async fn preferences(&self, account: &str) -> Result<Preferences, sqlx::Error> {
        let row = sqlx::query(
            "SELECT push_enabled, agent_replies, info_requests, resolutions,
                    quiet_start, quiet_end, time_zone
             FROM preferences WHERE account_id = $1",
        )
        .bind(account)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.as_ref().map(preferences_from).unwrap_or_default())
    }

    pub async fn set_preferences(&self, account: &str, p: &Preferences) -> Result<(), sqlx::Error> {
        let q = p.quiet_hours.as_ref();
        sqlx::query(
            "INSERT INTO preferences (account_id, push_enabled, agent_replies, info_requests,
                                      resolutions, quiet_start, quiet_end, time_zone)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
             ON CONFLICT (account_id) DO UPDATE SET
                 push_enabled = EXCLUDED.push_enabled, agent_replies = EXCLUDED.agent_replies,
                 info_requests = EXCLUDED.info_requests, resolutions = EXCLUDED.resolutions,
                 quiet_start = EXCLUDED.quiet_start, quiet_end = EXCLUDED.quiet_end,
                 time_zone = EXCLUDED.time_zone, updated_at = now()",
        )
        .bind(account)
        .bind(p.enabled)
        .bind(p.agent_replies)
        .bind(p.info_requests)
        .bind(p.resolutions)
        .bind(q.map(|q| q.start))
        .bind(q.map(|q| q.end))
        .bind(q.map(|q| q.time_zone.name().to_owned()))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Everything the planner needs about the requester, in one round trip.
    pub async fn recipient(
        &self,
        account: &str,
    ) -> Result<(Vec<Device>, Preferences), sqlx::Error> {
        let rows = sqlx::query(
            "SELECT d.device_id, d.platform, d.token, d.app_id, d.locale,
                    p.push_enabled, p.agent_replies, p.info_requests, p.resolutions,
                    p.quiet_start, p.quiet_end, p.time_zone
             FROM (SELECT $1::text AS account_id) a
             LEFT JOIN devices d ON d.account_id = a.account_id
             LEFT JOIN preferences p ON p.account_id = a.account_id",
        )
        .bind(account)
        .fetch_all(&self.pool)
        .await?;
        let prefs = rows
            .first()
            .filter(|r| r.get::<Option<bool>, _>("push_enabled").is_some())
            .map(preferences_from)
            .unwrap_or_default();
        let devices = rows
            .iter()
            .filter(|r| r.get::<Option<Uuid>, _>("device_id").is_some())
            .filter_map(device_from)
            .collect();
        Ok((devices, prefs))
    }

    pub async fn mark_resolved(&self, ticket_id: Uuid, sequence: u64) -> Result<(), sqlx::Error> {
        sqlx::query(
            "INSERT INTO resolutions (ticket_id, sequence) VALUES ($1, $2)
             ON CONFLICT (ticket_id) DO UPDATE
                 SET sequence = GREATEST(resolutions.sequence, EXCLUDED.sequence)",
        )
        .bind(ticket_id)
        .bind(sequence as i64)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Holds a push; holding the same (event, device) again changes nothing.
    #[allow(clippy::too_many_arguments)]
    pub async fn hold(
        &self,
        event_id: Uuid,
        device_id: Uuid,
        ticket_id: Uuid,
        sequence: u64,
        kind: PushKind,
        held_at: DateTime<Utc>,
        release_at: DateTime<Utc>,
        event: &[u8],
        traceparent: Option<&str>,
    ) -> Result<(), sqlx::Error> {
        sqlx::query(
            "INSERT INTO held_pushes (event_id, device_id, ticket_id, sequence, kind, held_at,
                                      release_at, event, traceparent)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
             ON CONFLICT (event_id, device_id) DO NOTHING",
        )
        .bind(event_id)
        .bind(device_id)
        .bind(ticket_id)
        .bind(sequence as i64)
        .bind(kind.name())
        .bind(held_at)
        .bind(release_at)
        .bind(event)
        .bind(traceparent)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Claims up to `limit` held pushes due at `now`, oldest first, for one minute: a replica
    /// that dies before releasing them leaves them due again then (the send log keeps a
    /// second attempt from pushing twice), and replicas never claim the same rows.
    pub async fn claim_due(
        &self,
        now: DateTime<Utc>,
        limit: i64,
    ) -> Result<Vec<Held>, sqlx::Error> {
        let rows = sqlx::query(
            "WITH claimed AS (
                 UPDATE held_pushes SET release_at = $1 + interval '1 minute'
                 WHERE id IN (SELECT id FROM held_pushes WHERE release_at <= $1
                              ORDER BY release_at, id LIMIT $2 FOR UPDATE SKIP LOCKED)
                 RETURNING *
             )
             SELECT h.id, h.event_id, h.device_id, h.kind, h.event, h.traceparent,
                    COALESCE(r.sequence > h.sequence, false) AS resolved_since
             FROM claimed h LEFT JOIN resolutions r ON r.ticket_id = h.ticket_id
             ORDER BY h.id",
        )
        .bind(now)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .iter()
            .filter_map(|r| {
                Some(Held {
                    id: r.get("id"),
                    event_id: r.get("event_id"),
                    device_id: r.get("device_id"),
                    kind: PushKind::parse(r.get("kind"))?,
                    event: r.get("event"),
                    traceparent: r.get("traceparent"),
                    resolved_since: r.get("resolved_since"),
                })
            })
            .collect())
    }

    pub async fn release(&self, id: i64) -> Result<(), sqlx::Error> {
        sqlx::query("DELETE FROM held_pushes WHERE id = $1")
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}
