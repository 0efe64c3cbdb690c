//! The OTLP resource and scope of every request (who sent it, about which server), and the
//! conversions the log and metric writers share: JSON to `AnyValue`, RFC 3339 to Unix nanoseconds,
//! hex trace IDs to bytes.

use serde_json::Value;

use super::proto::{self, any_value, kv_int, kv_str, AnyValue, KeyValue};
use super::Context;
use crate::batch::Batch;

/// `db.system.name` of every request (OpenTelemetry database semantic conventions).
pub const DB_SYSTEM: &str = "postgresql";

/// The instrumentation scope: this agent.
pub fn scope() -> proto::InstrumentationScope {
    proto::InstrumentationScope {
        name: "postgres-agent".into(),
        version: env!("CARGO_PKG_VERSION").into(),
    }
}

/// The resource of `batch`'s requests (docs/otlp.md, "Resource").
pub fn resource(batch: &Batch, ctx: &Context<'_>) -> proto::Resource {
    let host = &batch.agent.hostname;
    let mut attributes = vec![
        kv_str("service.name", ctx.service_name),
        kv_str("service.version", batch.agent.version.clone()),
        kv_str("host.name", host.clone()),
        kv_str("db.system.name", DB_SYSTEM),
        kv_str("postgres_agent.project", ctx.project),
    ];
    let instance = match &batch.server {
        Some(server) => {
            attributes.push(kv_str("server.address", server.host.clone()));
            attributes.push(kv_int("server.port", i64::from(server.port)));
            attributes.push(kv_str(
                "db.server.version",
                version_text(server.version_num),
            ));
            attributes.push(kv_int(
                "postgresql.server_version_num",
                i64::from(server.version_num),
            ));
            attributes.push(kv_str(
                "postgresql.system_identifier",
                server.system_identifier.clone(),
            ));
            format!("{host}:{}", server.port)
        }
        None => host.clone(),
    };
    attributes.push(kv_str("service.instance.id", instance));
    proto::Resource { attributes }
}

/// `server_version_num` as PostgreSQL writes the version: 150004 -> "15.4", 90624 -> "9.6.24".
pub fn version_text(num: i32) -> String {
    if num >= 100_000 {
        format!("{}.{}", num / 10_000, num % 10_000)
    } else {
        format!("{}.{}.{}", num / 10_000, num / 100 % 100, num % 100)
    }
}

/// A JSON value as an `AnyValue` (null: None).
pub fn any(value: &Value) -> Option<AnyValue> {
    let v = match value {
        Value::Null => return None,
        Value::Bool(b) => any_value::Value::BoolValue(*b),
        Value::Number(n) => match n.as_i64() {
            Some(i) => any_value::Value::IntValue(i),
            None => any_value::Value::DoubleValue(n.as_f64().unwrap_or(0.0)),
        },
        Value::String(s) => any_value::Value::StringValue(s.clone()),
        Value::Array(items) => any_value::Value::ArrayValue(proto::ArrayValue {
            values: items
                .iter()
                .map(|i| any(i).unwrap_or(AnyValue { value: None }))
                .collect(),
        }),
        Value::Object(map) => any_value::Value::KvlistValue(proto::KeyValueList {
            values: map
                .iter()
                .filter_map(|(k, v)| {
                    Some(KeyValue {
                        key: k.clone(),
                        value: Some(any(v)?),
                    })
                })
                .collect(),
        }),
    };
    Some(AnyValue { value: Some(v) })
}

/// `key` from a JSON value, when it is present and not null.
pub fn attr(key: &str, value: Option<&Value>) -> Option<KeyValue> {
    Some(KeyValue {
        key: key.to_string(),
        value: Some(any(value?)?),
    })
}

/// An RFC 3339 time in Unix nanoseconds (0 when it does not parse).
pub fn unix_nanos(rfc3339: &str) -> u64 {
    time::OffsetDateTime::parse(rfc3339, &time::format_description::well_known::Rfc3339)
        .map(|t| t.unix_timestamp_nanos().max(0) as u64)
        .unwrap_or(0)
}

/// The collection time of `batch` in Unix nanoseconds.
pub fn collected_nanos(batch: &Batch) -> u64 {
    unix_nanos(&batch.collected_at)
}

/// `hex` as bytes when it is exactly `len` bytes of hex digits and not all zero (W3C: an all-zero
/// ID is invalid).
pub fn hex_id(hex: &str, len: usize) -> Option<Vec<u8>> {
    if hex.len() != len * 2 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let bytes: Vec<u8> = (0..len)
        .map(|i| u8::from_str_radix(&hex[i * 2..i * 2 + 2], 16).unwrap_or(0))
        .collect();
    bytes.iter().any(|b| *b != 0).then_some(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_and_ids() {
        assert_eq!(version_text(150_004), "15.4");
        assert_eq!(version_text(90_624), "9.6.24");
        assert_eq!(hex_id("00ff", 2), Some(vec![0, 255]));
        assert_eq!(hex_id("0000", 2), None);
        assert_eq!(hex_id("zz00", 2), None);
        assert_eq!(
            unix_nanos("2026-11-28T10:00:02.500Z"),
            1_795_860_002_500_000_000
        );
    }
}
