//! Who is calling. Customers and agents present a JWT from the identity provider; guests a
//! session token from `VerifyAccessCode`. Both become a `Principal`, which every RPC checks.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use tidings_config::Env;
use tidings_domain::{AccountId, Actor, DisplayName, Email, Locale, TicketId};
use tidings_guest_access::{GuestSession, Keyring, TokenError, is_session_token};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    Customer {
        account_id: AccountId,
        email: Email,
        locale: Locale,
        display_name: Option<DisplayName>,
    },
    Agent {
        account_id: AccountId,
        display_name: Option<DisplayName>,
    },
    /// A verified guest: may see and answer exactly one ticket.
    Guest { ticket: TicketId, email: Email },
}

impl Principal {
    pub fn actor(&self) -> Actor {
        match self {
            Principal::Customer {
                account_id,
                display_name,
                ..
            } => Actor::Customer {
                account_id: account_id.clone(),
                display_name: display_name.clone(),
            },
            Principal::Agent {
                account_id,
                display_name,
            } => Actor::Agent {
                account_id: account_id.clone(),
                display_name: display_name.clone(),
            },
            Principal::Guest { email, .. } => Actor::Guest {
                email: email.clone(),
            },
        }
    }
    /// Stable key that scopes idempotency keys to their caller.
    pub fn scope_key(&self) -> String {
        match self {
            Principal::Customer { account_id, .. } => format!("customer:{account_id}"),
            Principal::Agent { account_id, .. } => format!("agent:{account_id}"),
            Principal::Guest { ticket, email } => format!("guest:{ticket}:{email}"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("missing bearer token")]
    Missing,
    #[error("authorization header must be `Bearer <token>`")]
    NotBearer,
    #[error("token has expired")]
    Expired,
    #[error("invalid token: {0}")]
    Invalid(String),
}

/// Claims we read from identity-provider tokens.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct Claims {
    pub sub: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub locale: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub roles: Vec<String>,
    pub exp: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iss: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aud: Option<Audience>,
}

/// A token's `aud`: one audience or several — RFC 7519 §4.1.3 allows both, and identity
/// providers send either.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Audience {
    One(String),
    Many(Vec<String>),
}

impl From<&str> for Audience {
    fn from(aud: &str) -> Self {
        Audience::One(aud.to_owned())
    }
}

/// RFC 7518 §3.2: an HS256 key must be at least as long as the hash, 256 bits.
const HS256_MIN_SECRET_BYTES: usize = 32;

/// How JWTs are checked. HS256 for development and tests; RS256/ES256 with the identity
/// provider's public key in production.
#[derive(Clone)]
pub enum JwtKey {
    Hs256(SecretString),
    Rs256Pem(String),
    Es256Pem(String),
}

impl std::fmt::Debug for JwtKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            JwtKey::Hs256(_) => f.write_str("Hs256(..)"),
            JwtKey::Rs256Pem(_) => f.write_str("Rs256Pem(..)"),
            JwtKey::Es256Pem(_) => f.write_str("Es256Pem(..)"),
        }
    }
}

impl JwtSettings {
    /// `TIDINGS_JWT_ALGORITHM` (HS256 | RS256 | ES256) with `TIDINGS_JWT_HS256_SECRET` or
    /// `TIDINGS_JWT_PUBLIC_KEY_FILE`, `TIDINGS_JWT_ISSUER`, `TIDINGS_JWT_AUDIENCE`,
    /// `TIDINGS_JWT_AGENT_ROLE`; problems are collected in `env`.
    pub fn from_env<F: Fn(&str) -> Option<String>>(env: &mut Env<F>) -> Self {
        let algorithm = env.string("TIDINGS_JWT_ALGORITHM", "HS256");
        let key = match algorithm.as_str() {
            "HS256" => match env.secret("TIDINGS_JWT_HS256_SECRET") {
                Some(s) if s.expose_secret().len() < HS256_MIN_SECRET_BYTES => {
                    env.error(format!(
                        "TIDINGS_JWT_HS256_SECRET is {} bytes: an HS256 secret must have at least {HS256_MIN_SECRET_BYTES} (RFC 7518 §3.2)",
                        s.expose_secret().len()
                    ));
                    None
                }
                Some(s) => Some(JwtKey::Hs256(s)),
                None => {
                    env.error(
                        "TIDINGS_JWT_HS256_SECRET is required when TIDINGS_JWT_ALGORITHM=HS256",
                    );
                    None
                }
            },
            "RS256" | "ES256" => match env
                .raw("TIDINGS_JWT_PUBLIC_KEY_FILE")
                .map(std::fs::read_to_string)
            {
                Some(Ok(pem)) if algorithm == "RS256" => Some(JwtKey::Rs256Pem(pem)),
                Some(Ok(pem)) => Some(JwtKey::Es256Pem(pem)),
                Some(Err(e)) => {
                    env.error(format!("TIDINGS_JWT_PUBLIC_KEY_FILE: {e}"));
                    None
                }
                None => {
                    env.error(format!(
                        "TIDINGS_JWT_PUBLIC_KEY_FILE is required when TIDINGS_JWT_ALGORITHM={algorithm}"
                    ));
                    None
                }
            },
            other => {
                env.error(format!(
                    "TIDINGS_JWT_ALGORITHM={other:?}: expected HS256, RS256 or ES256"
                ));
                None
            }
        };
        JwtSettings {
            key: key.unwrap_or_else(|| JwtKey::Hs256(SecretString::from(String::new()))),
            issuer: env.raw("TIDINGS_JWT_ISSUER"),
            audience: env.raw("TIDINGS_JWT_AUDIENCE"),
            agent_role: env.string("TIDINGS_JWT_AGENT_ROLE", "agent"),
        }
    }
}

#[derive(Debug, Clone)]
pub struct JwtSettings {
    pub key: JwtKey,
    pub issuer: Option<String>,
    pub audience: Option<String>,
    /// Value of `role`/`roles` that marks an agent.
    pub agent_role: String,
}

pub struct Authenticator {
    decoding: DecodingKey,
    validation: Validation,
    agent_role: String,
    /// `None` where guest sessions are not accepted at all (the push dispatcher).
    guest_keys: Option<Arc<Keyring>>,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator")
            .field("algorithms", &self.validation.algorithms)
            .finish()
    }
}

impl Authenticator {
    pub fn new(settings: &JwtSettings, guest_keys: Option<Arc<Keyring>>) -> Result<Self, String> {
        let (decoding, alg) = match &settings.key {
            JwtKey::Hs256(s) => (
                DecodingKey::from_secret(s.expose_secret().as_bytes()),
                Algorithm::HS256,
            ),
            JwtKey::Rs256Pem(p) => (
                DecodingKey::from_rsa_pem(p.as_bytes())
                    .map_err(|e| format!("RS256 public key: {e}"))?,
                Algorithm::RS256,
            ),
            JwtKey::Es256Pem(p) => (
                DecodingKey::from_ec_pem(p.as_bytes())
                    .map_err(|e| format!("ES256 public key: {e}"))?,
                Algorithm::ES256,
            ),
        };
        let mut validation = Validation::new(alg);
        validation.leeway = 30;
        validation.set_required_spec_claims(&["exp", "sub"]);
        if let Some(iss) = &settings.issuer {
            validation.set_issuer(&[iss]);
        }
        match &settings.audience {
            Some(aud) => validation.set_audience(&[aud]),
            None => validation.validate_aud = false,
        }
        Ok(Self {
            decoding,
            validation,
            agent_role: settings.agent_role.clone(),
            guest_keys,
        })
    }

    /// Reads the `authorization` value. `Ok(None)` means no credentials were sent.
    pub fn authenticate(
        &self,
        header: Option<&str>,
        now: DateTime<Utc>,
    ) -> Result<Option<Principal>, AuthError> {
        let Some(raw) = header else { return Ok(None) };
        let token = raw
            .strip_prefix("Bearer ")
            .or_else(|| raw.strip_prefix("bearer "))
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or(AuthError::NotBearer)?;
        if is_session_token(token) {
            let Some(keys) = &self.guest_keys else {
                return Err(AuthError::Invalid(
                    "guest sessions are not accepted here".into(),
                ));
            };
            return match keys.verify_session(token, now) {
                Ok(GuestSession { ticket, email, .. }) => {
                    Ok(Some(Principal::Guest { ticket, email }))
                }
                Err(TokenError::Expired) => Err(AuthError::Expired),
                Err(e) => Err(AuthError::Invalid(e.to_string())),
            };
        }
        let data = jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)
            .map_err(|e| match e.kind() {
                jsonwebtoken::errors::ErrorKind::ExpiredSignature => AuthError::Expired,
                _ => AuthError::Invalid(e.to_string()),
            })?;
        self.principal(data.claims).map(Some)
    }

    fn principal(&self, c: Claims) -> Result<Principal, AuthError> {
        let account_id =
            AccountId::parse(&c.sub).map_err(|e| AuthError::Invalid(format!("sub {e}")))?;
        let display_name = c.name.as_deref().and_then(|n| DisplayName::parse(n).ok());
        let is_agent = c.role.as_deref() == Some(self.agent_role.as_str())
            || c.roles.iter().any(|r| r == &self.agent_role);
        if is_agent {
            return Ok(Principal::Agent {
                account_id,
                display_name,
            });
        }
        let email = c
            .email
            .as_deref()
            .ok_or_else(|| AuthError::Invalid("customer token lacks the email claim".into()))
            .and_then(|e| {
                Email::parse(e).map_err(|e| AuthError::Invalid(format!("email claim {e}")))
            })?;
        let locale = c
            .locale
            .as_deref()
            .and_then(|l| Locale::parse(l).ok())
            .unwrap_or_else(Locale::english);
        Ok(Principal::Customer {
            account_id,
            email,
            locale,
            display_name,
        })
    }
}

/// Mints an HS256 token with the development secret: for the CLI, `make run` and tests.
pub fn mint_hs256(secret: &SecretString, claims: &Claims) -> String {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret.expose_secret().as_bytes()),
    )
    .expect("HS256 encoding cannot fail")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> Arc<Keyring> {
        Arc::new(
            Keyring::parse(&SecretString::from(
                "k1:MDEyMzQ1Njc4OTAxMjM0NTY3ODkwMTIzNDU2Nzg5MDE=".to_owned(),
            ))
            .unwrap(),
        )
    }
    fn secret() -> SecretString {
        SecretString::from("dev-secret-dev-secret-dev-secret".to_owned())
    }
    fn auth(issuer: Option<&str>) -> Authenticator {
        Authenticator::new(
            &JwtSettings {
                key: JwtKey::Hs256(secret()),
                issuer: issuer.map(Into::into),
                audience: None,
                agent_role: "agent".into(),
            },
            Some(keys()),
        )
        .unwrap()
    }
    fn claims(sub: &str) -> Claims {
        Claims {
            sub: sub.into(),
            email: Some("ann@example.com".into()),
            exp: Utc::now().timestamp() + 600,
            ..Default::default()
        }
    }

    #[test]
    fn customer_token_becomes_customer_with_default_locale() {
        let t = mint_hs256(&secret(), &claims("ann"));
        let p = auth(None)
            .authenticate(Some(&format!("Bearer {t}")), Utc::now())
            .unwrap()
            .unwrap();
        assert!(matches!(p, Principal::Customer { ref locale, .. } if locale.as_str() == "en"));
    }

    #[test]
    fn role_claim_makes_an_agent() {
        let t = mint_hs256(
            &secret(),
            &Claims {
                roles: vec!["agent".into()],
                ..claims("a1")
            },
        );
        let p = auth(None)
            .authenticate(Some(&format!("Bearer {t}")), Utc::now())
            .unwrap()
            .unwrap();
        assert!(matches!(p, Principal::Agent { .. }));
    }

    #[test]
    fn bad_tokens_are_refused_with_a_reason() {
        let a = auth(Some("https://idp.example"));
        let expired = mint_hs256(
            &secret(),
            &Claims {
                exp: Utc::now().timestamp() - 3600,
                ..claims("ann")
            },
        );
        let forged = mint_hs256(
            &SecretString::from("another-secret-another-secret!!".to_owned()),
            &claims("ann"),
        );
        let wrong_iss = mint_hs256(
            &secret(),
            &Claims {
                iss: Some("evil".into()),
                ..claims("ann")
            },
        );
        let b = |t: &str| format!("Bearer {t}");
        assert_eq!(
            a.authenticate(Some(&b(&expired)), Utc::now()),
            Err(AuthError::Expired)
        );
        assert!(matches!(
            a.authenticate(Some(&b(&forged)), Utc::now()),
            Err(AuthError::Invalid(_))
        ));
        assert!(matches!(
            a.authenticate(Some(&b(&wrong_iss)), Utc::now()),
            Err(AuthError::Invalid(_))
        ));
        assert!(matches!(
            a.authenticate(Some(&b("garbage")), Utc::now()),
            Err(AuthError::Invalid(_))
        ));
        assert_eq!(
            a.authenticate(Some("Basic abc"), Utc::now()),
            Err(AuthError::NotBearer)
        );
        assert_eq!(a.authenticate(None, Utc::now()), Ok(None));
    }

    fn es256(claims: &Claims, private_pem: &str) -> String {
        let key = EncodingKey::from_ec_pem(private_pem.as_bytes()).unwrap();
        jsonwebtoken::encode(&Header::new(Algorithm::ES256), claims, &key).unwrap()
    }

    #[test]
    fn es256_tokens_verify_with_the_providers_public_key_only() {
        let settings = JwtSettings {
            key: JwtKey::Es256Pem(include_str!("../testdata/es256-public.pem").into()),
            issuer: Some("https://idp.example".into()),
            audience: Some("tidings".into()),
            agent_role: "agent".into(),
        };
        let a = Authenticator::new(&settings, Some(keys())).unwrap();
        let good = Claims {
            iss: Some("https://idp.example".into()),
            aud: Some("tidings".into()),
            ..claims("ann")
        };
        let t = es256(&good, include_str!("../testdata/es256-private.pem"));
        assert!(matches!(
            a.authenticate(Some(&format!("Bearer {t}")), Utc::now()),
            Ok(Some(Principal::Customer { .. }))
        ));
        let other = es256(&good, include_str!("../testdata/es256-other-private.pem"));
        assert!(matches!(
            a.authenticate(Some(&format!("Bearer {other}")), Utc::now()),
            Err(AuthError::Invalid(_))
        ));
        let wrong_aud = es256(
            &Claims {
                aud: Some("someone-else".into()),
                ..good.clone()
            },
            include_str!("../testdata/es256-private.pem"),
        );
        assert!(matches!(
            a.authenticate(Some(&format!("Bearer {wrong_aud}")), Utc::now()),
            Err(AuthError::Invalid(_))
        ));
        // An HS256 token cannot pass where ES256 is configured (no algorithm confusion).
        let hs = mint_hs256(&secret(), &good);
        assert!(matches!(
            a.authenticate(Some(&format!("Bearer {hs}")), Utc::now()),
            Err(AuthError::Invalid(_))
        ));
    }

    #[test]
    fn an_audience_list_that_names_us_is_accepted_and_one_that_does_not_is_refused() {
        let settings = JwtSettings {
            key: JwtKey::Es256Pem(include_str!("../testdata/es256-public.pem").into()),
            issuer: None,
            audience: Some("tidings".into()),
            agent_role: "agent".into(),
        };
        let a = Authenticator::new(&settings, Some(keys())).unwrap();
        let with = |aud: Audience| {
            es256(
                &Claims {
                    aud: Some(aud),
                    ..claims("ann")
                },
                include_str!("../testdata/es256-private.pem"),
            )
        };
        let listed = with(Audience::Many(vec!["portal".into(), "tidings".into()]));
        assert!(matches!(
            a.authenticate(Some(&format!("Bearer {listed}")), Utc::now()),
            Ok(Some(Principal::Customer { .. }))
        ));
        let others = with(Audience::Many(vec!["portal".into(), "billing".into()]));
        assert!(matches!(
            a.authenticate(Some(&format!("Bearer {others}")), Utc::now()),
            Err(AuthError::Invalid(_))
        ));
    }

    #[test]
    fn an_hs256_secret_shorter_than_32_bytes_is_refused_at_configuration() {
        let load = |secret: &'static str| {
            let mut env = Env::with_lookup(move |k| {
                (k == "TIDINGS_JWT_HS256_SECRET").then(|| secret.to_owned())
            });
            let _ = JwtSettings::from_env(&mut env);
            env.finish().map_err(|e| e.to_string())
        };
        let err = load("short-secret").unwrap_err();
        assert!(
            err.contains("TIDINGS_JWT_HS256_SECRET is 12 bytes"),
            "{err}"
        );
        assert!(load("0123456789abcdef0123456789abcdef").is_ok());
    }

    #[test]
    fn guest_session_token_becomes_guest_of_one_ticket() {
        let t = TicketId::new();
        let email = Email::parse("g@example.com").unwrap();
        let token = keys().mint_session(t, &email, Utc::now() + chrono::Duration::hours(1));
        let p = auth(None)
            .authenticate(Some(&format!("Bearer {token}")), Utc::now())
            .unwrap();
        assert_eq!(p, Some(Principal::Guest { ticket: t, email }));
    }

    proptest::proptest! {
        /// No header value, however odd, panics or authenticates.
        #[test]
        fn an_arbitrary_authorization_header_is_refused(raw in "\\PC{0,300}", bearer in proptest::bool::ANY) {
            let header = if bearer { format!("Bearer {raw}") } else { raw };
            proptest::prop_assert!(auth(None).authenticate(Some(&header), Utc::now()).is_err());
        }

        /// A valid token with one character changed is refused.
        #[test]
        fn a_tampered_token_is_refused(at in 0usize..2048, c in "[A-Za-z0-9_.-]") {
            let token = mint_hs256(&secret(), &claims("ann"));
            let i = at % token.len();
            let mut tampered = token.clone();
            tampered.replace_range(i..i + 1, &c);
            proptest::prop_assume!(tampered != token);
            let result = auth(None).authenticate(Some(&format!("Bearer {tampered}")), Utc::now());
            proptest::prop_assert!(result.is_err(), "{tampered} was accepted");
        }
    }
}
