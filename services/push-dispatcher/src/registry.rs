//! Devices, preferences, held pushes and resolutions, in the dispatcher's own schema.

use chrono::{DateTime, NaiveTime, Utc};
use sqlx::{PgPool, Row};
use tidings_domain::Locale;
use tidings_notify::{Device, DeviceToken, Platform, Preferences, PushKind, QuietHours};
use uuid::Uuid;

#[derive(Clone)]
pub struct Registry {
    pool: PgPool,
    /// How long a claim of held pushes lasts unless renewed.
    hold_lease: std::time::Duration,
}

/// A push waiting for the end of quiet hours.
pub struct Held {
    pub id: i64,
    pub event_id: Uuid,
    pub device_id: Uuid,
    /// What it announces, or the stored name no kind has (a hold written by a newer
    /// release, or damaged): such a hold can never be sent.
    pub kind: Result<PushKind, String>,
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

/// A device row, read with `try_get`: a surprise (a NULL, a type) is an error for the caller
/// to handle, never a panic in a lane. A stored token that no longer parses is skipped
/// (`None`): such a device cannot be pushed to.
fn device_from(r: &sqlx::postgres::PgRow) -> Result<Option<Device>, sqlx::Error> {
    let platform = platform_from(r.try_get::<&str, _>("platform")?);
    let Ok(token) = DeviceToken::parse(platform, r.try_get("token")?) else {
        return Ok(None);
    };
    Ok(Some(Device {
        id: r.try_get("device_id")?,
        platform,
        token,
        app_id: r.try_get("app_id")?,
        locale: Locale::parse(r.try_get("locale")?).unwrap_or_else(|_| Locale::english()),
    }))
}

fn preferences_from(r: &sqlx::postgres::PgRow) -> Result<Preferences, sqlx::Error> {
    let quiet = match (
        r.try_get::<Option<NaiveTime>, _>("quiet_start")?,
        r.try_get::<Option<NaiveTime>, _>("quiet_end")?,
        r.try_get::<Option<String>, _>("time_zone")?,
    ) {
        (Some(start), Some(end), Some(tz)) => tz.parse().ok().map(|time_zone| QuietHours {
            start,
            end,
            time_zone,
        }),
        _ => None,
    };
    Ok(Preferences {
        enabled: r.try_get("push_enabled")?,
        agent_replies: r.try_get("agent_replies")?,
        info_requests: r.try_get("info_requests")?,
        resolutions: r.try_get("resolutions")?,
        quiet_hours: quiet,
    })
}

impl Registry {
    pub fn new(pool: PgPool) -> Self {
        Self {
            pool,
            hold_lease: DEFAULT_LEASE,
        }
    }

    pub fn with_hold_lease(self, hold_lease: std::time::Duration) -> Self {
        Self { hold_lease, ..self }
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
        let device = device_from(&row)?
            .ok_or_else(|| sqlx::Error::Protocol("stored token is invalid".into()))?;
        Ok((device, row.try_get("registered_at")?))
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
        let mut devices = Vec::with_capacity(rows.len());
        for r in &rows {
            if let Some(device) = device_from(r)? {
                devices.push((device, r.try_get("registered_at")?));
            }
        }
        Ok(devices)
    }

    /// A provider said the token is gone: the device moves to `removed_devices` (where
    /// `restore_removed` can bring it back) — unless more devices were removed in the last
    /// hour than `guard` allows, which is not churn but a misconfiguration (a wrong provider
    /// URL, a proxy answering 404, sandbox tokens sent to production): then it stays.
    pub async fn invalidate(
        &self,
        device_id: Uuid,
        reason: &str,
        guard: &InvalidationGuard,
    ) -> Result<Invalidation, sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        // One invalidation at a time: the count and the move are one decision.
        sqlx::query("SELECT pg_advisory_xact_lock(hashtext('tidings.push.invalidate'))")
            .execute(&mut *tx)
            .await?;
        let (recent, devices): (i64, f32) = sqlx::query_as(
            "SELECT (SELECT count(*) FROM removed_devices
                     WHERE removed_at > now() - interval '1 hour'),
                    (SELECT GREATEST(reltuples, 0) FROM pg_class
                     WHERE oid = 'devices'::regclass)",
        )
        .fetch_one(&mut *tx)
        .await?;
        let limit = guard.limit(devices as u64);
        if recent as u64 >= limit {
            return Ok(Invalidation::Withheld {
                recent: recent as u64,
                limit,
            });
        }
        sqlx::query(
            "WITH gone AS (DELETE FROM devices WHERE device_id = $1 RETURNING *)
             INSERT INTO removed_devices (device_id, account_id, platform, token, app_id,
                                          locale, registered_at, removed_at, reason)
             SELECT device_id, account_id, platform, token, app_id, locale, registered_at,
                    now(), $2
             FROM gone
             ON CONFLICT (device_id) DO UPDATE
                 SET removed_at = EXCLUDED.removed_at, reason = EXCLUDED.reason",
        )
        .bind(device_id)
        .bind(reason)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(Invalidation::Removed)
    }

    /// Brings back the devices removed at or after `since` whose token nobody registered
    /// again meanwhile; returns how many.
    pub async fn restore_removed(&self, since: DateTime<Utc>) -> Result<u64, sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        let restored = sqlx::query(
            "INSERT INTO devices (device_id, account_id, platform, token, app_id, locale,
                                  registered_at)
             SELECT device_id, account_id, platform, token, app_id, locale, registered_at
             FROM removed_devices WHERE removed_at >= $1
             ON CONFLICT DO NOTHING",
        )
        .bind(since)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        sqlx::query(
            "DELETE FROM removed_devices r WHERE removed_at >= $1
               AND EXISTS (SELECT 1 FROM devices d WHERE d.device_id = r.device_id)",
        )
        .bind(since)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(restored)
    }

    pub async fn device(&self, device_id: Uuid) -> Result<Option<Device>, sqlx::Error> {
        let row = sqlx::query(
            "SELECT device_id, platform, token, app_id, locale FROM devices WHERE device_id = $1",
        )
        .bind(device_id)
        .fetch_optional(&self.pool)
        .await?;
        Ok(match &row {
            Some(r) => device_from(r)?,
            None => None,
        })
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
        match &row {
            Some(r) => preferences_from(r),
            None => Ok(Preferences::default()),
        }
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
        let prefs = match rows.first() {
            Some(r) if r.try_get::<Option<bool>, _>("push_enabled")?.is_some() => {
                preferences_from(r)?
            }
            _ => Preferences::default(),
        };
        let mut devices = Vec::with_capacity(rows.len());
        for r in &rows {
            if r.try_get::<Option<Uuid>, _>("device_id")?.is_some()
                && let Some(device) = device_from(r)?
            {
                devices.push(device);
            }
        }
        Ok((devices, prefs))
    }

    pub async fn mark_resolved(&self, ticket_id: Uuid, sequence: u64) -> Result<(), sqlx::Error> {
        sqlx::query(
            "INSERT INTO resolutions (ticket_id, sequence) VALUES ($1, $2)
             ON CONFLICT (ticket_id) DO UPDATE
                 SET sequence = GREATEST(resolutions.sequence, EXCLUDED.sequence),
                     recorded_at = now()",
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

    /// Claims up to `limit` held pushes due at `now` (the dispatcher's clock: quiet hours),
    /// oldest first, with a lease (`TIDINGS_PUSH_HOLD_LEASE_SECS`) on the database's clock that
    /// [`Claim::renew`] extends while the pushes are being sent — however long a provider
    /// makes them retry, no other replica claims them, and no transaction stays open
    /// meanwhile. A replica that dies stops renewing: its holds are claimable again when the
    /// lease ends (the send log keeps a second attempt from pushing twice).
    pub async fn claim_due(&self, now: DateTime<Utc>, limit: i64) -> Result<Claim, sqlx::Error> {
        let token = Uuid::new_v4();
        let rows = sqlx::query(
            "WITH claimed AS (
                 UPDATE held_pushes SET claimed_by = $3, claimed_until = now() + make_interval(secs => $4)
                 WHERE id IN (SELECT id FROM held_pushes
                              WHERE release_at <= $1
                                AND (claimed_until IS NULL OR claimed_until < now())
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
        .bind(token)
        .bind(self.hold_lease.as_secs_f64())
        .fetch_all(&self.pool)
        .await?;
        let held = rows
            .iter()
            .map(|r| {
                let kind: String = r.try_get("kind")?;
                Ok(Held {
                    id: r.try_get("id")?,
                    event_id: r.try_get("event_id")?,
                    device_id: r.try_get("device_id")?,
                    kind: PushKind::parse(&kind).ok_or(kind),
                    event: r.try_get("event")?,
                    traceparent: r.try_get("traceparent")?,
                    resolved_since: r.try_get("resolved_since")?,
                })
            })
            .collect::<Result<_, sqlx::Error>>()?;
        Ok(Claim {
            pool: self.pool.clone(),
            token,
            lease: self.hold_lease,
            held,
        })
    }
}

/// How long a claim lasts unless renewed; a working claimer renews it every third of that.
pub const DEFAULT_LEASE: std::time::Duration = std::time::Duration::from_secs(60);

/// Held pushes claimed by [`Registry::claim_due`], leased until `finish`.
pub struct Claim {
    pool: PgPool,
    token: Uuid,
    lease: std::time::Duration,
    pub held: Vec<Held>,
}

impl Claim {
    pub fn renew_every(&self) -> std::time::Duration {
        self.lease / 3
    }

    /// Extends the lease of the holds still claimed.
    pub async fn renew(&self) -> Result<(), sqlx::Error> {
        sqlx::query(
            "UPDATE held_pushes SET claimed_until = now() + make_interval(secs => $2) WHERE claimed_by = $1",
        )
        .bind(self.token)
        .bind(self.lease.as_secs_f64())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Deletes the holds that are done with (sent, dropped or dead-lettered), moves those
    /// to try again to `retry_at`, and lets go of the rest (due again at once).
    pub async fn finish(
        self,
        done: &[i64],
        retry: &[i64],
        retry_at: DateTime<Utc>,
    ) -> Result<(), sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("DELETE FROM held_pushes WHERE id = ANY($1) AND claimed_by = $2")
            .bind(done)
            .bind(self.token)
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "UPDATE held_pushes SET release_at = CASE WHEN id = ANY($2) THEN $3 ELSE release_at END,
                                    claimed_by = NULL, claimed_until = NULL
             WHERE claimed_by = $1",
        )
        .bind(self.token)
        .bind(retry)
        .bind(retry_at)
        .execute(&mut *tx)
        .await?;
        tx.commit().await
    }
}

/// How many devices may be removed in an hour: `floor`, or `share` of the registered
/// devices if that is more. Token churn is steady and small (uninstalls, new phones); a
/// provider answering "gone" for a large share at once is a misconfiguration.
#[derive(Debug, Clone, Copy)]
pub struct InvalidationGuard {
    pub floor: u64,
    pub share: f64,
}

impl InvalidationGuard {
    pub fn limit(&self, devices: u64) -> u64 {
        self.floor.max((devices as f64 * self.share) as u64)
    }
}

/// What became of an invalidated device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Invalidation {
    Removed,
    /// Kept: `recent` removals in the last hour reached the guard's `limit`.
    Withheld {
        recent: u64,
        limit: u64,
    },
}
