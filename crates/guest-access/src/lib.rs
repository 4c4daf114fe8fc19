//! Everything a guest holds instead of an account, minted and checked in one place so the
//! email dispatcher (which mints links and opens sealed codes) and the ticket service (which
//! verifies both) agree byte for byte.
//!
//! - **Link token** `gl1.<kid>.<payload>.<mac>`: payload = ticket id + issued-at; the MAC also
//!   covers the guest's email, which is *not* in the token. A link therefore only verifies
//!   against the address the ticket was filed with, and it does not leak that address.
//! - **Session token** `gs1.<kid>.<payload>.<mac>`: ticket id + expiry + email, short-lived.
//! - **Access code**: 6 digits; stored as an HMAC (never plain), travels sealed with
//!   ChaCha20-Poly1305 under a key shared with the email dispatcher.
//!
//! Key rotation: `Keyring` holds several HMAC keys by id. The first signs; all verify. Add the
//! new key in front, keep the old one until the longest-lived token it signed (links, 30 days)
//! has expired, then drop it.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use chacha20poly1305::aead::{Aead, KeyInit, OsRng, Payload};
use chacha20poly1305::{AeadCore, ChaCha20Poly1305, Key};
use chrono::{DateTime, Duration, Utc};
use hmac::{Hmac, Mac};
use rand::Rng;
use secrecy::{ExposeSecret, SecretBox, SecretString};
use sha2::Sha256;
use subtle::ConstantTimeEq;
use tidings_domain::{Email, TicketId};
use uuid::Uuid;

type HmacSha256 = Hmac<Sha256>;

const LINK_PREFIX: &str = "gl1";
const SESSION_PREFIX: &str = "gs1";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("token is malformed")]
    Malformed,
    #[error("token was signed with an unknown key")]
    UnknownKey,
    #[error("token signature does not match")]
    BadSignature,
    #[error("token has expired")]
    Expired,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("expected a comma-separated list of <key-id>:<base64 secret>")]
    Format,
    #[error("key id {0:?} must be 1-16 alphanumeric characters")]
    KeyId(String),
    #[error("key {0:?} must decode (base64) to at least 32 bytes")]
    TooShort(String),
    #[error("the code sealing key must be exactly 32 bytes of base64")]
    SealKey,
}

struct HmacKey {
    id: String,
    secret: SecretBox<Vec<u8>>,
}

/// HMAC keys by id; the first one signs.
pub struct Keyring {
    keys: Vec<HmacKey>,
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ids: Vec<_> = self.keys.iter().map(|k| k.id.as_str()).collect();
        f.debug_struct("Keyring").field("key_ids", &ids).finish()
    }
}

fn decode_b64(raw: &str) -> Option<Vec<u8>> {
    let raw = raw.trim();
    base64::engine::general_purpose::STANDARD
        .decode(raw)
        .or_else(|_| B64.decode(raw.trim_end_matches('=')))
        .ok()
}

impl Keyring {
    /// Parses `kid:base64secret[,kid:base64secret...]`.
    pub fn parse(spec: &SecretString) -> Result<Self, KeyError> {
        let mut keys = Vec::new();
        for part in spec
            .expose_secret()
            .split(',')
            .filter(|p| !p.trim().is_empty())
        {
            let (id, secret) = part.trim().split_once(':').ok_or(KeyError::Format)?;
            if id.is_empty() || id.len() > 16 || !id.chars().all(|c| c.is_ascii_alphanumeric()) {
                return Err(KeyError::KeyId(id.to_owned()));
            }
            let bytes = decode_b64(secret).ok_or_else(|| KeyError::TooShort(id.to_owned()))?;
            if bytes.len() < 32 {
                return Err(KeyError::TooShort(id.to_owned()));
            }
            keys.push(HmacKey {
                id: id.to_owned(),
                secret: SecretBox::new(Box::new(bytes)),
            });
        }
        if keys.is_empty() {
            return Err(KeyError::Format);
        }
        Ok(Self { keys })
    }

    fn signing(&self) -> &HmacKey {
        &self.keys[0]
    }

    fn key(&self, id: &str) -> Option<&HmacKey> {
        self.keys.iter().find(|k| k.id == id)
    }

    fn mac(key: &HmacKey, domain: &str, parts: &[&[u8]]) -> Vec<u8> {
        let mut mac =
            <HmacSha256 as Mac>::new_from_slice(key.secret.expose_secret()).expect("any key size");
        mac.update(domain.as_bytes());
        for p in parts {
            // Length-prefix each part so that boundaries cannot be shifted.
            mac.update(&(p.len() as u32).to_be_bytes());
            mac.update(p);
        }
        mac.finalize().into_bytes().to_vec()
    }

    // ---- links ----

    pub fn mint_link(&self, ticket: TicketId, email: &Email, issued_at: DateTime<Utc>) -> String {
        let mut payload = Vec::with_capacity(24);
        payload.extend_from_slice(ticket.as_uuid().as_bytes());
        payload.extend_from_slice(&issued_at.timestamp().to_be_bytes());
        let key = self.signing();
        let mac = Self::mac(
            key,
            "tidings/guest-link/v1",
            &[&payload, email.as_str().as_bytes()],
        );
        format!(
            "{LINK_PREFIX}.{}.{}.{}",
            key.id,
            B64.encode(&payload),
            B64.encode(mac)
        )
    }

    /// Checks a link against the email the ticket was filed with.
    pub fn verify_link(
        &self,
        link: &UnverifiedLink,
        email: &Email,
        now: DateTime<Utc>,
        ttl: Duration,
    ) -> Result<(), TokenError> {
        let key = self.key(&link.kid).ok_or(TokenError::UnknownKey)?;
        let expected = Self::mac(
            key,
            "tidings/guest-link/v1",
            &[&link.payload, email.as_str().as_bytes()],
        );
        if !bool::from(expected.ct_eq(&link.mac)) {
            return Err(TokenError::BadSignature);
        }
        if now >= link.issued_at + ttl {
            return Err(TokenError::Expired);
        }
        Ok(())
    }

    // ---- sessions ----

    pub fn mint_session(
        &self,
        ticket: TicketId,
        email: &Email,
        expires_at: DateTime<Utc>,
    ) -> String {
        let mut payload = Vec::with_capacity(24 + email.as_str().len());
        payload.extend_from_slice(ticket.as_uuid().as_bytes());
        payload.extend_from_slice(&expires_at.timestamp().to_be_bytes());
        payload.extend_from_slice(email.as_str().as_bytes());
        let key = self.signing();
        let mac = Self::mac(key, "tidings/guest-session/v1", &[&payload]);
        format!(
            "{SESSION_PREFIX}.{}.{}.{}",
            key.id,
            B64.encode(&payload),
            B64.encode(mac)
        )
    }

    pub fn verify_session(
        &self,
        token: &str,
        now: DateTime<Utc>,
    ) -> Result<GuestSession, TokenError> {
        let (kid, payload, mac) = split_token(token, SESSION_PREFIX)?;
        let key = self.key(&kid).ok_or(TokenError::UnknownKey)?;
        let expected = Self::mac(key, "tidings/guest-session/v1", &[&payload]);
        if !bool::from(expected.ct_eq(&mac)) {
            return Err(TokenError::BadSignature);
        }
        if payload.len() < 25 {
            return Err(TokenError::Malformed);
        }
        let ticket = TicketId::from_uuid(
            Uuid::from_slice(&payload[..16]).map_err(|_| TokenError::Malformed)?,
        );
        let expires = i64::from_be_bytes(
            payload[16..24]
                .try_into()
                .map_err(|_| TokenError::Malformed)?,
        );
        let expires_at = DateTime::from_timestamp(expires, 0).ok_or(TokenError::Malformed)?;
        let email = std::str::from_utf8(&payload[24..])
            .ok()
            .and_then(|e| Email::parse(e).ok())
            .ok_or(TokenError::Malformed)?;
        if now >= expires_at {
            return Err(TokenError::Expired);
        }
        Ok(GuestSession {
            ticket,
            email,
            expires_at,
        })
    }

    // ---- codes ----

    /// Keyed hash of a code, bound to its ticket: a leaked events table does not let anyone
    /// enumerate the million possible codes without the key.
    pub fn hash_code(&self, ticket: TicketId, code: &str) -> String {
        hex::encode(Self::mac(
            self.signing(),
            "tidings/access-code/v1",
            &[ticket.as_uuid().as_bytes(), code.trim().as_bytes()],
        ))
    }
}

fn split_token(token: &str, prefix: &str) -> Result<(String, Vec<u8>, Vec<u8>), TokenError> {
    let mut it = token.trim().split('.');
    let (Some(p), Some(kid), Some(payload), Some(mac), None) =
        (it.next(), it.next(), it.next(), it.next(), it.next())
    else {
        return Err(TokenError::Malformed);
    };
    if p != prefix {
        return Err(TokenError::Malformed);
    }
    let payload = B64.decode(payload).map_err(|_| TokenError::Malformed)?;
    let mac = B64.decode(mac).map_err(|_| TokenError::Malformed)?;
    Ok((kid.to_owned(), payload, mac))
}

/// A link token parsed but not yet checked: the ticket id is needed to find the email to
/// check it against.
#[derive(Debug, Clone)]
pub struct UnverifiedLink {
    kid: String,
    payload: Vec<u8>,
    mac: Vec<u8>,
    pub ticket: TicketId,
    pub issued_at: DateTime<Utc>,
}

impl UnverifiedLink {
    pub fn parse(token: &str) -> Result<Self, TokenError> {
        let (kid, payload, mac) = split_token(token, LINK_PREFIX)?;
        if payload.len() != 24 {
            return Err(TokenError::Malformed);
        }
        let ticket = TicketId::from_uuid(
            Uuid::from_slice(&payload[..16]).map_err(|_| TokenError::Malformed)?,
        );
        let issued = i64::from_be_bytes(
            payload[16..24]
                .try_into()
                .map_err(|_| TokenError::Malformed)?,
        );
        let issued_at = DateTime::from_timestamp(issued, 0).ok_or(TokenError::Malformed)?;
        Ok(Self {
            kid,
            payload,
            mac,
            ticket,
            issued_at,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestSession {
    pub ticket: TicketId,
    pub email: Email,
    pub expires_at: DateTime<Utc>,
}

pub fn is_session_token(token: &str) -> bool {
    token.starts_with("gs1.")
}

/// A fresh uniformly random 6-digit code.
pub fn generate_code() -> String {
    format!("{:06}", rand::thread_rng().gen_range(0..1_000_000u32))
}

/// The address a link is bound to, as a page may show it to whoever holds the link:
/// the first character of the local part, then `•••`, then the domain (`g•••@example.com`).
/// Enough for the guest to recognise their address, not enough to learn someone else's.
pub fn mask_email(email: &Email) -> String {
    let (local, domain) = email
        .as_str()
        .rsplit_once('@')
        .unwrap_or((email.as_str(), ""));
    let first: String = local.chars().take(1).collect();
    format!("{first}\u{2022}\u{2022}\u{2022}@{domain}")
}

/// Seals access codes for the email dispatcher. Same keys on both sides: a comma-separated
/// list of base64 keys, the first seals and every one opens, so a new key can be rolled out
/// to the dispatcher (second in its list) before the ticket service seals with it.
pub struct CodeSealer {
    ciphers: Vec<ChaCha20Poly1305>,
}

impl std::fmt::Debug for CodeSealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CodeSealer(..)")
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("sealed code cannot be opened")]
pub struct OpenError;

impl CodeSealer {
    pub fn parse(keys_b64: &SecretString) -> Result<Self, KeyError> {
        let ciphers = keys_b64
            .expose_secret()
            .split(',')
            .map(|k| {
                let bytes = decode_b64(k.trim()).ok_or(KeyError::SealKey)?;
                if bytes.len() != 32 {
                    return Err(KeyError::SealKey);
                }
                Ok(ChaCha20Poly1305::new(Key::from_slice(&bytes)))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self { ciphers })
    }

    pub fn seal(&self, ticket: TicketId, code: &str) -> String {
        let nonce = ChaCha20Poly1305::generate_nonce(&mut OsRng);
        let ct = self.ciphers[0]
            .encrypt(
                &nonce,
                Payload {
                    msg: code.as_bytes(),
                    aad: ticket.as_uuid().as_bytes(),
                },
            )
            .expect("chacha20poly1305 encryption does not fail for short messages");
        let mut out = nonce.to_vec();
        out.extend_from_slice(&ct);
        B64.encode(out)
    }

    pub fn open(&self, ticket: TicketId, sealed: &str) -> Result<String, OpenError> {
        let raw = B64.decode(sealed).map_err(|_| OpenError)?;
        if raw.len() < 12 {
            return Err(OpenError);
        }
        let (nonce, ct) = raw.split_at(12);
        let pt = self
            .ciphers
            .iter()
            .find_map(|c| {
                c.decrypt(
                    nonce.into(),
                    Payload {
                        msg: ct,
                        aad: ticket.as_uuid().as_bytes(),
                    },
                )
                .ok()
            })
            .ok_or(OpenError)?;
        String::from_utf8(pt).map_err(|_| OpenError)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_masked_address_keeps_the_first_character_and_the_domain() {
        // Given guest addresses, when masked, then only the first character and domain show.
        let mask = |raw: &str| super::mask_email(&tidings_domain::Email::parse(raw).unwrap());
        assert_eq!(mask("giulia.rossi@example.com"), "g•••@example.com");
        assert_eq!(mask("a@b.example"), "a•••@b.example");
    }

    use super::*;

    fn ring(spec: &str) -> Keyring {
        Keyring::parse(&SecretString::from(spec.to_owned())).unwrap()
    }
    const K1: &str = "k1:MDEyMzQ1Njc4OTAxMjM0NTY3ODkwMTIzNDU2Nzg5MDE=";
    const K2: &str = "k2:YWJjZGVmZ2hpamtsbW5vcHFyc3R1dnd4eXphYmNkZWY=";

    fn email(s: &str) -> Email {
        Email::parse(s).unwrap()
    }

    #[test]
    fn link_verifies_only_for_its_ticket_email_and_lifetime() {
        let r = ring(K1);
        let t = TicketId::new();
        let now = Utc::now();
        let token = r.mint_link(t, &email("g@example.com"), now);
        let link = UnverifiedLink::parse(&token).unwrap();
        assert_eq!(link.ticket, t);
        let ttl = Duration::days(30);
        assert_eq!(
            r.verify_link(&link, &email("g@example.com"), now, ttl),
            Ok(())
        );
        assert_eq!(
            r.verify_link(&link, &email("h@example.com"), now, ttl),
            Err(TokenError::BadSignature)
        );
        assert_eq!(
            r.verify_link(
                &link,
                &email("g@example.com"),
                now + Duration::days(31),
                ttl
            ),
            Err(TokenError::Expired)
        );
        assert!(
            !token.contains("example"),
            "the address must not be readable from the link"
        );
    }

    #[test]
    fn tampered_link_fails() {
        let r = ring(K1);
        let token = r.mint_link(TicketId::new(), &email("g@example.com"), Utc::now());
        let other = r.mint_link(TicketId::new(), &email("g@example.com"), Utc::now());
        // Graft the payload of one link onto the MAC of another.
        let a: Vec<_> = token.split('.').collect();
        let b: Vec<_> = other.split('.').collect();
        let forged = format!("{}.{}.{}.{}", a[0], a[1], b[2], a[3]);
        let link = UnverifiedLink::parse(&forged).unwrap();
        assert_eq!(
            r.verify_link(
                &link,
                &email("g@example.com"),
                Utc::now(),
                Duration::days(30)
            ),
            Err(TokenError::BadSignature)
        );
        assert!(UnverifiedLink::parse("gl1.k1.zz").is_err());
    }

    #[test]
    fn rotated_keys_still_verify_old_tokens_and_sign_with_the_new_one() {
        let old = ring(K1);
        let token = old.mint_session(
            TicketId::new(),
            &email("g@example.com"),
            Utc::now() + Duration::hours(1),
        );
        let rotated = ring(&format!("{K2},{K1}"));
        assert!(rotated.verify_session(&token, Utc::now()).is_ok());
        let fresh = rotated.mint_session(
            TicketId::new(),
            &email("g@example.com"),
            Utc::now() + Duration::hours(1),
        );
        assert!(fresh.starts_with("gs1.k2."));
        assert_eq!(
            old.verify_session(&fresh, Utc::now()),
            Err(TokenError::UnknownKey)
        );
    }

    #[test]
    fn session_token_carries_ticket_and_email_and_expires() {
        let r = ring(K1);
        let t = TicketId::new();
        let exp = Utc::now() + Duration::hours(24);
        let token = r.mint_session(t, &email("g@example.com"), exp);
        let s = r.verify_session(&token, Utc::now()).unwrap();
        assert_eq!((s.ticket, s.email.as_str()), (t, "g@example.com"));
        assert_eq!(r.verify_session(&token, exp), Err(TokenError::Expired));
    }

    #[test]
    fn sealed_code_opens_only_with_the_key_and_ticket() {
        let key = SecretString::from("MDEyMzQ1Njc4OTAxMjM0NTY3ODkwMTIzNDU2Nzg5MDE=".to_owned());
        let s = CodeSealer::parse(&key).unwrap();
        let t = TicketId::new();
        let sealed = s.seal(t, "123456");
        assert!(!sealed.contains("123456"));
        assert_eq!(s.open(t, &sealed).unwrap(), "123456");
        assert_eq!(s.open(TicketId::new(), &sealed), Err(OpenError));
    }

    #[test]
    fn a_sealer_with_the_next_key_first_still_opens_codes_sealed_with_the_old_one() {
        let old = "MDEyMzQ1Njc4OTAxMjM0NTY3ODkwMTIzNDU2Nzg5MDE=";
        let new = "YWJjZGVmZ2hpamtsbW5vcHFyc3R1dnd4eXphYmNkZWY=";
        let before = CodeSealer::parse(&SecretString::from(old.to_owned())).unwrap();
        let during = CodeSealer::parse(&SecretString::from(format!("{new},{old}"))).unwrap();
        let t = TicketId::new();
        assert_eq!(during.open(t, &before.seal(t, "424242")).unwrap(), "424242");
        assert_eq!(before.open(t, &during.seal(t, "424242")), Err(OpenError));
        assert!(CodeSealer::parse(&SecretString::from(format!("{new},short"))).is_err());
    }

    #[test]
    fn codes_are_six_digits_and_hashes_are_keyed_per_ticket() {
        let c = generate_code();
        assert!(c.len() == 6 && c.chars().all(|d| d.is_ascii_digit()));
        let r = ring(K1);
        let (t1, t2) = (TicketId::new(), TicketId::new());
        assert_eq!(r.hash_code(t1, "123456"), r.hash_code(t1, " 123456 "));
        assert_ne!(r.hash_code(t1, "123456"), r.hash_code(t2, "123456"));
        assert_ne!(r.hash_code(t1, "123456"), ring(K2).hash_code(t1, "123456"));
    }

    #[test]
    fn bad_key_specs_are_refused() {
        let p = |s: &str| Keyring::parse(&SecretString::from(s.to_owned())).err();
        assert_eq!(p(""), Some(KeyError::Format));
        assert_eq!(p("k1:c2hvcnQ="), Some(KeyError::TooShort("k1".into())));
        assert!(matches!(
            p("bad id:MDEyMzQ1Njc4OTAxMjM0NTY3ODkwMTIzNDU2Nzg5MDE="),
            Some(KeyError::KeyId(_))
        ));
    }

    proptest::proptest! {
        /// Arbitrary strings never panic the parsers and never verify.
        #[test]
        fn arbitrary_tokens_are_refused(raw in "\\PC{0,300}") {
            let r = ring(K1);
            proptest::prop_assert!(r.verify_session(&raw, Utc::now()).is_err());
            if let Ok(link) = UnverifiedLink::parse(&raw) {
                let verified = r.verify_link(&link, &email("g@example.com"), Utc::now(), Duration::days(30));
                proptest::prop_assert!(verified.is_err());
            }
        }

        /// A minted session or link with one character changed is refused.
        #[test]
        fn a_tampered_session_or_link_is_refused(at in 0usize..512, c in "[A-Za-z0-9_.-]") {
            let r = ring(K1);
            let g = email("g@example.com");
            let t = TicketId::new();
            let now = Utc::now();
            let session = r.mint_session(t, &g, now + Duration::hours(1));
            let i = at % session.len();
            let mut tampered = session.clone();
            tampered.replace_range(i..i + 1, &c);
            if tampered != session {
                proptest::prop_assert!(r.verify_session(&tampered, now).is_err(), "{tampered}");
            }
            let link = r.mint_link(t, &g, now);
            let i = at % link.len();
            let mut tampered = link.clone();
            tampered.replace_range(i..i + 1, &c);
            if tampered != link
                && let Ok(parsed) = UnverifiedLink::parse(&tampered)
            {
                proptest::prop_assert!(r.verify_link(&parsed, &g, now, Duration::days(30)).is_err(), "{tampered}");
            }
        }
    }
}
