//! Who a connection is and what it may do: JWT verification, claims to
//! capabilities, room patterns (spec/04-auth.md).
//!
//! This module owns the translation from a token to [`Credentials`]; it never
//! logs a token, and its errors say what was wrong without echoing secrets.
//! Expiry is checked against a caller-supplied Unix time, so tests control
//! the clock.

use bytes::Bytes;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::config::{AuthConfig, ConfigError};

/// What a verified token grants.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Credentials {
    /// User id (`sub`); empty for anonymous connections.
    pub user: String,
    /// Unix seconds at which the token expires (`exp`); `None`: never.
    pub expires_at: Option<u64>,
    /// The `info` claim as JSON text, shown to others in presence.
    pub info: Bytes,
    /// Rooms the user may subscribe to (`subscribe` claim).
    pub subscribe: Vec<RoomPattern>,
    /// Rooms the user may publish into (`publish` claim).
    pub publish: Vec<RoomPattern>,
}

impl Credentials {
    /// Credentials of an anonymous connection: no user, no grants.
    pub fn anonymous() -> Self {
        Self::default()
    }

    /// Whether a `subscribe` claim pattern matches the room.
    pub fn may_subscribe(&self, room: &str) -> bool {
        self.subscribe.iter().any(|p| p.matches(room))
    }

    /// Whether a `publish` claim pattern matches the room.
    pub fn may_publish(&self, room: &str) -> bool {
        self.publish.iter().any(|p| p.matches(room))
    }
}

/// A room pattern from a claim: `*` matches any run of characters, every
/// other character matches itself (`chat:*`, `doc:42`, `*`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RoomPattern(String);

impl RoomPattern {
    /// A pattern from its text.
    pub fn new(pattern: impl Into<String>) -> Self {
        Self(pattern.into())
    }

    /// Whether `room` matches. Linear in practice; worst case
    /// O(pattern × room), both bounded by the room name limit.
    pub fn matches(&self, room: &str) -> bool {
        glob(self.0.as_bytes(), room.as_bytes())
    }
}

fn glob(pattern: &[u8], text: &[u8]) -> bool {
    // Classic two-pointer wildcard match with backtracking to the last `*`.
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        if p < pattern.len() && pattern[p] == b'*' {
            star = Some((p, t));
            p += 1;
        } else if p < pattern.len() && pattern[p] == text[t] {
            p += 1;
            t += 1;
        } else if let Some((sp, st)) = star {
            p = sp + 1;
            t = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|&b| b == b'*')
}

/// Why a token was refused. The message is safe to send to the client.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum AuthError {
    /// The token's `exp` has passed (close 3002: refresh and reconnect).
    #[error("token expired")]
    Expired,
    /// The token cannot be accepted (close 3500).
    #[error("invalid token: {0}")]
    Invalid(String),
}

/// The claims Switchboard reads; others are ignored.
#[derive(Deserialize)]
struct Claims<'a> {
    #[serde(default)]
    sub: String,
    #[serde(default)]
    exp: Option<u64>,
    #[serde(default, borrow)]
    info: Option<&'a RawValue>,
    #[serde(default)]
    subscribe: Vec<String>,
    #[serde(default)]
    publish: Vec<String>,
}

/// Checks tokens against the configured keys.
pub struct Verifier {
    hmac: Option<(DecodingKey, Validation)>,
    public: Option<(DecodingKey, Validation)>,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field("hmac", &self.hmac.is_some())
            .field("public_key", &self.public.is_some())
            .finish()
    }
}

fn validation(algorithms: &[Algorithm], config: &AuthConfig) -> Validation {
    let mut v = Validation::new(algorithms[0]);
    v.algorithms = algorithms.to_vec();
    // Expiry is checked in `verify` against the caller's clock.
    v.validate_exp = false;
    v.required_spec_claims.clear();
    v.leeway = 0;
    v.validate_nbf = true;
    match &config.audience {
        Some(aud) => v.set_audience(&[aud]),
        None => v.validate_aud = false,
    }
    if let Some(iss) = &config.issuer {
        v.set_issuer(&[iss]);
    }
    v
}

impl Verifier {
    /// A verifier for the configured keys.
    pub fn new(config: &AuthConfig) -> Result<Self, ConfigError> {
        let hmac = config.effective_hmac_secret().map(|secret| {
            let algs = [Algorithm::HS256, Algorithm::HS384, Algorithm::HS512];
            (
                DecodingKey::from_secret(secret.as_bytes()),
                validation(&algs, config),
            )
        });
        let public = match &config.public_key_file {
            None => None,
            Some(path) => {
                let pem = std::fs::read(path).map_err(|e| {
                    ConfigError(format!(
                        "cannot read auth.public_key_file {}: {e}",
                        path.display()
                    ))
                })?;
                Some(public_key(&pem, config)?)
            }
        };
        Ok(Self { hmac, public })
    }

    /// Verifies a token at `now` (Unix seconds).
    pub fn verify(&self, token: &str, now: u64) -> Result<Credentials, AuthError> {
        let header = jsonwebtoken::decode_header(token)
            .map_err(|e| AuthError::Invalid(format!("malformed token: {e}")))?;
        let is_hmac = matches!(
            header.alg,
            Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512
        );
        let (key, validation) = if is_hmac { &self.hmac } else { &self.public }
            .as_ref()
            .ok_or_else(|| {
                AuthError::Invalid(format!("algorithm {:?} is not accepted", header.alg))
            })?;
        let data = jsonwebtoken::decode::<Box<RawValue>>(token, key, validation)
            .map_err(|e| AuthError::Invalid(describe(&e)))?;
        let claims: Claims<'_> = serde_json::from_str(data.claims.get())
            .map_err(|e| AuthError::Invalid(format!("bad claims: {e}")))?;
        if claims.sub.is_empty() {
            return Err(AuthError::Invalid(
                "the sub claim (user id) is missing or empty".into(),
            ));
        }
        if let Some(exp) = claims.exp {
            if exp <= now {
                return Err(AuthError::Expired);
            }
        }
        let info = match claims.info {
            Some(raw) if raw.get() != "null" => Bytes::copy_from_slice(raw.get().as_bytes()),
            _ => Bytes::new(),
        };
        Ok(Credentials {
            user: claims.sub,
            expires_at: claims.exp,
            info,
            subscribe: claims.subscribe.into_iter().map(RoomPattern).collect(),
            publish: claims.publish.into_iter().map(RoomPattern).collect(),
        })
    }
}

fn public_key(pem: &[u8], config: &AuthConfig) -> Result<(DecodingKey, Validation), ConfigError> {
    use Algorithm::*;
    if let Ok(key) = DecodingKey::from_rsa_pem(pem) {
        return Ok((
            key,
            validation(&[RS256, RS384, RS512, PS256, PS384, PS512], config),
        ));
    }
    if let Ok(key) = DecodingKey::from_ec_pem(pem) {
        return Ok((key, validation(&[ES256, ES384], config)));
    }
    if let Ok(key) = DecodingKey::from_ed_pem(pem) {
        return Ok((key, validation(&[EdDSA], config)));
    }
    Err(ConfigError(
        "auth.public_key_file holds no RSA, EC or Ed25519 public key in PEM".into(),
    ))
}

/// A client-safe description of a verification failure.
fn describe(err: &jsonwebtoken::errors::Error) -> String {
    use jsonwebtoken::errors::ErrorKind::*;
    match err.kind() {
        InvalidSignature => "signature does not match".into(),
        InvalidAlgorithm => "algorithm does not match the key".into(),
        InvalidAudience => "wrong audience (aud)".into(),
        InvalidIssuer => "wrong issuer (iss)".into(),
        ImmatureSignature => "token not yet valid (nbf)".into(),
        InvalidToken | Base64(_) | Json(_) | Utf8(_) => "malformed token".into(),
        _ => "token rejected".into(),
    }
}

/// Mints an HS256 token: `switchboard token` and tests.
pub fn mint_hs256(
    secret: &str,
    user: &str,
    expires_at: Option<u64>,
    subscribe: &[String],
    publish: &[String],
    info: Option<&serde_json::Value>,
) -> Result<String, jsonwebtoken::errors::Error> {
    let mut claims = serde_json::json!({ "sub": user });
    if let Some(exp) = expires_at {
        claims["exp"] = exp.into();
    }
    if !subscribe.is_empty() {
        claims["subscribe"] = subscribe.into();
    }
    if !publish.is_empty() {
        claims["publish"] = publish.into();
    }
    if let Some(info) = info {
        claims["info"] = info.clone();
    }
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verifier(secret: &str) -> Verifier {
        Verifier::new(&AuthConfig {
            hmac_secret: Some(secret.into()),
            ..Default::default()
        })
        .unwrap()
    }

    #[test]
    fn patterns() {
        let p = RoomPattern::new("chat:*");
        assert!(p.matches("chat:lobby") && p.matches("chat:") && !p.matches("news:x"));
        assert!(RoomPattern::new("*").matches("anything"));
        assert!(RoomPattern::new("a*b*c").matches("aXXbYYc"));
        assert!(!RoomPattern::new("a*b*c").matches("aXXbYY"));
        assert!(
            RoomPattern::new("doc:42").matches("doc:42")
                && !RoomPattern::new("doc:42").matches("doc:420")
        );
    }

    #[test]
    fn verify_good_expired_and_bad() {
        let v = verifier("s");
        let subs = vec!["chat:*".to_string()];
        let info = serde_json::json!({"name": "Alice"});
        let token = mint_hs256("s", "alice", Some(1000), &subs, &[], Some(&info)).unwrap();
        let creds = v.verify(&token, 999).unwrap();
        assert_eq!(creds.user, "alice");
        assert_eq!(&creds.info[..], br#"{"name":"Alice"}"#);
        assert!(creds.may_subscribe("chat:x") && !creds.may_publish("chat:x"));
        assert_eq!(v.verify(&token, 1000), Err(AuthError::Expired));
        let forged = mint_hs256("other", "alice", None, &subs, &[], None).unwrap();
        assert_eq!(
            v.verify(&forged, 0),
            Err(AuthError::Invalid("signature does not match".into()))
        );
        assert!(matches!(
            v.verify("not.a.token", 0),
            Err(AuthError::Invalid(_))
        ));
        let no_sub = mint_hs256("s", "", None, &[], &[], None).unwrap();
        assert!(matches!(v.verify(&no_sub, 0), Err(AuthError::Invalid(m)) if m.contains("sub")));
    }
}
