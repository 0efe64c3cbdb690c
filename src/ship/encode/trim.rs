//! A single record too large for one request on its own (`listener.max_body_bytes`): its longest
//! texts are cut, one at a time, until the request fits. The record then says so with
//! `"truncated": true` and `"omitted_bytes"` (how many bytes of text were cut), so nothing is cut
//! silently. Splitting an aggregate into parts ([`super::batch::split_by`]) comes first; this is for
//! the one record a part cannot split further.

use serde_json::Value;

use crate::batch::Record;

/// Texts are not cut below this many bytes: a record whose overhead alone exceeds the limit is sent
/// as it is (and may be refused by the listener, which makes it a counted dead letter).
const MIN_TEXT: usize = 64;
/// Cuts tried at most (each halves the longest text left).
const MAX_CUTS: usize = 64;

/// `record` with its longest texts halved until `fits` accepts it; the last attempt when nothing
/// more can be cut. The original when it is not a JSON object or already fits.
pub fn trim_to_fit<E>(
    record: &Record,
    fits: &mut impl FnMut(&Record) -> Result<bool, E>,
) -> Result<Record, E> {
    let Ok(mut value) = record.to_value() else {
        return Ok(record.clone());
    };
    if !value.is_object() || fits(record)? {
        return Ok(record.clone());
    }
    let mut omitted: u64 = 0;
    let mut best = record.clone();
    for _ in 0..MAX_CUTS {
        let Some(pointer) = longest_text(&value, String::new()).map(|(p, _)| p) else {
            break;
        };
        let Some(Value::String(text)) = value.pointer_mut(&pointer) else {
            break;
        };
        if text.len() <= MIN_TEXT {
            break;
        }
        let mut keep = text.len() / 2;
        while !text.is_char_boundary(keep) {
            keep -= 1;
        }
        omitted += (text.len() - keep) as u64;
        text.truncate(keep);
        if let Value::Object(fields) = &mut value {
            fields.insert("truncated".into(), Value::Bool(true));
            fields.insert("omitted_bytes".into(), Value::from(omitted));
        }
        let Ok(cut) = Record::new(&value) else {
            break;
        };
        best = cut;
        if fits(&best)? {
            break;
        }
    }
    Ok(best)
}

/// JSON pointer and length of the longest string in `v`.
fn longest_text(v: &Value, at: String) -> Option<(String, usize)> {
    let better = |a: Option<(String, usize)>, b: Option<(String, usize)>| match (a, b) {
        (Some(a), Some(b)) => Some(if b.1 > a.1 { b } else { a }),
        (a, b) => a.or(b),
    };
    match v {
        Value::String(s) => Some((at, s.len())),
        Value::Array(items) => items.iter().enumerate().fold(None, |best, (i, item)| {
            better(best, longest_text(item, format!("{at}/{i}")))
        }),
        Value::Object(fields) => fields.iter().fold(None, |best, (k, item)| {
            let key = k.replace('~', "~0").replace('/', "~1");
            better(best, longest_text(item, format!("{at}/{key}")))
        }),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_longest_texts_are_cut_until_it_fits_and_it_says_so() {
        let r = Record::new(
            &json!({"pid": 1, "query": "x".repeat(10_000), "state": "active",
            "nested": {"a/b": "y".repeat(3_000)}}),
        )
        .unwrap();
        let trimmed =
            trim_to_fit(&r, &mut |r: &Record| Ok::<_, ()>(r.json().len() <= 2_000)).unwrap();
        assert!(trimmed.json().len() <= 2_000, "{}", trimmed.json().len());
        let v = trimmed.to_value().unwrap();
        assert_eq!(v["truncated"], true);
        assert_eq!(v["pid"], 1);
        assert_eq!(v["state"], "active");
        let kept = v["query"].as_str().unwrap().len() + v["nested"]["a/b"].as_str().unwrap().len();
        assert_eq!(v["omitted_bytes"].as_u64().unwrap() as usize, 13_000 - kept);
    }

    #[test]
    fn a_record_that_fits_is_unchanged() {
        let r = Record::new(&json!({"query": "select 1"})).unwrap();
        let same = trim_to_fit(&r, &mut |_: &Record| Ok::<_, ()>(true)).unwrap();
        assert_eq!(same, r);
    }

    #[test]
    fn multibyte_text_is_cut_on_a_character_boundary() {
        let r = Record::new(&json!({"query": "é".repeat(5_000)})).unwrap();
        let t = trim_to_fit(&r, &mut |r: &Record| Ok::<_, ()>(r.json().len() <= 1_000)).unwrap();
        assert!(t.json().len() <= 1_000);
    }
}
