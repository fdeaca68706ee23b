//! Realtime tokens: JWTs signed with HS256 by a secret key, `kid` naming the key.
//!
//! Only HS256 is accepted; the header's `alg` must say so exactly, which rules out `none` and
//! algorithm confusion by construction. Verification is two steps because the secret depends on
//! the header: [`parse`] reads the `kid`, then [`UnverifiedToken::verify`] checks the signature.

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sha2::Sha256;

/// Most `channels` patterns a token may carry, and the longest one, in characters: matching a
/// name costs up to pattern × name per frame, so both are bounded.
pub const MAX_PATTERNS: usize = 16;
pub const MAX_PATTERN_CHARS: usize = 256;

/// Whether a token's `channels` patterns stay within [`MAX_PATTERNS`] of [`MAX_PATTERN_CHARS`].
pub fn patterns_within_bounds(channels: &[String]) -> bool {
    channels.len() <= MAX_PATTERNS
        && channels
            .iter()
            .all(|p| p.chars().count() <= MAX_PATTERN_CHARS)
}

/// The claims channeld reads. Unknown claims are ignored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Claims {
    pub sub: String,
    pub exp: i64,
    /// Issued at (Unix seconds): the start of the lifetime the server bounds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<i64>,
    /// Not before (Unix seconds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channels: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub permissions: Option<Vec<String>>,
    #[serde(
        default,
        rename = "peerMetadata",
        skip_serializing_if = "Option::is_none"
    )]
    pub peer_metadata: Option<Map<String, Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<Map<String, Value>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("the token is malformed")]
    Malformed,
    #[error("only HS256 tokens with a kid are accepted")]
    Algorithm,
    #[error("the token's signature does not verify")]
    Signature,
}

#[derive(Serialize, Deserialize)]
struct Header<'a> {
    alg: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    typ: Option<&'a str>,
    kid: Option<String>,
}

/// Signs `claims` with `secret` (the `sk_secret_…` string), naming `key_id` in the header.
pub fn sign(key_id: &str, secret: &str, claims: &Claims) -> String {
    let header = Header {
        alg: "HS256",
        typ: Some("JWT"),
        kid: Some(key_id.to_owned()),
    };
    let header = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&header).expect("header serializes"));
    let payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(claims).expect("claims serialize"));
    let signing_input = format!("{header}.{payload}");
    let signature = URL_SAFE_NO_PAD.encode(
        mac(secret, signing_input.as_bytes())
            .finalize()
            .into_bytes(),
    );
    format!("{signing_input}.{signature}")
}

/// A well-formed HS256 token whose signature has not been checked yet.
#[derive(Debug)]
pub struct UnverifiedToken<'a> {
    pub kid: String,
    signing_input: &'a str,
    payload: Vec<u8>,
    signature: Vec<u8>,
}

pub fn parse(token: &str) -> Result<UnverifiedToken<'_>, TokenError> {
    let mut parts = token.split('.');
    let (Some(header), Some(payload), Some(signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(TokenError::Malformed);
    };
    let decode = |part: &str| {
        URL_SAFE_NO_PAD
            .decode(part)
            .map_err(|_| TokenError::Malformed)
    };
    let header_bytes = decode(header)?;
    let header: Header<'_> =
        serde_json::from_slice(&header_bytes).map_err(|_| TokenError::Malformed)?;
    if header.alg != "HS256" {
        return Err(TokenError::Algorithm);
    }
    let kid = header.kid.ok_or(TokenError::Algorithm)?;
    Ok(UnverifiedToken {
        kid,
        signing_input: &token[..header_len(token)],
        payload: decode(payload)?,
        signature: decode(signature)?,
    })
}

/// Length of `header.payload`, the part the signature covers.
fn header_len(token: &str) -> usize {
    token.rfind('.').unwrap_or(0)
}

impl UnverifiedToken<'_> {
    /// Checks the signature with `secret`, then reads the claims. Expiry is the caller's to check.
    pub fn verify(self, secret: &str) -> Result<Claims, TokenError> {
        mac(secret, self.signing_input.as_bytes())
            .verify_slice(&self.signature)
            .map_err(|_| TokenError::Signature)?;
        serde_json::from_slice(&self.payload).map_err(|_| TokenError::Malformed)
    }
}

/// Clock skew tolerated between a backend that signs tokens and this server, on `nbf` and `iat`.
pub const CLOCK_SKEW_SECS: i64 = 30;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeError {
    /// `exp` has passed: mint a new token.
    Expired,
    /// `nbf` or `iat` lies in the future (beyond the tolerated skew).
    NotYetValid,
    /// `exp - iat` (or `exp` minus now without `iat`) exceeds the maximum lifetime.
    TooLong,
}

impl Claims {
    /// Checks the token's time claims at `now` (Unix seconds) against `max_lifetime` seconds.
    /// Minted and backend-signed tokens follow this one rule.
    pub fn check_times(&self, now: i64, max_lifetime: i64) -> Result<(), TimeError> {
        if self.exp <= now {
            return Err(TimeError::Expired);
        }
        let future = |t: Option<i64>| t.is_some_and(|t| t > now + CLOCK_SKEW_SECS);
        if future(self.nbf) || future(self.iat) {
            return Err(TimeError::NotYetValid);
        }
        let start = self.iat.unwrap_or(now);
        if self.exp.saturating_sub(start) > max_lifetime {
            return Err(TimeError::TooLong);
        }
        Ok(())
    }
}

fn mac(secret: &str, input: &[u8]) -> Hmac<Sha256> {
    let mut mac =
        Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes keys of any length");
    mac.update(input);
    mac
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims() -> Claims {
        Claims {
            sub: "u_alice_123".into(),
            exp: 1_715_539_200,
            iat: Some(1_715_535_600),
            nbf: None,
            channels: Some(vec!["app_abc/*".into()]),
            permissions: None,
            peer_metadata: None,
            metadata: None,
        }
    }

    #[test]
    fn a_token_verifies_with_its_secret_only() {
        let token = sign("sk_id_a", "sk_secret_1", &claims());
        let parsed = parse(&token).expect("parses");
        assert_eq!(parsed.kid, "sk_id_a");
        assert_eq!(parsed.verify("sk_secret_1"), Ok(claims()));
        assert_eq!(
            parse(&token).unwrap().verify("sk_secret_2"),
            Err(TokenError::Signature)
        );
    }

    #[test]
    fn time_claims_follow_one_rule() {
        let now = 1_800_000_000;
        let day = 86_400;
        let token = |exp, iat, nbf| Claims {
            exp,
            iat,
            nbf,
            ..claims()
        };
        let check = |c: Claims| c.check_times(now, day);
        assert_eq!(check(token(now + 60, Some(now), None)), Ok(()));
        assert_eq!(
            check(token(now, Some(now - 60), None)),
            Err(TimeError::Expired)
        );
        // A day exactly is allowed; a second more is not, from `iat` or, without it, from now.
        assert_eq!(check(token(now + day, Some(now), None)), Ok(()));
        assert_eq!(
            check(token(now + day, Some(now - 1), None)),
            Err(TimeError::TooLong)
        );
        assert_eq!(check(token(now + day, None, None)), Ok(()));
        assert_eq!(
            check(token(now + day + 1, None, None)),
            Err(TimeError::TooLong)
        );
        // `nbf` and `iat` may run ahead by the tolerated skew, no more.
        let skew = CLOCK_SKEW_SECS;
        assert_eq!(check(token(now + 60, None, Some(now + skew))), Ok(()));
        assert_eq!(
            check(token(now + 600, None, Some(now + skew + 1))),
            Err(TimeError::NotYetValid)
        );
        assert_eq!(
            check(token(now + 600, Some(now + skew + 1), None)),
            Err(TimeError::NotYetValid)
        );
    }

    #[test]
    fn matches_an_independently_computed_vector() {
        // Made with Python's hmac/base64/json for header {"alg":"HS256","kid":"k1"},
        // payload {"sub":"p","exp":2000000000}, secret "sk_secret_test".
        let token = "eyJhbGciOiJIUzI1NiIsImtpZCI6ImsxIn0.eyJzdWIiOiJwIiwiZXhwIjoyMDAwMDAwMDAwfQ.q6px3h1Ow0RDCFG979J51ukOtj03TBteAnsr3_mDHm4";
        let claims = parse(token)
            .unwrap()
            .verify("sk_secret_test")
            .expect("verifies");
        assert_eq!((claims.sub.as_str(), claims.exp), ("p", 2_000_000_000));
    }

    #[test]
    fn other_algorithms_and_shapes_are_refused() {
        let body = URL_SAFE_NO_PAD.encode(br#"{"sub":"p","exp":2000000000}"#);
        let none = format!(
            "{}.{body}.",
            URL_SAFE_NO_PAD.encode(br#"{"alg":"none","kid":"k"}"#)
        );
        let hs512 = format!(
            "{}.{body}.sig",
            URL_SAFE_NO_PAD.encode(br#"{"alg":"HS512","kid":"k"}"#)
        );
        let no_kid = format!(
            "{}.{body}.sig",
            URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256"}"#)
        );
        assert_eq!(parse(&none).unwrap_err(), TokenError::Algorithm);
        assert_eq!(parse(&hs512).unwrap_err(), TokenError::Algorithm);
        assert_eq!(parse(&no_kid).unwrap_err(), TokenError::Algorithm);
        for bad in ["", "a.b", "a.b.c.d", "!!.??.##"] {
            assert!(parse(bad).is_err(), "{bad}");
        }
        let mut token = sign("sk_id_a", "s", &claims());
        token.push('A');
        assert!(
            parse(&token)
                .map(|t| t.verify("s"))
                .map_or(true, |r| r.is_err())
        );
    }
}
