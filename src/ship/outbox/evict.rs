//! Making room in the outbox at the size cap: dead letters go first (they can never be delivered),
//! then the oldest batches of any type. Every removal is counted in the same transaction.

use rusqlite::{Connection, OptionalExtension, Transaction};
use uuid::Uuid;

use super::stats::bump;
use super::EvictionReport;
use crate::batch::BatchKind;

/// Deletes dead letters, then the oldest batches, until `cost` more bytes fit in `budget`.
/// Returns what was removed and the new charged total.
pub(super) fn make_room(
    tx: &Transaction<'_>,
    mut charged: u64,
    cost: u64,
    budget: u64,
) -> rusqlite::Result<(EvictionReport, u64)> {
    let mut report = EvictionReport::default();
    while charged + cost > budget {
        if let Some(freed) = drop_oldest_dead_letter(tx)? {
            charged = charged.saturating_sub(freed);
            report.dead_letters_dropped += 1;
            continue;
        }
        let oldest: Option<(String, String, i64)> = tx
            .query_row(
                "DELETE FROM outbox WHERE seq = (SELECT min(seq) FROM outbox)
                 RETURNING kind, batch_id, charge",
                [],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()?;
        let Some((kind, id, freed)) = oldest else {
            // Nothing left to evict; the mirror was stale. Trust the now-empty tables.
            charged = 0;
            break;
        };
        charged = charged.saturating_sub(freed as u64);
        bump(tx, &format!("evicted.{kind}"), 1)?;
        if let (Some(kind), Ok(id)) = (BatchKind::parse(&kind), Uuid::parse_str(&id)) {
            report.evicted.push((kind, id));
        }
    }
    Ok((report, charged))
}

pub(super) fn drop_oldest_dead_letter(tx: &Connection) -> rusqlite::Result<Option<u64>> {
    let freed: Option<i64> = tx
        .query_row(
            "DELETE FROM dead_letters WHERE seq = (SELECT min(seq) FROM dead_letters)
             RETURNING charge",
            [],
            |r| r.get(0),
        )
        .optional()?;
    if freed.is_some() {
        bump(tx, "dead_letters_dropped", 1)?;
    }
    Ok(freed.map(|c| c as u64))
}
