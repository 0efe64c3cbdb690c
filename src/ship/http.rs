//! Delivery of one stored batch to the listener over HTTP(S), and the classification of the answer.
//!
//! reqwest with rustls (ring provider): the system trust store plus `listener.ca_file`; proxies from
//! `HTTPS_PROXY`/`HTTP_PROXY`/`ALL_PROXY`/`NO_PROXY`. Each request is a `POST` of the stored gzip body
//! (`Content-Encoding: gzip`) or, with `listener.compress = false`, of the decompressed JSON, with
//! `Authorization: Bearer`, `Idempotency-Key: <batch_id>` and `User-Agent: postgres-agent/<version>`.
//!
//! A bitville-protocol body is always sent uncompressed (the Bitville listener reads it with
//! `req.json()`, which does not decode gzip).
//!
//! Answers: 2xx delivered; a 3xx is never followed (a redirected POST would arrive as a bodiless
//! GET): it is a failure that keeps the batch, naming the `Location` to configure instead; 429
//! throttled (wait for `Retry-After`, not a breaker failure); 408, 5xx, timeouts and connection
//! errors retried later (honouring `Retry-After`); 401 and 403 also retried, since they mean the
//! agent's key is wrong, not the batch; every other 4xx rejects the batch for good (dead letter).
//! A TLS failure is described in words ([`super::tls_error`]).
//!
//! An otlp-protocol request ([`otlp_wire`]) goes to its signal's URL (`/v1/logs` or
//! `/v1/metrics` from the request's type) as `application/x-protobuf`, gzip unless
//! `otlp.compression = none`, with `otlp.headers`; the statuses are classified as above (the OTLP
//! specification's retryable 429, 502, 503, 504 included), and a 2xx whose body reports a
//! `partial_success` is [`Outcome::Partial`]: delivered, never sent again, the rejected count and
//! the receiver's message reported.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use flate2::read::GzDecoder;
use reqwest::header::{HeaderMap, HeaderValue, AUTHORIZATION, CONTENT_ENCODING, CONTENT_TYPE};
use reqwest::StatusCode;
use uuid::Uuid;

use super::otlp_wire;
use super::tls_error;
use crate::batch::BatchKind;
use crate::config::{ListenerConfig, Protocol};

/// `User-Agent` of every request.
pub const USER_AGENT: &str = concat!("postgres-agent/", env!("CARGO_PKG_VERSION"));

/// Longest `Retry-After` honoured; a listener asking for more is retried after this.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

/// Bytes of a rejection's response body kept as the dead letter's reason.
const REASON_BYTES: usize = 512;

#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("listener.ca_file {}: {detail}", path.display())]
    CaFile { path: PathBuf, detail: String },
    #[error("listener.api_key is not a valid HTTP header value")]
    BadApiKey,
    #[error("otlp.headers holds a header that is not a valid HTTP header")]
    BadHeader,
    #[error("cannot build the HTTP client: {0}")]
    Client(reqwest::Error),
}

/// What became of one request.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// 2xx.
    Delivered { status: u16 },
    /// Try again later; `retry_after` when the listener said when.
    Retry {
        reason: String,
        retry_after: Option<Duration>,
    },
    /// 2xx from an OTLP receiver that rejected part of the request (`partial_success`): delivered
    /// (the spec forbids a retry), with what the receiver said.
    Partial {
        status: u16,
        rejected: i64,
        message: String,
    },
    /// Can never succeed: dead-letter it.
    Reject { status: u16, reason: String },
    /// 429: the listener's rate limit. Not a failure of the listener (the breaker ignores it); the
    /// request is sent again after `retry_after`.
    Throttled { retry_after: Duration },
}

/// Wait after a 429 that did not say how long (the Bitville listener always does).
pub const DEFAULT_THROTTLE: Duration = Duration::from_secs(10);

/// The configured HTTP client for the listener.
pub struct Sender {
    client: reqwest::Client,
    url: String,
    compress: bool,
    /// Where and how otlp-protocol requests go.
    otlp: otlp_wire::OtlpWire,
}

impl Sender {
    /// Builds the client for `listener` (whose `url` must be set).
    pub fn new(listener: &ListenerConfig, url: &str) -> Result<Sender, HttpError> {
        crate::crypto::install_provider();
        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        if !listener.api_key.is_empty() {
            let mut v = HeaderValue::from_str(&format!("Bearer {}", listener.api_key.expose()))
                .map_err(|_| HttpError::BadApiKey)?;
            v.set_sensitive(true);
            headers.insert(AUTHORIZATION, v);
        }
        let mut builder = reqwest::Client::builder()
            .user_agent(USER_AGENT)
            .default_headers(headers)
            .timeout(listener.timeout)
            .connect_timeout(listener.timeout.min(Duration::from_secs(10)))
            .pool_idle_timeout(Duration::from_secs(50))
            // A redirect is never followed: clients turn a 301/302 POST into a bodiless GET whose
            // 200 would count as delivered. A 3xx keeps the batch ([`redirect_reason`]).
            .redirect(reqwest::redirect::Policy::none());
        if let Some(path) = &listener.ca_file {
            builder = builder.tls_certs_merge(read_ca_file(path)?);
        }
        Ok(Sender {
            client: builder.build().map_err(HttpError::Client)?,
            url: url.to_string(),
            compress: listener.compress,
            otlp: otlp_wire::OtlpWire::new(&listener.otlp, url)
                .map_err(|_| HttpError::BadHeader)?,
        })
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// The configured client (TLS, proxies, timeouts, `Authorization`), for `check`'s probe.
    pub(crate) fn client(&self) -> &reqwest::Client {
        &self.client
    }

    /// POSTs one stored request (`gz_body` is the gzip of its JSON body). A batch-protocol body is
    /// sent compressed unless `listener.compress = false`; a bitville body is always sent as plain
    /// JSON, since the Bitville listener does not decode `Content-Encoding: gzip`.
    pub async fn send(&self, batch_id: Uuid, gz_body: &[u8], protocol: Protocol) -> Outcome {
        self.send_request(batch_id, None, gz_body, protocol).await
    }

    /// [`Sender::send`] of a request of type `kind` (which decides an otlp request's signal URL).
    pub async fn send_request(
        &self,
        batch_id: Uuid,
        kind: Option<BatchKind>,
        gz_body: &[u8],
        protocol: Protocol,
    ) -> Outcome {
        if protocol == Protocol::Otlp {
            return self.send_otlp(batch_id, kind, gz_body).await;
        }
        let req = self
            .client
            .post(&self.url)
            .header("Idempotency-Key", batch_id.to_string());
        let req = match with_body(
            req,
            self.compress && protocol == Protocol::Batch,
            gz_body,
            8,
        ) {
            Ok(req) => req,
            Err(outcome) => return outcome,
        };
        let resp = match post(req).await {
            Ok(resp) => resp,
            Err(outcome) => return outcome,
        };
        let status = resp.status();
        if status.is_success() {
            return Outcome::Delivered {
                status: status.as_u16(),
            };
        }
        classify_failure(resp, &self.url).await
    }

    /// POSTs one stored otlp request (`gz_body`: the gzip of its protobuf body).
    async fn send_otlp(&self, batch_id: Uuid, kind: Option<BatchKind>, gz_body: &[u8]) -> Outcome {
        let wire = &self.otlp;
        let url = wire.url(kind);
        let req = self
            .client
            .post(url)
            .headers(wire.headers.clone())
            .header("Idempotency-Key", batch_id.to_string());
        let req = match with_body(req, wire.gzip, gz_body, 4) {
            Ok(req) => req,
            Err(outcome) => return outcome,
        };
        let resp = match post(req).await {
            Ok(resp) => resp,
            Err(outcome) => return outcome,
        };
        let status = resp.status();
        if !status.is_success() {
            return classify_failure(resp, url).await;
        }
        let status = status.as_u16();
        let protobuf = resp
            .headers()
            .get(CONTENT_TYPE)
            .is_none_or(|v| v.as_bytes().starts_with(b"application/x-protobuf"));
        let body = body_prefix(resp, otlp_wire::RESPONSE_BYTES).await;
        match protobuf
            .then(|| otlp_wire::partial_success(kind, &body))
            .flatten()
        {
            Some((rejected, message)) => Outcome::Partial {
                status,
                rejected,
                message,
            },
            None => Outcome::Delivered { status },
        }
    }
}

/// Attaches a stored request's body: the stored gzip as it is with `Content-Encoding: gzip` when
/// `gzip`, else decompressed (`growth`: the expected ratio, for the buffer). A stored body that does
/// not decompress is rejected, never retried.
fn with_body(
    req: reqwest::RequestBuilder,
    gzip: bool,
    gz_body: &[u8],
    growth: usize,
) -> Result<reqwest::RequestBuilder, Outcome> {
    if gzip {
        return Ok(req.header(CONTENT_ENCODING, "gzip").body(gz_body.to_vec()));
    }
    let mut body = Vec::with_capacity(gz_body.len() * growth);
    match GzDecoder::new(gz_body).read_to_end(&mut body) {
        Ok(_) => Ok(req.body(body)),
        Err(e) => Err(Outcome::Reject {
            status: 0,
            reason: format!("stored body does not decompress: {e}"),
        }),
    }
}

/// Sends a request; a network error (no answer) is retried.
async fn post(req: reqwest::RequestBuilder) -> Result<reqwest::Response, Outcome> {
    req.send().await.map_err(|e| Outcome::Retry {
        reason: describe(&e),
        retry_after: None,
    })
}

/// The outcome of an answer that is not 2xx (a redirect, 429, retryable or a rejection).
async fn classify_failure(resp: reqwest::Response, url: &str) -> Outcome {
    let status = resp.status();
    let retry_after = resp
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| parse_retry_after(v, SystemTime::now()));
    if status == StatusCode::TOO_MANY_REQUESTS {
        return Outcome::Throttled {
            retry_after: retry_after.unwrap_or(DEFAULT_THROTTLE),
        };
    }
    if status.is_redirection() {
        return Outcome::Retry {
            reason: redirect_reason(status, url, resp.headers()),
            retry_after,
        };
    }
    let body = match resp
        .headers()
        .get(CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/x-protobuf"))
    {
        true => otlp_wire::status_text(&body_prefix(resp, 64 * 1024).await),
        false => excerpt(resp).await,
    };
    let reason = if body.is_empty() {
        format!("HTTP {status}")
    } else {
        format!("HTTP {status}: {body}")
    };
    if is_retryable(status) {
        Outcome::Retry {
            reason,
            retry_after,
        }
    } else {
        Outcome::Reject {
            status: status.as_u16(),
            reason,
        }
    }
}

/// 408, 429, 5xx, and the two statuses that blame the agent's credentials rather than the batch.
pub fn is_retryable(status: StatusCode) -> bool {
    status.is_server_error()
        || matches!(
            status,
            StatusCode::REQUEST_TIMEOUT
                | StatusCode::TOO_MANY_REQUESTS
                | StatusCode::UNAUTHORIZED
                | StatusCode::FORBIDDEN
        )
        || !status.is_client_error()
}

/// Where a 3xx answer to `url` points: its `Location` resolved against `url` (None without one).
pub(crate) fn redirect_target(url: &str, headers: &HeaderMap) -> Option<String> {
    let location = headers
        .get(reqwest::header::LOCATION)?
        .to_str()
        .ok()?
        .trim();
    Some(
        match reqwest::Url::parse(url).and_then(|base| base.join(location)) {
            Ok(target) => target.to_string(),
            Err(_) => location.to_string(),
        },
    )
}

/// The failure of a POST answered with a redirect: the status, the target, and the URL to set.
fn redirect_reason(status: StatusCode, url: &str, headers: &HeaderMap) -> String {
    match redirect_target(url, headers) {
        Some(target) => format!(
            "HTTP {status}: the listener redirects {url} to {target}; the agent never \
             follows a redirect for a POST, the batch stays queued: set [listener] url = {target}"
        ),
        None => format!(
            "HTTP {status}: the listener answered a redirect without a Location header; the \
             batch stays queued: check [listener] url"
        ),
    }
}

/// `Retry-After` as delay-seconds or an HTTP-date, capped at [`MAX_RETRY_AFTER`].
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    let delay = match value.parse::<u64>() {
        Ok(secs) => Duration::from_secs(secs),
        Err(_) => httpdate::parse_http_date(value)
            .ok()?
            .duration_since(now)
            .unwrap_or(Duration::ZERO),
    };
    Some(delay.min(MAX_RETRY_AFTER))
}

fn read_ca_file(path: &Path) -> Result<Vec<reqwest::Certificate>, HttpError> {
    let bad = |detail: String| HttpError::CaFile {
        path: path.to_path_buf(),
        detail,
    };
    let pem = std::fs::read(path).map_err(|e| bad(format!("cannot read: {e}")))?;
    let certs = reqwest::Certificate::from_pem_bundle(&pem)
        .map_err(|e| bad(format!("not a PEM certificate bundle: {e}")))?;
    if certs.is_empty() {
        return Err(bad("contains no certificates".into()));
    }
    Ok(certs)
}

/// A one-line description of a transport error, with its causes (reqwest's Display alone says
/// little more than "error sending request"); a TLS failure in words first ([`tls_error`]).
pub(crate) fn describe(e: &reqwest::Error) -> String {
    if let Some((problem, said)) = tls_error::find(e) {
        let url = e.url().map_or("the listener", |u| u.as_str());
        return format!("{} (rustls: {said})", problem.explain(url));
    }
    let mut s = if e.is_timeout() {
        "timed out".to_string()
    } else if e.is_connect() {
        "connection failed".to_string()
    } else {
        "request failed".to_string()
    };
    let mut source: Option<&dyn std::error::Error> = Some(e);
    while let Some(err) = source {
        s.push_str(": ");
        s.push_str(&err.to_string());
        source = err.source();
    }
    s
}

async fn excerpt(resp: reqwest::Response) -> String {
    let buf = body_prefix(resp, REASON_BYTES).await;
    String::from_utf8_lossy(&buf).trim().to_string()
}

/// The first `limit` bytes of an answer's body (fewer when it is shorter or fails midway).
pub(crate) async fn body_prefix(mut resp: reqwest::Response, limit: usize) -> Vec<u8> {
    let mut buf = Vec::new();
    while buf.len() < limit {
        match resp.chunk().await {
            Ok(Some(chunk)) => buf.extend_from_slice(&chunk),
            _ => break,
        }
    }
    buf.truncate(limit);
    buf
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_statuses() {
        for s in [408, 429, 500, 502, 503, 504, 401, 403] {
            assert!(is_retryable(StatusCode::from_u16(s).unwrap()), "{s}");
        }
        for s in [400, 404, 409, 410, 413, 422] {
            assert!(!is_retryable(StatusCode::from_u16(s).unwrap()), "{s}");
        }
    }

    #[test]
    fn a_redirect_names_its_resolved_target() {
        let mut h = HeaderMap::new();
        h.insert(
            reqwest::header::LOCATION,
            HeaderValue::from_static("/v2/ingest"),
        );
        let url = "http://apm.example:8080/ingest";
        assert_eq!(
            redirect_target(url, &h).as_deref(),
            Some("http://apm.example:8080/v2/ingest")
        );
        let reason = redirect_reason(StatusCode::MOVED_PERMANENTLY, url, &h);
        assert!(reason.starts_with("HTTP 301 Moved Permanently: the listener redirects"));
        assert!(reason.ends_with("set [listener] url = http://apm.example:8080/v2/ingest"));
        assert!(is_retryable(StatusCode::PERMANENT_REDIRECT));
        let none = redirect_reason(StatusCode::FOUND, url, &HeaderMap::new());
        assert!(none.contains("without a Location"), "{none}");
    }

    #[test]
    fn parses_retry_after_both_forms() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_445_412_480);
        assert_eq!(parse_retry_after(" 7 ", now), Some(Duration::from_secs(7)));
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:30 GMT", now),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:00:00 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("999999", now), Some(MAX_RETRY_AFTER));
        assert_eq!(parse_retry_after("soon", now), None);
    }
}
