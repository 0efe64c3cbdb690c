//! Correlation IDs from SQL comments, so application requests can be joined to the queries they ran.
//!
//! Recognised anywhere in the text, in any number of comments (block `/* */`, nested, or `--` line):
//! - sqlcommenter: `/*key='value',...*/`, keys and values URL-encoded; `traceparent` is split into
//!   `trace_id` and `span_id`;
//! - Marginalia: `/*application:Shop,controller:orders,action:show*/`;
//! - plain `key=value` pairs such as `/* correlation_id=abc-123 */`;
//! - the Bitville PHP agent's `/* correlation:<id> */` (a Marginalia-style pair, key `correlation`).
//!
//! Outside comments, the Bitville PHP agent also sets `application_name = 'bitville-<id>'`; the
//! pseudo-key `application_name` in `correlation.keys` takes the ID from there (the agent's own
//! `bitville-postgres-agent` never counts).
//!
//! The ID's shape (`correlation.id_shape`): by default (`php`) only what the PHP agent writes counts,
//! so other programs named `bitville-<word>` (the Python agent's own `bitville-monitor`) are not
//! requests: from `application_name` only a UUID (`8-4-4-4-12` hex digits), from the `correlation`
//! key only a value the PHP agent's own pattern `[a-f0-9-]+` (case-insensitive) matches. `any` accepts
//! any `bitville-<id>` of 1 to 128 letters, digits, `-`, `_`, `.`, `:` and any `correlation` value.
//! The choice travels inside the keys list as [`ANY_SHAPE_KEY`] (see [`keys_with_shape`]), so every
//! reader of `correlation.keys` applies the same rule.
//!
//! Keys are normalised (lower case, `-` -> `_`). `correlation.keys` lists, in order of preference,
//! which keys hold the correlation ID. Comments inside string literals are ignored. Bounded: at most
//! [`MAX_TAGS`] tags of at most [`MAX_VALUE_LEN`] bytes each. Runs before any obfuscation; it only reads.

use std::borrow::Cow;
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Most tags kept from one statement.
pub const MAX_TAGS: usize = 32;
/// Longest tag value kept, in bytes (longer values are cut at a character boundary).
pub const MAX_VALUE_LEN: usize = 256;

/// The correlation data of one statement.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Correlation {
    /// Value of the first key of `correlation.keys` present (for `traceparent`, its trace id).
    pub id: Option<String>,
    /// W3C trace id (32 hex digits) from `traceparent`.
    pub trace_id: Option<String>,
    /// W3C parent span id (16 hex digits) from `traceparent`.
    pub span_id: Option<String>,
    /// Every tag found, keys normalised.
    pub tags: BTreeMap<String, String>,
}

/// The pseudo-key of `correlation.keys` that reads the ID from `application_name`.
pub const APPLICATION_NAME_KEY: &str = "application_name";

/// Prefix of the Bitville PHP agent's `application_name`: `bitville-<id>`.
pub const APPLICATION_NAME_PREFIX: &str = "bitville-";

/// The comment key of the Bitville PHP agent's `/* correlation:<id> */`.
pub const PHP_COMMENT_KEY: &str = "correlation";

pub use crate::config::correlation_shape::{keys_with_shape, ANY_SHAPE_KEY, ID_SHAPES};

fn any_shape(keys: &[String]) -> bool {
    keys.iter().any(|k| k == ANY_SHAPE_KEY)
}

/// Whether `id` is a UUID in its text form: `8-4-4-4-12` hex digits, any case.
pub fn is_uuid(id: &str) -> bool {
    let b = id.as_bytes();
    b.len() == 36
        && b.iter().enumerate().all(|(i, &c)| match i {
            8 | 13 | 18 | 23 => c == b'-',
            _ => c.is_ascii_hexdigit(),
        })
}

/// Whether the PHP agent's own pattern for `/* correlation:<id> */`, `[a-f0-9-]+` with PHP's `/i`,
/// matches all of `id`.
pub fn is_php_comment_id(id: &str) -> bool {
    !id.is_empty() && id.bytes().all(|c| c.is_ascii_hexdigit() || c == b'-')
}

/// Extracts correlation tags from every comment in `sql`; None when there are none.
pub fn extract(sql: &str, keys: &[String]) -> Option<Correlation> {
    extract_from(Some(sql), None, keys)
}

/// The ID in an `application_name` of the form `bitville-<uuid>` (the Bitville PHP agent's).
pub fn application_name_uuid(application_name: &str) -> Option<&str> {
    application_name
        .strip_prefix(APPLICATION_NAME_PREFIX)
        .filter(|id| is_uuid(id))
}

/// The ID in an `application_name` of the form `bitville-<id>`, where `<id>` is 1 to 128 letters,
/// digits, `-`, `_`, `.` or `:` (`correlation.id_shape = any`). The agent's own name never matches.
pub fn application_name_id(application_name: &str) -> Option<&str> {
    let id = application_name.strip_prefix(APPLICATION_NAME_PREFIX)?;
    let ok = !id.is_empty()
        && id.len() <= 128
        && id
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.' | b':'));
    (ok && application_name != crate::identity::APPLICATION_NAME).then_some(id)
}

/// Whether `sql` holds `/*` or `--`, the only places correlation tags are read from: one SIMD scan
/// for either first byte.
pub fn has_comment(sql: &str) -> bool {
    let b = sql.as_bytes();
    memchr::memchr2_iter(b'/', b'-', b).any(|i| match b[i] {
        b'/' => b.get(i + 1) == Some(&b'*'),
        _ => b.get(i + 1) == Some(&b'-'),
    })
}

/// Correlation of one statement from its SQL comments and its session's `application_name`; None
/// when neither carries anything.
pub fn extract_from(
    sql: Option<&str>,
    application_name: Option<&str>,
    keys: &[String],
) -> Option<Correlation> {
    let any = any_shape(keys);
    let app_id = application_name
        .filter(|_| keys.iter().any(|k| k == APPLICATION_NAME_KEY))
        .and_then(|a| {
            if any {
                application_name_id(a)
            } else {
                application_name_uuid(a)
            }
        });
    let mut tags = BTreeMap::new();
    if let Some(sql) = sql {
        if has_comment(sql) {
            for body in comments(sql) {
                parse_pairs(body, &mut tags);
                if tags.len() >= MAX_TAGS {
                    break;
                }
            }
        }
    }
    if tags.is_empty() && app_id.is_none() {
        return None;
    }
    let (trace_id, span_id) = tags
        .get("traceparent")
        .and_then(|tp| parse_traceparent(tp))
        .map_or((None, None), |(t, s)| (Some(t), Some(s)));
    let id = keys.iter().find_map(|k| {
        let k = normalise_key(k);
        match k.as_ref() {
            "traceparent" => trace_id.clone(),
            APPLICATION_NAME_KEY => app_id.map(|id| cut(id.to_string())),
            PHP_COMMENT_KEY if !any => tags
                .get(PHP_COMMENT_KEY)
                .filter(|v| is_php_comment_id(v))
                .cloned(),
            _ => tags.get(k.as_ref()).cloned(),
        }
    });
    Some(Correlation {
        id,
        trace_id,
        span_id,
        tags,
    })
}

/// The bodies of all comments outside string literals and quoted identifiers.
fn comments(sql: &str) -> Vec<&str> {
    let b = sql.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            q @ (b'\'' | b'"') => {
                // Skip the quoted text; a doubled quote is an escaped quote and is skipped the same way.
                i += 1;
                while i < b.len() && b[i] != q {
                    i += 1;
                }
                i += 1;
            }
            b'/' if b.get(i + 1) == Some(&b'*') => {
                let start = i + 2;
                let mut depth = 1;
                let mut j = start;
                while j < b.len() && depth > 0 {
                    if b[j] == b'/' && b.get(j + 1) == Some(&b'*') {
                        depth += 1;
                        j += 2;
                    } else if b[j] == b'*' && b.get(j + 1) == Some(&b'/') {
                        depth -= 1;
                        j += 2;
                    } else {
                        j += 1;
                    }
                }
                let end = if depth == 0 { j - 2 } else { b.len() };
                // start and end sit next to ASCII bytes, so they are character boundaries.
                if let Some(body) = sql.get(start..end) {
                    out.push(body);
                }
                i = j;
            }
            b'-' if b.get(i + 1) == Some(&b'-') => {
                let start = i + 2;
                let end = memchr::memchr(b'\n', &b[start..]).map_or(b.len(), |n| start + n);
                if let Some(body) = sql.get(start..end) {
                    out.push(body);
                }
                i = end;
            }
            _ => i += 1,
        }
    }
    out
}

/// Parses `key='v',key:v,key=v` pairs from one comment body into `tags` (earlier values win).
fn parse_pairs(body: &str, tags: &mut BTreeMap<String, String>) {
    let b = body.as_bytes();
    let mut i = 0;
    let is_key = |c: u8| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'-' | b'.' | b'%');
    while i < b.len() && tags.len() < MAX_TAGS {
        while i < b.len() && (b[i].is_ascii_whitespace() || b[i] == b',') {
            i += 1;
        }
        let key_start = i;
        while i < b.len() && is_key(b[i]) {
            i += 1;
        }
        let key_end = i;
        while i < b.len() && b[i] == b' ' {
            i += 1;
        }
        if key_end == key_start || i >= b.len() || !(b[i] == b'=' || b[i] == b':') {
            // Not a pair: skip to the next separator.
            while i < b.len() && !(b[i].is_ascii_whitespace() || b[i] == b',') {
                i += 1;
            }
            continue;
        }
        i += 1;
        while i < b.len() && b[i] == b' ' {
            i += 1;
        }
        let (value, quoted): (Cow<str>, bool) = match b.get(i) {
            Some(&q @ (b'\'' | b'"')) => {
                let start = i + 1;
                let mut j = start;
                while j < b.len() && b[j] != q {
                    j += if b[j] == b'\\' { 2 } else { 1 };
                }
                let end = j.min(b.len());
                i = (j + 1).min(b.len());
                let raw = body.get(start..end).unwrap_or("");
                (Cow::Owned(raw.replace("\\'", "'")), true)
            }
            _ => {
                let start = i;
                while i < b.len() && !(b[i].is_ascii_whitespace() || b[i] == b',') {
                    i += 1;
                }
                (Cow::Borrowed(body.get(start..i).unwrap_or("")), false)
            }
        };
        let key = body.get(key_start..key_end).unwrap_or("");
        let key = normalise_key(&percent_decode(key)).into_owned();
        let value = if quoted {
            percent_decode(&value).into_owned()
        } else {
            value.into_owned()
        };
        if key.is_empty() || value.is_empty() {
            continue;
        }
        tags.entry(key).or_insert_with(|| cut(value));
    }
}

fn normalise_key(k: &str) -> Cow<'_, str> {
    if k.bytes().any(|c| c.is_ascii_uppercase() || c == b'-') {
        Cow::Owned(k.to_ascii_lowercase().replace('-', "_"))
    } else {
        Cow::Borrowed(k)
    }
}

fn cut(mut v: String) -> String {
    if v.len() > MAX_VALUE_LEN {
        let mut end = MAX_VALUE_LEN;
        while !v.is_char_boundary(end) {
            end -= 1;
        }
        v.truncate(end);
    }
    v
}

/// URL-decoding as sqlcommenter encodes; invalid escapes are kept as written.
fn percent_decode(s: &str) -> Cow<'_, str> {
    if !s.contains('%') {
        return Cow::Borrowed(s);
    }
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            let hex = |c: u8| (c as char).to_digit(16);
            if let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    Cow::Owned(String::from_utf8_lossy(&out).into_owned())
}

/// `00-<32 hex trace id>-<16 hex span id>-<2 hex flags>`; all-zero ids are invalid per W3C.
fn parse_traceparent(tp: &str) -> Option<(String, String)> {
    let parts: Vec<&str> = tp.trim().split('-').collect();
    if parts.len() < 4 {
        return None;
    }
    let hex = |s: &str, n: usize| {
        s.len() == n && s.bytes().all(|c| c.is_ascii_hexdigit()) && s.bytes().any(|c| c != b'0')
    };
    if parts[0].len() != 2 || !hex(parts[1], 32) || !hex(parts[2], 16) {
        return None;
    }
    Some((parts[1].to_ascii_lowercase(), parts[2].to_ascii_lowercase()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> Vec<String> {
        [
            "correlation_id",
            "request_id",
            "x_request_id",
            "traceparent",
        ]
        .map(String::from)
        .to_vec()
    }

    #[test]
    fn sqlcommenter_with_url_encoding_and_traceparent() {
        let sql = "SELECT * FROM t /*action='%2Fparam*d',controller='index',framework='spring',\
                   traceparent='00-5bd66ef5095369c7b0d1f8f4bd33716a-c532cb4098ac3dd2-01',\
                   tracestate='congo%3Dt61rcWkgMzE%2Crojo%3D00f067aa0ba902b7'*/";
        let c = extract(sql, &keys()).unwrap();
        assert_eq!(c.tags["action"], "/param*d");
        assert_eq!(
            c.tags["tracestate"],
            "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7"
        );
        assert_eq!(
            c.trace_id.as_deref(),
            Some("5bd66ef5095369c7b0d1f8f4bd33716a")
        );
        assert_eq!(c.span_id.as_deref(), Some("c532cb4098ac3dd2"));
        assert_eq!(
            c.id, c.trace_id,
            "traceparent is the only configured key present"
        );
    }

    #[test]
    fn marginalia_keeps_colons_in_values() {
        let sql =
            "/*application:Shop,controller:Admin::Users,action:show,request_id:req-42*/ SELECT 1";
        let c = extract(sql, &keys()).unwrap();
        assert_eq!(c.tags["controller"], "Admin::Users");
        assert_eq!(c.id.as_deref(), Some("req-42"));
    }

    #[test]
    fn plain_correlation_id_anywhere_and_several_comments() {
        let sql =
            "UPDATE t SET x = 1 /* correlation_id=abc-123 */ WHERE id = 2 -- X-Request-Id: r9\n";
        let c = extract(sql, &keys()).unwrap();
        assert_eq!(c.id.as_deref(), Some("abc-123"));
        assert_eq!(c.tags["x_request_id"], "r9");
    }

    #[test]
    fn configured_key_order_decides_the_id() {
        let sql = "/* request_id=first, correlation_id=second */ SELECT 1";
        let c = extract(
            sql,
            &["request_id".to_string(), "correlation_id".to_string()],
        )
        .unwrap();
        assert_eq!(c.id.as_deref(), Some("first"));
        let c = extract(sql, &keys()).unwrap();
        assert_eq!(c.id.as_deref(), Some("second"));
    }

    #[test]
    fn comments_inside_literals_and_agent_tag_are_ignored() {
        assert_eq!(extract("SELECT '/* correlation_id=no */'", &keys()), None);
        assert_eq!(extract("/* postgres-agent */ SELECT 1", &keys()), None);
        assert_eq!(extract("SELECT 1", &keys()), None);
        let c = extract("/* team=db */ SELECT 1", &keys()).unwrap();
        assert_eq!(c.id, None);
        assert_eq!(c.tags["team"], "db");
    }

    #[test]
    fn truncated_comment_still_yields_complete_pairs() {
        let c = extract("SELECT 1 /* correlation_id='abc', request_id='de", &keys()).unwrap();
        assert_eq!(c.id.as_deref(), Some("abc"));
    }

    #[test]
    fn invalid_traceparent_gives_no_trace_id() {
        let c = extract("/*traceparent='00-0000-zz-01'*/ SELECT 1", &keys()).unwrap();
        assert_eq!(c.trace_id, None);
        assert_eq!(c.id, None);
    }

    /// The default `correlation.keys`.
    fn default_keys() -> Vec<String> {
        crate::config::keys::spec("correlation", "keys")
            .unwrap()
            .default
            .split(',')
            .map(String::from)
            .collect()
    }

    #[test]
    fn bitville_php_agent_comment_is_the_id_by_default() {
        let id = "550e8400-e29b-41d4-a716-446655440000";
        let sql = format!("/* correlation:{id} */ SELECT * FROM orders WHERE id = 1");
        let c = extract(&sql, &default_keys()).unwrap();
        assert_eq!(c.id.as_deref(), Some(id));
        // As PHP's preg_match allows it: spaces inside the comment, upper-case hex.
        let c = extract("SELECT 1 /*correlation:ABC-12*/", &default_keys()).unwrap();
        assert_eq!(c.id.as_deref(), Some("ABC-12"));
    }

    #[test]
    fn bitville_application_name_is_the_id_unless_a_comment_says_otherwise() {
        let keys = default_keys();
        let without_app = self::keys();
        let app = "bitville-550e8400-e29b-41d4-a716-446655440000";
        let c = extract_from(Some("SELECT 1"), Some(app), &keys).unwrap();
        assert_eq!(
            c.id.as_deref(),
            Some("550e8400-e29b-41d4-a716-446655440000")
        );
        let c = extract_from(None, Some(app), &keys).unwrap();
        assert!(c.id.is_some());
        let c = extract_from(Some("/* correlation:abc */ SELECT 1"), Some(app), &keys).unwrap();
        assert_eq!(c.id.as_deref(), Some("abc"));
        for not_an_id in [
            crate::identity::APPLICATION_NAME,
            "bitville-monitor",
            "bitville-",
            "bitville-a b",
            "bitville-550e8400-e29b-41d4-a716-44665544000",
            "bitville-550e8400xe29b-41d4-a716-446655440000",
            "bitville-fallback-5f1a2b3c4d5e6.12345678",
            "psql",
            "xbitville-abc",
        ] {
            assert_eq!(
                extract_from(None, Some(not_an_id), &keys),
                None,
                "{not_an_id}"
            );
        }
        // Without the pseudo-key, application_name is not read.
        assert_eq!(extract_from(None, Some(app), &without_app), None);
    }

    #[test]
    fn correlation_comment_needs_the_php_pattern_unless_any_shape() {
        let keys = default_keys();
        let c = extract("/* correlation:monitor */ SELECT 1", &keys).unwrap();
        assert_eq!(c.id, None);
        assert_eq!(c.tags["correlation"], "monitor", "the tag is kept");
        // A later key still counts when `correlation` does not.
        let c = extract("/* correlation:x.y, request_id=r1 */ SELECT 1", &keys).unwrap();
        assert_eq!(c.id.as_deref(), Some("r1"));
        let any = keys_with_shape(keys, "any");
        let c = extract("/* correlation:monitor */ SELECT 1", &any).unwrap();
        assert_eq!(c.id.as_deref(), Some("monitor"));
    }

    #[test]
    fn any_shape_accepts_other_bitville_names_but_never_our_own() {
        let keys = keys_with_shape(default_keys(), "any");
        // PHP's fallback id: 'fallback-' . uniqid('', true).
        let c = extract_from(
            None,
            Some("bitville-fallback-5f1a2b3c4d5e6.12345678"),
            &keys,
        );
        assert_eq!(
            c.unwrap().id.as_deref(),
            Some("fallback-5f1a2b3c4d5e6.12345678")
        );
        let c = extract_from(None, Some("bitville-monitor"), &keys);
        assert_eq!(c.unwrap().id.as_deref(), Some("monitor"));
        assert_eq!(
            extract_from(None, Some(crate::identity::APPLICATION_NAME), &keys),
            None
        );
        assert_eq!(keys_with_shape(keys.clone(), "php"), default_keys());
        assert_eq!(keys_with_shape(keys.clone(), "any"), keys);
    }

    #[test]
    fn uuid_shape() {
        assert!(is_uuid("550E8400-e29b-41d4-a716-446655440000"));
        assert!(!is_uuid("550e8400-e29b-41d4-a716-4466554400000"));
        assert!(!is_uuid("550e8400e29b-41d4-a716-4466554400000"));
        assert!(!is_uuid("g50e8400-e29b-41d4-a716-446655440000"));
    }

    proptest::proptest! {
        #[test]
        fn never_panics(s in "\\PC*") {
            let _ = extract(&s, &keys());
        }

        #[test]
        fn never_panics_on_comment_shaped_input(s in "(/\\*|\\*/|--|'|\"|%[0-9a-fA-F]?|[a-z_]{1,4}|[=:,\\s]|\\\\|é){0,40}") {
            let _ = extract(&s, &keys());
        }
    }
}
