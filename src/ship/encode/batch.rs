//! The `batch` protocol: a [`Batch`] becomes what the outbox stores as its JSON envelope,
//! gzip-compressed, split into parts when the compressed body would exceed the per-request limit.
//!
//! Splitting halves `data` until every part fits. Each part is a complete envelope with its own
//! `batch_id` (so the listener's idempotency still works per request), its own `count` and
//! `with_correlation`, and three extra fields linking it to the original: `part_of` (the original
//! `batch_id`), `part` (1-based) and `parts`. A batch that fits is stored unchanged, without them.
//! A single record too large on its own is stored as a one-record part rather than dropped; the
//! listener decides (a 413 makes it a counted dead letter).

use std::io::Write;

use flate2::write::GzEncoder;
use flate2::Compression;
use serde_json::Value;
use uuid::Uuid;

use crate::batch::{Batch, Record};
use crate::config::Protocol;
use crate::ship::outbox::NewBatch;

/// Largest compressed request body the agent sends (before splitting).
pub const MAX_BODY_BYTES: usize = 8 * 1024 * 1024;

/// Room left for the part fields when deciding whether a part fits.
const PART_FIELDS_SLACK: usize = 256;

#[derive(Debug, thiserror::Error)]
pub enum PrepareError {
    #[error("cannot serialize batch {batch_id} ({kind}): {source}")]
    Json {
        batch_id: Uuid,
        kind: String,
        source: serde_json::Error,
    },
    #[error("cannot compress batch {batch_id}: {source}")]
    Gzip {
        batch_id: Uuid,
        source: std::io::Error,
    },
}

/// gzip of `bytes` at level 1. Compressing every batch at the default level 6 was 6% of the
/// agent's CPU in the side-by-side profile (issue 22); level 1 takes about a third of that for
/// bodies about a third larger (13x against 17x on one cycle's batches, docs/cost.md): CPU on
/// the database host is dearer than bytes to the listener.
pub fn gzip(bytes: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut enc = GzEncoder::new(
        Vec::with_capacity(bytes.len() / 5 + 64),
        Compression::fast(),
    );
    enc.write_all(bytes)?;
    enc.finish()
}

/// Serializes and compresses `batch`, splitting it so each body is at most `max_body` bytes on the
/// wire: the gzip body when `gzipped` (`listener.compress`), else the JSON. A part of one record
/// still over the limit has its longest texts trimmed ([`super::trim`]).
pub fn prepare(
    batch: &Batch,
    max_body: usize,
    gzipped: bool,
) -> Result<Vec<NewBatch>, PrepareError> {
    let size = |b: &Batch| -> Result<usize, PrepareError> {
        if gzipped {
            encode(b).map(|gz| gz.len())
        } else {
            json(b).map(|j| j.len())
        }
    };
    let whole = encode(batch)?;
    let whole_size = if gzipped { whole.len() } else { size(batch)? };
    if whole_size <= max_body {
        return Ok(vec![new_batch(batch, whole)]);
    }
    drop(whole);
    let limit = max_body.saturating_sub(PART_FIELDS_SLACK);
    let mut ranges = Vec::new();
    split_by(0, batch.data.len(), limit, &mut ranges, &mut |lo, hi| {
        size(&sub_batch(batch, lo, hi))
    })?;
    let parts = ranges.len();
    if parts > 1 {
        tracing::info!(event = "batch_split", batch_id = %batch.batch_id, kind = %batch.kind,
            records = batch.data.len(), bytes = whole_size, parts,
            "batch over the request size limit split into parts");
    }
    ranges
        .into_iter()
        .enumerate()
        .map(|(i, (lo, hi))| {
            let mut part = sub_batch(batch, lo, hi);
            if parts > 1 {
                part.extra
                    .insert("part_of".into(), Value::String(batch.batch_id.to_string()));
                part.extra.insert("part".into(), Value::from(i + 1));
                part.extra.insert("parts".into(), Value::from(parts));
            } else {
                part.batch_id = batch.batch_id;
            }
            if part.data.len() == 1 && size(&part)? > max_body {
                let mut fits = |r: &Record| {
                    part.data[0] = r.clone();
                    size(&part).map(|n| n <= max_body)
                };
                let original = batch.data[lo].clone();
                let trimmed = super::trim::trim_to_fit(&original, &mut fits)?;
                tracing::warn!(event = "record_trimmed", batch_id = %batch.batch_id,
                    kind = %batch.kind, max_body_bytes = max_body,
                    "a record over listener.max_body_bytes on its own: its longest texts were cut \
                     (marked truncated, with omitted_bytes)");
                part.data[0] = trimmed;
            }
            let body = encode(&part)?;
            Ok(new_batch(&part, body))
        })
        .collect()
}

/// Appends to `out` the ranges of `lo..hi`, halved until `size(range)` is at most `limit` or the
/// range is one item.
pub(super) fn split_by<E>(
    lo: usize,
    hi: usize,
    limit: usize,
    out: &mut Vec<(usize, usize)>,
    size: &mut impl FnMut(usize, usize) -> Result<usize, E>,
) -> Result<(), E> {
    if hi - lo <= 1 || size(lo, hi)? <= limit {
        out.push((lo, hi));
        return Ok(());
    }
    let mid = lo + (hi - lo) / 2;
    split_by(lo, mid, limit, out, size)?;
    split_by(mid, hi, limit, out, size)
}

/// Records `lo..hi` of `batch` under a new batch_id. The envelope is copied field by field: cloning
/// the whole batch would copy every record of an oversized batch once per part.
pub(super) fn sub_batch(batch: &Batch, lo: usize, hi: usize) -> Batch {
    let data = batch.data[lo..hi].to_vec();
    Batch {
        schema_version: batch.schema_version,
        batch_id: Uuid::now_v7(),
        project_id: batch.project_id.clone(),
        kind: batch.kind,
        agent: batch.agent.clone(),
        server: batch.server.clone(),
        collected_at: batch.collected_at.clone(),
        interval_s: batch.interval_s,
        count: data.len(),
        with_correlation: Record::correlated(&data),
        extra: batch.extra.clone(),
        data,
        // Parts are batch-protocol bodies, which do not carry the correlated statements.
        correlated: Vec::new(),
    }
}

fn json(batch: &Batch) -> Result<Vec<u8>, PrepareError> {
    serde_json::to_vec(batch).map_err(|source| PrepareError::Json {
        batch_id: batch.batch_id,
        kind: batch.kind.to_string(),
        source,
    })
}

fn encode(batch: &Batch) -> Result<Vec<u8>, PrepareError> {
    let json = json(batch)?;
    gzip(&json).map_err(|source| PrepareError::Gzip {
        batch_id: batch.batch_id,
        source,
    })
}

fn new_batch(batch: &Batch, body: Vec<u8>) -> NewBatch {
    NewBatch {
        batch_id: batch.batch_id,
        kind: batch.kind,
        collected_at: batch.collected_at.clone(),
        body,
        protocol: Protocol::Batch,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::{AgentInfo, BatchKind};
    use flate2::read::GzDecoder;
    use std::io::Read;

    fn batch(records: usize) -> Batch {
        // Distinct pseudo-random text per record so compression cannot hide the size.
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let data = (0..records)
            .map(|i| {
                let text: String = (0..200)
                    .map(|_| {
                        x ^= x << 13;
                        x ^= x >> 7;
                        x ^= x << 17;
                        char::from(b'a' + (x % 26) as u8)
                    })
                    .collect();
                Record::new(&serde_json::json!({"i": i, "text": text, "correlation": if i % 2 == 0 { Value::Null } else { Value::from("c") }})).unwrap()
            })
            .collect();
        Batch::new(BatchKind::PgLogs, "p", AgentInfo::new("h"), None, 60, data)
    }

    fn decode(body: &[u8]) -> Batch {
        let mut s = String::new();
        GzDecoder::new(body).read_to_string(&mut s).unwrap();
        serde_json::from_str(&s).unwrap()
    }

    #[test]
    fn small_batch_is_one_unchanged_part() {
        let b = batch(3);
        let parts = prepare(&b, MAX_BODY_BYTES, true).unwrap();
        assert_eq!(parts.len(), 1);
        assert_eq!(parts[0].batch_id, b.batch_id);
        assert_eq!(decode(&parts[0].body), b);
    }

    #[test]
    fn large_batch_is_split_into_linked_parts_that_keep_every_record() {
        let b = batch(400);
        let limit = 16 * 1024;
        let parts = prepare(&b, limit, true).unwrap();
        assert!(parts.len() > 2, "{} parts", parts.len());
        let mut records = Vec::new();
        let mut correlated = 0;
        for (i, p) in parts.iter().enumerate() {
            assert!(p.body.len() <= limit, "part {i} is {} bytes", p.body.len());
            let d = decode(&p.body);
            assert_eq!(d.batch_id, p.batch_id);
            assert_ne!(d.batch_id, b.batch_id);
            assert_eq!(d.extra["part_of"], Value::String(b.batch_id.to_string()));
            assert_eq!(d.extra["part"], Value::from(i + 1));
            assert_eq!(d.extra["parts"], Value::from(parts.len()));
            assert_eq!(d.count, d.data.len());
            correlated += d.with_correlation;
            records.extend(d.data);
        }
        assert_eq!(records, b.data, "every record once, in order");
        assert_eq!(correlated, b.with_correlation);
    }

    #[test]
    fn a_single_oversized_record_is_kept_with_its_text_trimmed() {
        let b = batch(1);
        let parts = prepare(&b, 10, true).unwrap();
        assert_eq!(parts.len(), 1);
        let d = decode(&parts[0].body);
        assert_eq!(d.batch_id, b.batch_id);
        let v = d.data[0].to_value().unwrap();
        assert_eq!(v["i"], 0);
        assert_eq!(v["truncated"], true);
        assert!(v["omitted_bytes"].as_u64().unwrap() > 0);
    }

    #[test]
    fn uncompressed_bodies_are_measured_as_json() {
        let b = batch(100);
        let limit = 8 * 1024;
        let parts = prepare(&b, limit, false).unwrap();
        assert!(parts.len() > 2, "{} parts", parts.len());
        let mut records = Vec::new();
        for p in &parts {
            let mut s = String::new();
            GzDecoder::new(&p.body[..]).read_to_string(&mut s).unwrap();
            assert!(s.len() <= limit, "{} bytes of JSON", s.len());
            records.extend(decode(&p.body).data);
        }
        assert_eq!(records, b.data);
    }
}
