//! What `postgres-agent check` asks the listener, without storing anything there: does it take the
//! configured protocol, and does it accept the key? It owns the requests and the reading of the
//! answers; `check` prints the verdict. Delivery of real batches is [`super::http`]'s.
//!
//! - `bitville`: `GET /health` on the URL's origin must answer 2xx (the Bitville listener answers
//!   "OK" with no auth). Then `POST {}` to the configured URL with the key: the Bitville listener
//!   authenticates first, then validates, so `400 Payload validation failed` proves the key was
//!   accepted by an endpoint that takes Bitville payloads, and an empty object is never stored.
//! - `batch`: a `GET` of the configured URL with the key; it may answer anything but "no such
//!   route" (404/405) or "wrong key" (401/403).

use reqwest::{StatusCode, Url};

use super::http::Sender;
use crate::config::{ListenerConfig, Protocol};

/// Path of the Bitville listener's endpoint for this agent.
pub const BITVILLE_INGEST_PATH: &str = "/ingest/postgres";

/// What the Bitville listener says when a payload fails its schema.
const VALIDATION_FAILED: &str = "Payload validation failed";

/// Bytes of an unexpected answer's body quoted in the verdict.
const QUOTE_BYTES: usize = 200;

/// How the listener check came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Ok,
    /// Nothing is wrong that could be seen, but the check could not finish (rate limited).
    Warn,
    Fail,
}

/// The verdict with what was seen and, unless OK, what to do.
#[derive(Debug, Clone)]
pub struct Probe {
    pub verdict: Verdict,
    pub detail: String,
    pub fix: Option<String>,
}

impl Probe {
    fn new(verdict: Verdict, protocol: Protocol, detail: String, fix: Option<&str>) -> Probe {
        Probe {
            verdict,
            detail: format!("protocol {protocol}: {detail}"),
            fix: fix.map(str::to_string),
        }
    }
}

const FIX_UNREACHABLE: &str =
    "check [listener] url, the network path and proxies, and [listener] ca_file for a private CA";
const FIX_KEY: &str = "set the key issued for this project in [listener] api_key_file (or api_key)";

/// Probes the listener at `url` as `listener.protocol` says.
pub async fn probe(listener: &ListenerConfig, url: &str) -> Probe {
    let protocol = listener.protocol;
    let sender = match Sender::new(listener, url) {
        Ok(s) => s,
        Err(e) => {
            return Probe::new(
                Verdict::Fail,
                protocol,
                e.to_string(),
                Some("fix [listener] ca_file or api_key"),
            )
        }
    };
    match protocol {
        Protocol::Bitville => probe_bitville(&sender, url).await,
        Protocol::Batch => probe_batch(&sender, url).await,
    }
}

async fn probe_batch(sender: &Sender, url: &str) -> Probe {
    let p = Protocol::Batch;
    let status = match sender.client().get(url).send().await {
        Ok(resp) => resp.status(),
        Err(e) => return unreachable(p, url, &e),
    };
    let code = status.as_u16();
    match code {
        401 | 403 => Probe::new(
            Verdict::Fail,
            p,
            format!("{url} refused listener.api_key (HTTP {code} to a GET)"),
            Some(FIX_KEY),
        ),
        404 | 405 => Probe::new(
            Verdict::Fail,
            p,
            format!("{url} is not an ingest endpoint (HTTP {code} to a GET)"),
            Some("set [listener] url to the listener's ingest endpoint"),
        ),
        _ => Probe::new(
            Verdict::Ok,
            p,
            format!("{url} answers (HTTP {code} to a GET) and did not refuse the key"),
            None,
        ),
    }
}

async fn probe_bitville(sender: &Sender, url: &str) -> Probe {
    let p = Protocol::Bitville;
    let not_bitville_fix = "point [listener] url at the Bitville listener's /ingest/postgres, \
                            or set [listener] protocol = batch for a batch-envelope listener";
    let Some((health, expected)) = bitville_urls(url) else {
        return Probe::new(
            Verdict::Fail,
            p,
            format!("{url} is not an http(s) URL"),
            Some(not_bitville_fix),
        );
    };
    match sender.client().get(health.clone()).send().await {
        Ok(resp) if resp.status().is_success() => {}
        Ok(resp) => {
            return Probe::new(
                Verdict::Fail,
                p,
                format!(
                    "this is not a Bitville listener: GET {health} answered {}",
                    resp.status().as_u16()
                ),
                Some(not_bitville_fix),
            )
        }
        Err(e) => return unreachable(p, health.as_str(), &e),
    }
    // The smallest JSON the listener parses and then rejects: proves the key without storing.
    let resp = match sender.client().post(url).body("{}").send().await {
        Ok(r) => r,
        Err(e) => return unreachable(p, url, &e),
    };
    let status = resp.status();
    let retry_after = resp
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let body = quote(resp).await;
    let code = status.as_u16();
    match status {
        StatusCode::BAD_REQUEST if body.contains(VALIDATION_FAILED) => Probe::new(
            Verdict::Ok,
            p,
            format!(
                "{url} accepted listener.api_key and validates Bitville payloads \
                 (an empty probe was refused with 400, nothing stored)"
            ),
            None,
        ),
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => Probe::new(
            Verdict::Fail,
            p,
            format!("the listener refused listener.api_key (HTTP {code} from POST {url})"),
            Some(FIX_KEY),
        ),
        StatusCode::NOT_FOUND | StatusCode::METHOD_NOT_ALLOWED => Probe::new(
            Verdict::Fail,
            p,
            format!(
                "the URL is not the Bitville ingest endpoint (POST {url} answered {code}); \
                 expected {expected}"
            ),
            Some(&format!("set [listener] url = {expected}")),
        ),
        StatusCode::TOO_MANY_REQUESTS => Probe::new(
            Verdict::Warn,
            p,
            format!(
                "the listener is rate limiting this key (HTTP 429{}): the key and endpoint are \
                 not confirmed",
                retry_after
                    .map(|r| format!(", Retry-After {r}"))
                    .unwrap_or_default()
            ),
            Some("run check again later"),
        ),
        _ => Probe::new(
            Verdict::Fail,
            p,
            format!(
                "POST {url} answered {code}, not 400 {VALIDATION_FAILED:?}: {}",
                if body.is_empty() {
                    "(empty body)"
                } else {
                    &body
                }
            ),
            Some(if status.is_server_error() {
                "the listener failed to answer: see the listener's log, then run check again"
            } else {
                not_bitville_fix
            }),
        ),
    }
}

/// `<scheme>://<host>:<port>/health` and `<scheme>://<host>:<port>/ingest/postgres` for `url`.
pub fn bitville_urls(url: &str) -> Option<(Url, Url)> {
    let base = Url::parse(url).ok()?;
    if !matches!(base.scheme(), "http" | "https") || base.host_str().is_none() {
        return None;
    }
    Some((
        base.join("/health").ok()?,
        base.join(BITVILLE_INGEST_PATH).ok()?,
    ))
}

fn unreachable(p: Protocol, url: &str, e: &reqwest::Error) -> Probe {
    Probe::new(
        Verdict::Fail,
        p,
        format!("{url} is not reachable: {}", super::http::describe(e)),
        Some(FIX_UNREACHABLE),
    )
}

/// The first [`QUOTE_BYTES`] of the answer's body on one line.
async fn quote(resp: reqwest::Response) -> String {
    let buf = super::http::body_prefix(resp, QUOTE_BYTES).await;
    String::from_utf8_lossy(&buf)
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect::<String>()
        .trim()
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bitville_urls_keep_scheme_host_and_port() {
        let (health, ingest) = bitville_urls("https://apm.example:8443/ingest?x=1").unwrap();
        assert_eq!(health.as_str(), "https://apm.example:8443/health");
        assert_eq!(ingest.as_str(), "https://apm.example:8443/ingest/postgres");
        assert!(bitville_urls("ftp://apm.example/ingest").is_none());
        assert!(bitville_urls("not a url").is_none());
    }
}
