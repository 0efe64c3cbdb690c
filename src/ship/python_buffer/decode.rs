//! One item of the Python agent's buffer, from its pickled bytes to a Bitville payload ready to
//! POST: unpickle, parse, map NaN/Infinity to null, validate the five fields, convert `pg_locks`.
//!
//! Pure functions on bytes; no I/O. An item that fails here is skipped by the import and counted,
//! with the [`DecodeError`] logged.

use std::borrow::Cow;

use serde_json::{Map, Number, Value as Json};
use serde_pickle::{HashableValue, Value as Pickle};

/// The `source` values the Bitville listener accepts.
pub const SOURCES: [&str; 4] = [
    "pg_stat_activity",
    "pg_stat_statements",
    "pg_log",
    "system_metrics",
];

/// The source the Python agent wrote for lock snapshots, which the listener refuses.
pub const PG_LOCKS: &str = "pg_locks";

/// How deep a pickled dict may nest; the same limit serde_json applies to JSON text.
const MAX_DEPTH: usize = 128;

/// The listener's limit on `project` (its schema: a string of 1 to 50 characters).
const MAX_PROJECT_CHARS: usize = 50;

/// Why an item is skipped.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("the stored item is {0}")]
    Stored(&'static str),
    #[error("the item is not a readable pickle: {0}")]
    Unpickle(#[from] serde_pickle::Error),
    #[error("the pickled item is {0}, not a str holding JSON or a dict")]
    Kind(&'static str),
    #[error("the item's JSON does not parse: {0}")]
    Json(#[from] serde_json::Error),
    #[error("the pickled dict holds {0}, which has no JSON form")]
    NoJsonForm(&'static str),
    #[error("the pickled dict nests deeper than {MAX_DEPTH} levels")]
    TooDeep,
    #[error("the payload is not a JSON object")]
    NotObject,
    #[error("field `{field}`: {problem}")]
    Field {
        field: &'static str,
        problem: &'static str,
    },
    #[error("field `source` is {0:?}, not one of pg_stat_activity, pg_stat_statements, pg_log, system_metrics, pg_locks")]
    Source(String),
}

/// A payload that passed validation.
#[derive(Debug, Clone, PartialEq)]
pub struct Decoded {
    /// After the `pg_locks` conversion.
    pub source: String,
    pub timestamp: f64,
    /// The whole payload object, serialized.
    pub json: String,
}

/// Decodes one stored item (the `data` column of persist-queue's table).
pub fn decode(blob: &[u8]) -> Result<Decoded, DecodeError> {
    let payload = match serde_pickle::value_from_slice(blob, serde_pickle::DeOptions::new())? {
        // What buffer.py stored: `put(json.dumps(payload))`.
        Pickle::String(text) => parse_json(&text)?,
        // Older code stored the dict itself.
        Pickle::Dict(dict) => to_json(Pickle::Dict(dict), 0)?,
        other => return Err(DecodeError::Kind(kind(&other))),
    };
    validate(payload)
}

/// Parses JSON as Python's `json.dumps` writes it, which (with its default `allow_nan=True`)
/// includes the bare words `NaN`, `Infinity` and `-Infinity`. JSON has no such values and
/// parsers refuse them, so each becomes `null`.
pub fn parse_json(text: &str) -> Result<Json, serde_json::Error> {
    match serde_json::from_str(text) {
        Ok(v) => Ok(v),
        Err(first) => match replace_non_finite(text) {
            Cow::Owned(fixed) => serde_json::from_str(&fixed),
            Cow::Borrowed(_) => Err(first),
        },
    }
}

/// Replaces `NaN`, `Infinity` and `-Infinity` outside string literals with `null`.
pub fn replace_non_finite(text: &str) -> Cow<'_, str> {
    const WORDS: [&str; 3] = ["-Infinity", "Infinity", "NaN"];
    let bytes = text.as_bytes();
    let mut out: Option<String> = None;
    let mut copied = 0;
    let mut in_string = false;
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if in_string {
            match b {
                b'\\' => i += 1,
                b'"' => in_string = false,
                _ => {}
            }
            i += 1;
            continue;
        }
        if b == b'"' {
            in_string = true;
            i += 1;
            continue;
        }
        // Every word starts with an ASCII byte, so `i` and `i + word.len()` are char boundaries.
        if let Some(word) = WORDS.iter().find(|w| bytes[i..].starts_with(w.as_bytes())) {
            let o = out.get_or_insert_with(|| String::with_capacity(text.len()));
            o.push_str(&text[copied..i]);
            o.push_str("null");
            i += word.len();
            copied = i;
            continue;
        }
        i += 1;
    }
    match out {
        Some(mut o) => {
            o.push_str(&text[copied..]);
            Cow::Owned(o)
        }
        None => Cow::Borrowed(text),
    }
}

/// A pickled value as `json.dumps` would write it, except that NaN and infinities become `null`.
fn to_json(value: Pickle, depth: usize) -> Result<Json, DecodeError> {
    if depth > MAX_DEPTH {
        return Err(DecodeError::TooDeep);
    }
    Ok(match value {
        Pickle::None => Json::Null,
        Pickle::Bool(b) => Json::Bool(b),
        Pickle::I64(i) => Json::Number(i.into()),
        Pickle::Int(big) => big_int(&big.to_string()),
        Pickle::F64(f) => Number::from_f64(f).map_or(Json::Null, Json::Number),
        Pickle::String(s) => Json::String(s),
        Pickle::List(items) | Pickle::Tuple(items) => Json::Array(
            items
                .into_iter()
                .map(|v| to_json(v, depth + 1))
                .collect::<Result<_, _>>()?,
        ),
        Pickle::Dict(dict) => {
            let mut map = Map::new();
            for (k, v) in dict {
                map.insert(key(k)?, to_json(v, depth + 1)?);
            }
            Json::Object(map)
        }
        Pickle::Bytes(_) => return Err(DecodeError::NoJsonForm("bytes")),
        Pickle::Set(_) | Pickle::FrozenSet(_) => return Err(DecodeError::NoJsonForm("a set")),
    })
}

/// An integer beyond i64: exact as u64 when it fits, else the nearest float (as serde_json reads
/// a JSON number that large).
fn big_int(digits: &str) -> Json {
    if let Ok(u) = digits.parse::<u64>() {
        return Json::Number(u.into());
    }
    digits
        .parse::<f64>()
        .ok()
        .and_then(Number::from_f64)
        .map_or(Json::Null, Json::Number)
}

/// A dict key as `json.dumps` converts it.
fn key(k: HashableValue) -> Result<String, DecodeError> {
    Ok(match k {
        HashableValue::String(s) => s,
        HashableValue::I64(i) => i.to_string(),
        HashableValue::Int(big) => big.to_string(),
        HashableValue::Bool(b) => if b { "true" } else { "false" }.to_string(),
        HashableValue::None => "null".to_string(),
        HashableValue::F64(f) => match Number::from_f64(f) {
            Some(n) => n.to_string(),
            None => return Err(DecodeError::NoJsonForm("a NaN or infinite dict key")),
        },
        HashableValue::Bytes(_) => return Err(DecodeError::NoJsonForm("a bytes dict key")),
        HashableValue::Tuple(_) => return Err(DecodeError::NoJsonForm("a tuple dict key")),
        HashableValue::FrozenSet(_) => return Err(DecodeError::NoJsonForm("a frozenset dict key")),
    })
}

fn kind(value: &Pickle) -> &'static str {
    match value {
        Pickle::None => "None",
        Pickle::Bool(_) => "a bool",
        Pickle::I64(_) | Pickle::Int(_) => "an int",
        Pickle::F64(_) => "a float",
        Pickle::Bytes(_) => "bytes",
        Pickle::String(_) => "a str",
        Pickle::List(_) => "a list",
        Pickle::Tuple(_) => "a tuple",
        Pickle::Set(_) | Pickle::FrozenSet(_) => "a set",
        Pickle::Dict(_) => "a dict",
    }
}

/// Checks the five fields the listener requires and converts `pg_locks` to `pg_stat_activity`
/// with `data.converted_from = "pg_locks"`.
fn validate(payload: Json) -> Result<Decoded, DecodeError> {
    let field = |field, problem| DecodeError::Field { field, problem };
    let Json::Object(mut obj) = payload else {
        return Err(DecodeError::NotObject);
    };
    match obj.get("correlation_id") {
        Some(Json::String(_)) => {}
        Some(_) => return Err(field("correlation_id", "not a string")),
        None => return Err(field("correlation_id", "missing")),
    }
    match obj.get("project") {
        Some(Json::String(p)) if p.is_empty() => return Err(field("project", "empty")),
        Some(Json::String(p)) if p.chars().count() > MAX_PROJECT_CHARS => {
            return Err(field("project", "longer than 50 characters"))
        }
        Some(Json::String(_)) => {}
        Some(_) => return Err(field("project", "not a string")),
        None => return Err(field("project", "missing")),
    }
    let timestamp = match obj.get("timestamp") {
        Some(Json::Number(n)) => n
            .as_f64()
            .ok_or_else(|| field("timestamp", "not a number"))?,
        Some(Json::Null) => return Err(field("timestamp", "null (NaN or infinite in Python)")),
        Some(_) => return Err(field("timestamp", "not a number")),
        None => return Err(field("timestamp", "missing")),
    };
    let source = match obj.get("source") {
        Some(Json::String(s)) if s == PG_LOCKS || SOURCES.contains(&s.as_str()) => s.clone(),
        Some(Json::String(s)) => return Err(DecodeError::Source(s.clone())),
        Some(_) => return Err(field("source", "not a string")),
        None => return Err(field("source", "missing")),
    };
    let Some(Json::Object(data)) = obj.get_mut("data") else {
        return Err(match obj.get("data") {
            None => field("data", "missing"),
            Some(_) => field("data", "not an object"),
        });
    };
    let source = if source == PG_LOCKS {
        data.insert("converted_from".into(), Json::String(PG_LOCKS.into()));
        let converted = SOURCES[0].to_string();
        obj.insert("source".into(), Json::String(converted.clone()));
        converted
    } else {
        source
    };
    let json = serde_json::to_string(&obj)?;
    Ok(Decoded {
        source,
        timestamp,
        json,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Python 3.11: `pickle.dumps(json.dumps({...}), protocol=4)`, as persist-queue stores it.
    const PICKLED_STR: &[u8] = b"\x80\x04\x95p\x00\x00\x00\x00\x00\x00\x00\x8cl{\"correlation_id\": \"\", \"project\": \"p\", \"timestamp\": 1.5, \"source\": \"pg_log\", \"data\": {\"m\": NaN, \"s\": \"NaN\"}}\x94.";

    fn pickle(value: &Pickle) -> Vec<u8> {
        serde_pickle::value_to_vec(value, serde_pickle::SerOptions::new()).unwrap()
    }

    fn s(v: &str) -> HashableValue {
        HashableValue::String(v.into())
    }

    fn payload_dict(source: &str, data: Pickle) -> Pickle {
        Pickle::Dict(
            [
                (s("correlation_id"), Pickle::String("c-1".into())),
                (s("project"), Pickle::String("shop".into())),
                (s("timestamp"), Pickle::F64(1764300000.5)),
                (s("source"), Pickle::String(source.into())),
                (s("data"), data),
            ]
            .into_iter()
            .collect(),
        )
    }

    fn parse(json: &str) -> Json {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn a_python_pickled_json_str_with_nan_decodes_to_null() {
        let d = decode(PICKLED_STR).unwrap();
        assert_eq!(d.source, "pg_log");
        assert_eq!(d.timestamp, 1.5);
        let v = parse(&d.json);
        assert_eq!(v["data"]["m"], Json::Null);
        assert_eq!(v["data"]["s"], "NaN", "a string that reads NaN stays");
    }

    /// Pickles written by Python 3.11 (tests/fixtures/python_buffer/make_fixture.py).
    fn python_pickle(name: &str) -> Vec<u8> {
        let dir = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/python_buffer/pickles"
        );
        std::fs::read(format!("{dir}/{name}.pickle")).unwrap()
    }

    #[test]
    fn every_python_3_protocol_and_both_item_forms_decode_alike() {
        let mut bodies = Vec::new();
        for name in [
            "str-protocol0",
            "str-protocol2",
            "str-protocol4",
            "str-protocol5",
            "dict-protocol2",
            "dict-protocol4",
        ] {
            let d = decode(&python_pickle(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(d.source, "pg_stat_statements", "{name}");
            assert_eq!(d.timestamp, 1764300020.25, "{name}");
            let v = parse(&d.json);
            let query = v["data"]["query"].as_str().unwrap();
            assert!(
                query.starts_with("SELECT 'é' xxx") && query.len() > 300,
                "{name}"
            );
            assert_eq!(v["data"]["ratio"], Json::Null, "{name}");
            bodies.push(v);
        }
        assert!(bodies.windows(2).all(|w| w[0] == w[1]));
    }

    #[test]
    fn non_finite_words_are_replaced_only_outside_strings() {
        let text =
            r#"{"a": NaN, "b": [Infinity, -Infinity, 1e5], "c": "NaN \" Infinity", "d\\": -1}"#;
        let fixed = replace_non_finite(text);
        assert_eq!(
            fixed,
            r#"{"a": null, "b": [null, null, 1e5], "c": "NaN \" Infinity", "d\\": -1}"#
        );
        assert!(matches!(
            replace_non_finite(r#"{"a": "NaN"}"#),
            Cow::Borrowed(_)
        ));
        assert_eq!(parse_json(text).unwrap()["b"][2], 1e5);
    }

    #[test]
    fn multibyte_text_around_replacements_is_kept() {
        let text = "{\"é\": NaN, \"ü\": \"∞ NaN\"}";
        let v = parse_json(text).unwrap();
        assert_eq!(v["é"], Json::Null);
        assert_eq!(v["ü"], "∞ NaN");
    }

    #[test]
    fn a_pickled_dict_is_accepted_and_its_nan_is_null() {
        let data = Pickle::Dict(
            [
                (s("cpu"), Pickle::F64(f64::NAN)),
                (
                    HashableValue::I64(7),
                    Pickle::Tuple(vec![Pickle::None, Pickle::Bool(true)]),
                ),
                (s("big"), Pickle::Int(u64::MAX.into())),
            ]
            .into_iter()
            .collect(),
        );
        let d = decode(&pickle(&payload_dict("system_metrics", data))).unwrap();
        let v = parse(&d.json);
        assert_eq!(v["data"]["cpu"], Json::Null);
        assert_eq!(v["data"]["7"], serde_json::json!([null, true]));
        assert_eq!(v["data"]["big"], u64::MAX);
        assert_eq!(v["correlation_id"], "c-1");
    }

    #[test]
    fn pg_locks_becomes_pg_stat_activity_with_its_data() {
        let data = Pickle::Dict(
            [
                (s("locks"), Pickle::List(vec![])),
                (s("count"), Pickle::I64(0)),
                (s("has_blocking"), Pickle::Bool(false)),
            ]
            .into_iter()
            .collect(),
        );
        let d = decode(&pickle(&payload_dict("pg_locks", data))).unwrap();
        assert_eq!(d.source, "pg_stat_activity");
        let v = parse(&d.json);
        assert_eq!(v["source"], "pg_stat_activity");
        assert_eq!(
            v["data"],
            serde_json::json!({"locks": [], "count": 0, "has_blocking": false,
                               "converted_from": "pg_locks"})
        );
    }

    #[test]
    fn items_that_are_not_payloads_are_refused_with_a_reason() {
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (b"garbage".to_vec(), "not a readable pickle"),
            (PICKLED_STR[..40].to_vec(), "not a readable pickle"),
            (pickle(&Pickle::I64(3)), "an int"),
            (pickle(&Pickle::String("{not json".into())), "does not parse"),
            (pickle(&Pickle::String("[1]".into())), "not a JSON object"),
            (
                pickle(&payload_dict("pg_activity", Pickle::Dict(Default::default()))),
                "\"pg_activity\"",
            ),
            (pickle(&payload_dict("pg_log", Pickle::List(vec![]))), "`data`: not an object"),
            (
                pickle(&payload_dict("pg_log", Pickle::Bytes(vec![1]))),
                "bytes",
            ),
            (
                pickle(&Pickle::String(
                    r#"{"correlation_id": null, "project": "p", "timestamp": 1, "source": "pg_log", "data": {}}"#.into(),
                )),
                "`correlation_id`: not a string",
            ),
            (
                pickle(&Pickle::String(
                    r#"{"correlation_id": "", "project": "p", "timestamp": NaN, "source": "pg_log", "data": {}}"#.into(),
                )),
                "`timestamp`: null",
            ),
            (
                pickle(&Pickle::String(
                    r#"{"correlation_id": "", "project": "", "timestamp": 1, "source": "pg_log", "data": {}}"#.into(),
                )),
                "`project`: empty",
            ),
            (
                pickle(&Pickle::String(
                    r#"{"correlation_id": "", "project": "p", "timestamp": 1, "data": {}}"#.into(),
                )),
                "`source`: missing",
            ),
        ];
        for (blob, expected) in cases {
            let err = decode(&blob).unwrap_err().to_string();
            assert!(
                err.contains(expected),
                "{err:?} should mention {expected:?}"
            );
        }
    }

    #[test]
    fn an_integer_timestamp_is_accepted() {
        let text = r#"{"correlation_id": "", "project": "p", "timestamp": 17, "source": "pg_log", "data": {}}"#;
        let d = decode(&pickle(&Pickle::String(text.into()))).unwrap();
        assert_eq!(d.timestamp, 17.0);
    }

    #[test]
    fn nesting_beyond_the_limit_is_refused_not_overflowed() {
        let mut deep = Pickle::None;
        for _ in 0..(MAX_DEPTH + 5) {
            deep = Pickle::List(vec![deep]);
        }
        let blob = pickle(&payload_dict(
            "pg_log",
            Pickle::Dict([(s("x"), deep)].into_iter().collect()),
        ));
        let err = decode(&blob).unwrap_err();
        assert!(
            matches!(err, DecodeError::TooDeep | DecodeError::Unpickle(_)),
            "{err}"
        );
    }
}
