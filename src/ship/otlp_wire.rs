//! The HTTP side of the `otlp` protocol: where a stored request goes (`/v1/logs` or `/v1/metrics`
//! by its type, [`crate::ship::encode::otlp::signal`]), its headers (`application/x-protobuf`,
//! `Content-Encoding: gzip` unless `otlp.compression = none`, `otlp.headers`), and the reading of
//! the answer: a 2xx body's `partial_success`, a failure's `google.rpc.Status` message. Pure:
//! [`super::http`] sends, with the status classification it shares with the other protocols.

use prost::Message;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue, CONTENT_TYPE};

use super::encode::otlp::{proto, signal, Signal};
use crate::batch::BatchKind;
use crate::config::otlp::OtlpConfig;

/// Most bytes of a 2xx answer read for its `partial_success`.
pub const RESPONSE_BYTES: usize = 64 * 1024;

/// `otlp.headers` holds a header that does not convert (the configuration checks them).
#[derive(Debug)]
pub struct BadHeader;

/// Where and how otlp requests go.
pub struct OtlpWire {
    logs_url: String,
    metrics_url: String,
    pub gzip: bool,
    /// `Content-Type` and `otlp.headers`.
    pub headers: HeaderMap,
}

impl OtlpWire {
    /// The wire settings of `otlp` with base endpoint `base` (`listener.url`).
    pub fn new(otlp: &OtlpConfig, base: &str) -> Result<OtlpWire, BadHeader> {
        let mut headers = HeaderMap::new();
        headers.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("application/x-protobuf"),
        );
        for (name, value) in &otlp.headers {
            // Checked by the configuration; a header that still does not convert is an error.
            let name = HeaderName::from_bytes(name.as_bytes()).map_err(|_| BadHeader)?;
            let mut value = HeaderValue::from_str(value.expose()).map_err(|_| BadHeader)?;
            value.set_sensitive(true);
            headers.insert(name, value);
        }
        Ok(OtlpWire {
            logs_url: otlp.logs_url(base),
            metrics_url: otlp.metrics_url(base),
            gzip: otlp.gzip,
            headers,
        })
    }

    /// The URL of requests of type `kind` (unknown: logs).
    pub fn url(&self, kind: Option<BatchKind>) -> &str {
        match kind.map(signal) {
            Some(Signal::Metrics) => &self.metrics_url,
            _ => &self.logs_url,
        }
    }
}

/// The `partial_success` of an export response: rejected records or data points and the
/// receiver's message; None when the body has none (or is not a response).
pub fn partial_success(kind: Option<BatchKind>, body: &[u8]) -> Option<(i64, String)> {
    if body.is_empty() {
        return None;
    }
    let (rejected, message) = match kind.map(signal) {
        Some(Signal::Metrics) => {
            let p = proto::ExportMetricsServiceResponse::decode(body)
                .ok()?
                .partial_success?;
            (p.rejected_data_points, p.error_message)
        }
        _ => {
            let p = proto::ExportLogsServiceResponse::decode(body)
                .ok()?
                .partial_success?;
            (p.rejected_log_records, p.error_message)
        }
    };
    (rejected != 0 || !message.is_empty()).then_some((rejected, message))
}

/// `google.rpc.Status`, the body of an OTLP/HTTP failure.
#[derive(Clone, PartialEq, prost::Message)]
struct Status {
    #[prost(int32, tag = "1")]
    code: i32,
    #[prost(string, tag = "2")]
    message: String,
}

/// The message of a protobuf failure body (the bytes as text when it is not a `Status`).
pub fn status_text(body: &[u8]) -> String {
    match Status::decode(body) {
        Ok(s) if !s.message.is_empty() => s.message,
        _ => String::from_utf8_lossy(&body[..body.len().min(512)])
            .trim()
            .to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_partial_success() {
        let body = proto::ExportLogsServiceResponse {
            partial_success: Some(proto::ExportLogsPartialSuccess {
                rejected_log_records: 3,
                error_message: "too old".into(),
            }),
        }
        .encode_to_vec();
        assert_eq!(
            partial_success(Some(BatchKind::PgLogs), &body),
            Some((3, "too old".into()))
        );
        assert_eq!(partial_success(Some(BatchKind::PgLogs), &[]), None);
        let ok = proto::ExportLogsServiceResponse {
            partial_success: Some(proto::ExportLogsPartialSuccess::default()),
        }
        .encode_to_vec();
        assert_eq!(partial_success(Some(BatchKind::PgLogs), &ok), None);
        let s = Status {
            code: 3,
            message: "bad".into(),
        }
        .encode_to_vec();
        assert_eq!(status_text(&s), "bad");
    }
}
