//! gRPC: the signed-in customer's devices and push preferences. Every call authenticates the
//! bearer JWT (same identity rules as the ticket service); bad input is `INVALID_ARGUMENT`
//! naming the field, and nothing is stored.

use std::sync::Arc;

use chrono::NaiveTime;
use tidings_auth::{Authenticator, Principal};
use tidings_domain::Locale;
use tidings_domain::clock::Clock;
use tidings_notify::{DeviceToken, Platform, Preferences, QuietHours, parse_app_id};
use tidings_proto::push::v1 as pb;
use tidings_proto::timestamp;
use tonic::{Request, Response, Status};

use crate::registry::Registry;

#[derive(Clone)]
pub struct PushApi {
    pub registry: Registry,
    pub auth: Arc<Authenticator>,
    pub clock: Arc<dyn Clock>,
}

fn invalid(field: &str, reason: impl std::fmt::Display) -> Status {
    Status::invalid_argument(format!("{field}: {reason}"))
}

fn internal(e: sqlx::Error) -> Status {
    tracing::error!(error = %e, "device registry");
    Status::unavailable("the device registry is unavailable; retry")
}

impl PushApi {
    /// The calling customer's account id; agents have no devices here, guests no push.
    fn customer<T>(&self, req: &Request<T>) -> Result<String, Status> {
        let header = req
            .metadata()
            .get("authorization")
            .map(|v| {
                v.to_str()
                    .map_err(|_| Status::unauthenticated("authorization header is not ASCII"))
            })
            .transpose()?;
        match self.auth.authenticate(header, self.clock.now()) {
            Ok(Some(Principal::Customer { account_id, .. })) => Ok(account_id.to_string()),
            Ok(Some(_)) => Err(Status::permission_denied(
                "push devices and preferences belong to signed-in customers",
            )),
            Ok(None) => Err(Status::unauthenticated("missing bearer token")),
            Err(e) => Err(Status::unauthenticated(e.to_string())),
        }
    }
}

fn platform_from_wire(raw: i32) -> Result<Platform, Status> {
    match pb::Platform::try_from(raw) {
        Ok(pb::Platform::Ios) => Ok(Platform::Ios),
        Ok(pb::Platform::Android) => Ok(Platform::Android),
        _ => Err(invalid(
            "platform",
            "must be PLATFORM_IOS or PLATFORM_ANDROID",
        )),
    }
}

fn device_to_wire(d: &tidings_notify::Device, at: chrono::DateTime<chrono::Utc>) -> pb::Device {
    pb::Device {
        device_id: d.id.to_string(),
        platform: match d.platform {
            Platform::Ios => pb::Platform::Ios,
            Platform::Android => pb::Platform::Android,
        } as i32,
        token: d.token.as_str().to_owned(),
        app_id: d.app_id.clone(),
        locale: d.locale.to_string(),
        registered_at: Some(timestamp(at)),
    }
}

fn time_from_wire(field: &str, raw: &str) -> Result<NaiveTime, Status> {
    NaiveTime::parse_from_str(raw.trim(), "%H:%M")
        .map_err(|_| invalid(field, "must be HH:MM (24-hour)"))
}

fn preferences_from_wire(p: Option<pb::Preferences>) -> Result<Preferences, Status> {
    let p = p.ok_or_else(|| invalid("preferences", "is required"))?;
    let quiet_hours = match p.quiet_hours {
        None => None,
        Some(q) => {
            let start = time_from_wire("preferences.quiet_hours.start", &q.start)?;
            let end = time_from_wire("preferences.quiet_hours.end", &q.end)?;
            if start == end {
                return Err(invalid(
                    "preferences.quiet_hours.end",
                    "must differ from start",
                ));
            }
            let time_zone = q.time_zone.trim().parse::<chrono_tz::Tz>().map_err(|_| {
                invalid(
                    "preferences.quiet_hours.time_zone",
                    "must be an IANA time zone such as Europe/Rome",
                )
            })?;
            Some(QuietHours {
                start,
                end,
                time_zone,
            })
        }
    };
    Ok(Preferences {
        enabled: p.push_enabled,
        agent_replies: p.agent_replies,
        info_requests: p.info_requests,
        resolutions: p.resolutions,
        quiet_hours,
    })
}

fn preferences_to_wire(p: &Preferences) -> pb::Preferences {
    pb::Preferences {
        push_enabled: p.enabled,
        agent_replies: p.agent_replies,
        info_requests: p.info_requests,
        resolutions: p.resolutions,
        quiet_hours: p.quiet_hours.as_ref().map(|q| pb::QuietHours {
            start: q.start.format("%H:%M").to_string(),
            end: q.end.format("%H:%M").to_string(),
            time_zone: q.time_zone.name().to_owned(),
        }),
    }
}

#[tonic::async_trait]
impl pb::device_service_server::DeviceService for PushApi {
    async fn register_device(
        &self,
        req: Request<pb::RegisterDeviceRequest>,
    ) -> Result<Response<pb::RegisterDeviceResponse>, Status> {
        let account = self.customer(&req)?;
        let r = req.into_inner();
        let platform = platform_from_wire(r.platform)?;
        let token = DeviceToken::parse(platform, &r.token).map_err(|e| invalid("token", e))?;
        let app_id = parse_app_id(&r.app_id).map_err(|e| invalid("app_id", e))?;
        let locale = Locale::parse(&r.locale).map_err(|e| invalid("locale", e))?;
        let (device, at) = self
            .registry
            .register(&account, platform, &token, &app_id, &locale)
            .await
            .map_err(internal)?;
        tracing::info!(device_id = %device.id, platform = platform.name(), "device registered");
        Ok(Response::new(pb::RegisterDeviceResponse {
            device: Some(device_to_wire(&device, at)),
        }))
    }

    async fn unregister_device(
        &self,
        req: Request<pb::UnregisterDeviceRequest>,
    ) -> Result<Response<pb::UnregisterDeviceResponse>, Status> {
        let account = self.customer(&req)?;
        let r = req.into_inner();
        let (id, token) = match (r.device_id.trim(), r.token.trim()) {
            ("", "") => return Err(invalid("device_id", "give the device id or its token")),
            ("", token) => (None, Some(token.to_owned())),
            (id, _) => (
                Some(
                    uuid::Uuid::parse_str(id)
                        .map_err(|_| invalid("device_id", "must be a UUID"))?,
                ),
                None,
            ),
        };
        // A device of another account is as unknown as one that never existed.
        if !self
            .registry
            .unregister(&account, id, token.as_deref())
            .await
            .map_err(internal)?
        {
            return Err(Status::not_found("no such device"));
        }
        Ok(Response::new(pb::UnregisterDeviceResponse {}))
    }

    async fn list_devices(
        &self,
        req: Request<pb::ListDevicesRequest>,
    ) -> Result<Response<pb::ListDevicesResponse>, Status> {
        let account = self.customer(&req)?;
        let devices = self.registry.list(&account).await.map_err(internal)?;
        Ok(Response::new(pb::ListDevicesResponse {
            devices: devices
                .iter()
                .map(|(d, at)| device_to_wire(d, *at))
                .collect(),
        }))
    }
}

#[tonic::async_trait]
impl pb::preference_service_server::PreferenceService for PushApi {
    async fn get_preferences(
        &self,
        req: Request<pb::GetPreferencesRequest>,
    ) -> Result<Response<pb::Preferences>, Status> {
        let account = self.customer(&req)?;
        let p = self
            .registry
            .preferences(&account)
            .await
            .map_err(internal)?;
        Ok(Response::new(preferences_to_wire(&p)))
    }

    async fn update_preferences(
        &self,
        req: Request<pb::UpdatePreferencesRequest>,
    ) -> Result<Response<pb::Preferences>, Status> {
        let account = self.customer(&req)?;
        let p = preferences_from_wire(req.into_inner().preferences)?;
        self.registry
            .set_preferences(&account, &p)
            .await
            .map_err(internal)?;
        Ok(Response::new(preferences_to_wire(&p)))
    }
}
