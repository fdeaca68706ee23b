//! One attempt: a signed `POST` to a receiver, through a client that connects only to addresses a
//! webhook may reach.
//!
//! The address check runs in the client's resolver, so it applies to the address actually
//! connected to at every attempt (a name that resolved to a public address at registration and
//! to 127.0.0.1 since is refused then: DNS rebinding). A URL naming an address literally never
//! reaches a resolver and is checked before the request. Redirects are not followed, and at most
//! 64 KiB of a response is read.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    sync::Arc,
    time::Duration,
};

use base64::{Engine as _, engine::general_purpose::STANDARD as BASE64};
use hmac::{Hmac, Mac};
use reqwest::{
    Url,
    dns::{Addrs, Name, Resolve, Resolving},
};
use sha2::Sha256;

/// How much of a response is read (and the rest dropped with the connection).
const MAX_RESPONSE_BYTES: usize = 64 * 1024;
/// How much of a failing response's body is kept in the deliveries log.
const ERROR_BODY_CHARS: usize = 200;

/// What one attempt came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// A 2xx answer.
    Delivered(u16),
    /// 410 Gone: the receiver wants no more.
    Gone,
    /// Anything else: a status outside 2xx, a refused address, a timeout, a broken connection.
    Failed { status: Option<u16>, error: String },
}

/// Whether a webhook may reach `ip`: not when it is loopback, private, link-local (the cloud
/// metadata address 169.254.169.254 among them), CGNAT, multicast, unspecified, broadcast,
/// reserved or otherwise not globally routable.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) if v6.is_loopback() || v6.is_unspecified() => false,
        // IPv4-mapped (::ffff:a.b.c.d) and IPv4-compatible (::a.b.c.d) forms: the IPv4 address.
        IpAddr::V6(v6) => match v6.to_ipv4() {
            Some(v4) => is_public_v4(v4),
            None => is_public_v6(v6),
        },
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    !(ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_multicast()
        || ip.is_broadcast()
        || ip.is_documentation()
        || a == 0
        || (a == 100 && (64..128).contains(&b)) // CGNAT, 100.64.0.0/10
        || (a == 192 && b == 0 && c == 0) // IETF protocol assignments
        || (a == 198 && (b == 18 || b == 19)) // benchmarking
        || a >= 240) // reserved
}

fn is_public_v6(ip: Ipv6Addr) -> bool {
    let segments = ip.segments();
    let first = segments[0];
    // 6to4 (2002::/16) carries an IPv4 address in its next 32 bits.
    if first == 0x2002 {
        let [a, b] = segments[1].to_be_bytes();
        let [c, d] = segments[2].to_be_bytes();
        return is_public_v4(Ipv4Addr::new(a, b, c, d));
    }
    !(ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_multicast()
        || (first == 0x2001 && segments[1] == 0) // Teredo, 2001::/32
        || (first == 0x0100 && segments[1..4] == [0, 0, 0]) // discard-only, 100::/64
        || (first & 0xfe00) == 0xfc00 // unique local (fd00:ec2::254, the AWS metadata address, too)
        || (first & 0xffc0) == 0xfe80 // link-local
        || (first & 0xffc0) == 0xfec0 // site-local (deprecated)
        || first == 0x2001 && ip.segments()[1] == 0x0db8 // documentation
        || first == 0x0064 && ip.segments()[1] == 0xff9b) // NAT64 (embeds an IPv4 address)
}

/// Drops every address a webhook may not reach; fails when none is left.
struct GuardedResolver;

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let resolved: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let allowed: Vec<SocketAddr> = resolved
                .iter()
                .copied()
                .filter(|addr| is_public(addr.ip()))
                .collect();
            if allowed.is_empty() {
                return Err(format!("{host} resolves to no public address").into());
            }
            Ok(Box::new(allowed.into_iter()) as Addrs)
        })
    }
}

/// Makes ring the process's TLS provider, which every reqwest client built after it uses
/// (reqwest is built without a provider of its own, so building a client before this panics).
/// Idempotent: a second install is refused harmlessly.
pub fn install_tls_provider() {
    // ring offers no post-quantum key exchange, hence rustls's deprecation note; receivers
    // negotiate the classical groups it has.
    #[allow(deprecated)]
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Sends attempts; cheap to clone (one connection pool).
#[derive(Clone)]
pub struct Sender {
    client: reqwest::Client,
    allow_private: bool,
}

impl Sender {
    pub fn new(timeout: Duration, allow_private: bool) -> Self {
        install_tls_provider();
        let mut builder = reqwest::Client::builder()
            // A proxy from the environment (HTTPS_PROXY…) would resolve and fetch on our behalf,
            // past the address check: never used.
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(10)))
            .pool_idle_timeout(Duration::from_secs(60))
            .user_agent(concat!("channeld-webhooks/", env!("CARGO_PKG_VERSION")));
        if !allow_private {
            builder = builder.dns_resolver(Arc::new(GuardedResolver));
        }
        let client = builder.build().expect("the webhook HTTP client builds");
        Self {
            client,
            allow_private,
        }
    }

    /// Posts `body` to `url` with the Standard Webhooks headers.
    pub async fn post(
        &self,
        url: &str,
        event_id: &str,
        timestamp: i64,
        signature: &str,
        body: bytes::Bytes,
    ) -> Outcome {
        let url = match Url::parse(url) {
            Ok(url) => url,
            Err(error) => return failed(None, format!("invalid URL: {error}")),
        };
        if !self.allow_private
            && let Some(ip) = literal_ip(&url)
            && !is_public(ip)
        {
            return failed(None, format!("{ip} is no public address"));
        }
        let sent = self
            .client
            .post(url)
            .header("content-type", "application/json")
            .header("webhook-id", event_id)
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", signature)
            .body(body)
            .send()
            .await;
        let mut response = match sent {
            Ok(response) => response,
            Err(error) => return failed(None, describe(&error)),
        };
        let status = response.status().as_u16();
        let mut read = Vec::new();
        while read.len() < MAX_RESPONSE_BYTES {
            match response.chunk().await {
                Ok(Some(chunk)) => read.extend_from_slice(&chunk),
                Ok(None) => break,
                // The status is what counts; a body cut short does not undo a 2xx.
                Err(_) => break,
            }
        }
        match status {
            200..=299 => Outcome::Delivered(status),
            410 => Outcome::Gone,
            _ => {
                let text: String = String::from_utf8_lossy(&read)
                    .chars()
                    .filter(|c| !c.is_control())
                    .take(ERROR_BODY_CHARS)
                    .collect();
                let error = match text.trim() {
                    "" => format!("HTTP {status}"),
                    text => format!("HTTP {status}: {text}"),
                };
                failed(Some(status), error)
            }
        }
    }
}

fn failed(status: Option<u16>, error: String) -> Outcome {
    Outcome::Failed { status, error }
}

/// The host of `url` when it is an address rather than a name.
pub fn literal_ip(url: &Url) -> Option<IpAddr> {
    let host = url.host_str()?;
    host.trim_start_matches('[')
        .trim_end_matches(']')
        .parse()
        .ok()
}

/// An error's message with its causes, which is where reqwest says what went wrong.
fn describe(error: &reqwest::Error) -> String {
    let kind = if error.is_timeout() {
        "timed out"
    } else if error.is_connect() {
        "connection failed"
    } else {
        "request failed"
    };
    let mut text = kind.to_owned();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text.chars().take(ERROR_BODY_CHARS * 2).collect()
}

/// `v1,<base64 HMAC-SHA256 of "id.timestamp.body">` for each secret, space-separated.
pub fn signature(secrets: &[Vec<u8>], event_id: &str, timestamp: i64, body: &[u8]) -> String {
    let timestamp = timestamp.to_string();
    secrets
        .iter()
        .map(|secret| {
            let mut mac =
                Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes a key of any length");
            mac.update(event_id.as_bytes());
            mac.update(b".");
            mac.update(timestamp.as_bytes());
            mac.update(b".");
            mac.update(body);
            format!("v1,{}", BASE64.encode(mac.finalize().into_bytes()))
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// A new secret: `whsec_` and the base64 of 32 random bytes.
pub fn new_secret() -> String {
    let bytes: [u8; 32] = rand::random();
    format!("whsec_{}", BASE64.encode(bytes))
}

/// The key a `whsec_…` secret signs with.
pub fn secret_key(secret: &str) -> Option<Vec<u8>> {
    BASE64.decode(secret.strip_prefix("whsec_")?).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_public_addresses_pass() {
        for blocked in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "224.0.0.1",
            "0.0.0.0",
            "255.255.255.255",
            "::1",
            "fe80::1",
            "fd00:ec2::254",
            "::ffff:127.0.0.1",
            "::127.0.0.1",
            "2002:7f00:1::1",
            "2001:0:4136:e378::1",
            "100::1",
            "::",
            "ff02::1",
        ] {
            assert!(!is_public(blocked.parse().unwrap()), "{blocked} passed");
        }
        for allowed in [
            "8.8.8.8",
            "1.1.1.1",
            "2606:4700:4700::1111",
            "100.128.0.1",
            "2002:808:808::1",
        ] {
            assert!(is_public(allowed.parse().unwrap()), "{allowed} refused");
        }
    }

    #[test]
    fn a_signature_per_secret() {
        let signed = signature(&[b"one".to_vec(), b"two".to_vec()], "evt_1", 1, b"{}");
        let parts: Vec<&str> = signed.split(' ').collect();
        assert_eq!(parts.len(), 2);
        assert!(parts.iter().all(|p| p.starts_with("v1,")));
        assert_ne!(parts[0], parts[1]);
        let key = secret_key(&new_secret()).unwrap();
        assert_eq!(key.len(), 32);
    }
}
