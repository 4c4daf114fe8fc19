//! What the load tools share: development tokens and authenticated requests.

use secrecy::SecretString;
use tidings_auth::{Claims, mint_hs256};

/// An HS256 token for `sub` (an agent when `agent`), valid for an hour, as `make run`'s
/// ticket service accepts it.
pub fn token(secret: &str, sub: &str, agent: bool) -> String {
    let claims = Claims {
        sub: sub.into(),
        email: Some(format!("{sub}@example.com")),
        locale: Some("en".into()),
        name: Some(sub.into()),
        role: agent.then(|| "agent".into()),
        exp: chrono::Utc::now().timestamp() + 3600,
        ..Default::default()
    };
    mint_hs256(&SecretString::from(secret.to_owned()), &claims)
}

/// `msg` with `authorization: Bearer <token>`.
pub fn authed<T>(token: &str, msg: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.metadata_mut().insert(
        "authorization",
        format!("Bearer {token}").parse().expect("ascii"),
    );
    r
}

/// ~300 characters: a typical short support answer.
pub const BODY: &str = "Thanks for your patience. We checked the withdrawal you mentioned and it is waiting for a \
network confirmation on our side. It should complete within the next hour; if it does not, reply here with \
the transaction id and a screenshot of the history page and we will escalate it to the payments team.";
