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
//!
//! Either way a redirect (3xx) fails the check, naming the target to configure instead: delivery
//! never follows one for a POST. A TLS failure is told apart ([`super::tls_error`]): a plain-HTTP
//! port, a CA certificate served as the listener's own, an unknown CA (advice on
//! `listener.ca_file` only where it helps), anything else.

use std::path::Path;

use reqwest::{StatusCode, Url};

use super::http::{redirect_target, Sender};
use super::tls_error::{self, TlsProblem};
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

const FIX_UNREACHABLE: &str = "check [listener] url, the network path and proxies";
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
    let ca_file = listener.ca_file.as_deref();
    match protocol {
        Protocol::Bitville => probe_bitville(&sender, url, ca_file).await,
        Protocol::Batch => probe_batch(&sender, url, ca_file).await,
        Protocol::Otlp => probe_otlp(&sender, listener, url, ca_file).await,
    }
}

/// `otlp`: an empty `ExportLogsServiceRequest` (zero bytes of protobuf: no records, nothing
/// stored) POSTed to the logs URL with the configured headers must answer 2xx.
async fn probe_otlp(
    sender: &Sender,
    listener: &ListenerConfig,
    url: &str,
    ca_file: Option<&Path>,
) -> Probe {
    let p = Protocol::Otlp;
    let logs = listener.otlp.logs_url(url);
    let mut req = sender
        .client()
        .post(&logs)
        .header(reqwest::header::CONTENT_TYPE, "application/x-protobuf");
    for (name, value) in &listener.otlp.headers {
        req = req.header(name.as_str(), value.expose());
    }
    let resp = match req.body(Vec::new()).send().await {
        Ok(resp) => resp,
        Err(e) => return unreachable(p, &logs, &e, ca_file),
    };
    if let Some(probe) = redirected(p, "POST", &logs, url, &resp) {
        return probe;
    }
    let code = resp.status().as_u16();
    match code {
        200..=299 => Probe::new(
            Verdict::Ok,
            p,
            format!("{logs} took an empty OTLP logs request (HTTP {code})"),
            None,
        ),
        401 | 403 => Probe::new(
            Verdict::Fail,
            p,
            format!("{logs} refused the request (HTTP {code})"),
            Some("set the receiver's credentials in [otlp] headers (or api_key_file)"),
        ),
        _ => Probe::new(
            Verdict::Fail,
            p,
            format!("{logs} did not take an empty OTLP logs request (HTTP {code})"),
            Some("set [listener] url to the OTLP/HTTP base endpoint (for example http://collector:4318)"),
        ),
    }
}

async fn probe_batch(sender: &Sender, url: &str, ca_file: Option<&Path>) -> Probe {
    let p = Protocol::Batch;
    let resp = match sender.client().get(url).send().await {
        Ok(resp) => resp,
        Err(e) => return unreachable(p, url, &e, ca_file),
    };
    if let Some(probe) = redirected(p, "GET", url, url, &resp) {
        return probe;
    }
    let status = resp.status();
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

async fn probe_bitville(sender: &Sender, url: &str, ca_file: Option<&Path>) -> Probe {
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
        Ok(resp) if resp.status().is_redirection() => {
            if let Some(probe) = redirected(p, "GET", health.as_str(), url, &resp) {
                return probe;
            }
        }
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
        Err(e) => return unreachable(p, health.as_str(), &e, ca_file),
    }
    // The smallest JSON the listener parses and then rejects: proves the key without storing.
    let resp = match sender.client().post(url).body("{}").send().await {
        Ok(r) => r,
        Err(e) => return unreachable(p, url, &e, ca_file),
    };
    if let Some(probe) = redirected(p, "POST", url, url, &resp) {
        return probe;
    }
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

/// A FAIL when `resp` (to `method asked`) is a redirect: delivery never follows one for a POST.
/// The fix names the URL to configure instead of `configured`: the target itself, or for a
/// redirected `/health` the target's origin with the configured path.
fn redirected(
    p: Protocol,
    method: &str,
    asked: &str,
    configured: &str,
    resp: &reqwest::Response,
) -> Option<Probe> {
    let status = resp.status();
    if !status.is_redirection() {
        return None;
    }
    let code = status.as_u16();
    let Some(target) = redirect_target(asked, resp.headers()) else {
        return Some(Probe::new(
            Verdict::Fail,
            p,
            format!("{method} {asked} answered a redirect (HTTP {code}) without a Location"),
            Some("set [listener] url to the listener's own ingest URL"),
        ));
    };
    let suggested = if asked == configured {
        target.clone()
    } else {
        let path = Url::parse(configured).map(|u| u.path().to_string());
        match (Url::parse(&target), path) {
            (Ok(t), Ok(path)) => t.join(&path).map_or(target.clone(), |u| u.to_string()),
            _ => target.clone(),
        }
    };
    Some(Probe::new(
        Verdict::Fail,
        p,
        format!(
            "{method} {asked} redirects (HTTP {code}) to {target}: the agent never follows a \
             redirect for a POST, so no batch would arrive"
        ),
        Some(&format!("set [listener] url = {suggested}")),
    ))
}

/// A FAIL for a request that got no answer, telling the TLS failures apart: advice on
/// `listener.ca_file` only where it can help (an unknown CA), and by whether it is set.
fn unreachable(p: Protocol, url: &str, e: &reqwest::Error, ca_file: Option<&Path>) -> Probe {
    let problem = tls_error::find(e).map(|(problem, _)| problem);
    // A TLS failure's description names the URL; the listener did answer.
    let detail = match problem {
        Some(_) => super::http::describe(e),
        None => format!("{url} is not reachable: {}", super::http::describe(e)),
    };
    let fix = match problem {
        None => FIX_UNREACHABLE.to_string(),
        Some(TlsProblem::PlainHttp) => {
            "the port speaks plain HTTP: use an http:// URL, or the listener's TLS port".into()
        }
        Some(TlsProblem::CaAsServerCertificate) => FIX_CA_AS_SERVER_CERT.into(),
        Some(TlsProblem::UnknownIssuer) => match ca_file {
            Some(path) => format!(
                "[listener] ca_file ({}) is not the CA that signed the listener's certificate: \
                 set it to that CA's certificate (PEM)",
                path.display()
            ),
            None => "set [listener] ca_file to the certificate (PEM) of the CA that signed the \
                     listener's certificate"
                .into(),
        },
        Some(TlsProblem::WrongName) => "use the host name the listener's certificate names in \
             [listener] url, or give the listener a certificate for this host"
            .into(),
        Some(TlsProblem::Other) => "fix the listener's TLS setup (see the error)".into(),
    };
    Probe {
        fix: Some(fix),
        ..Probe::new(Verdict::Fail, p, detail, None)
    }
}

/// How to replace a CA certificate served as the server's own: a CA plus a server certificate
/// signed by it.
const FIX_CA_AS_SERVER_CERT: &str = "give the listener a server certificate signed by a CA, \
    not the CA certificate itself: openssl req -x509 -newkey rsa:2048 -nodes -days 3650 \
    -subj /CN=listener-ca -keyout ca.key -out ca.pem; openssl req -newkey rsa:2048 -nodes \
    -subj /CN=HOST -keyout server.key -out server.csr; openssl x509 -req -in server.csr -CA ca.pem \
    -CAkey ca.key -CAcreateserial -days 825 -extfile <(printf 'subjectAltName=DNS:HOST') \
    -out server.pem; serve server.pem with server.key and set [listener] ca_file = ca.pem (the CA \
    that signed it)";

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
