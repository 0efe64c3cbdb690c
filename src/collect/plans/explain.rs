//! EXPLAIN on demand (`[plans] explain = true`, PostgreSQL 16+): the plan of a top statement that
//! auto_explain has not logged, from `EXPLAIN (GENERIC_PLAN, FORMAT JSON)` of its normalised text.
//!
//! Safety (docs/plans.md): the text must parse, with the `sqlparser` crate's PostgreSQL dialect, as
//! exactly one SELECT, INSERT, UPDATE, DELETE or WITH statement ([`plannable`]); anything else (a
//! `DO` block, several statements, DDL, `COPY`, `CALL`, `EXPLAIN ANALYZE` itself) is refused before
//! anything reaches the server. EXPLAIN without ANALYZE plans and never executes, so a function
//! called through SELECT does not run (only immutable functions may be folded at plan time, and a
//! read-only transaction refuses their writes). It runs in `BEGIN READ ONLY` with `SET LOCAL`
//! `statement_timeout` and `lock_timeout` (planning takes locks on the tables), and the transaction
//! is always rolled back; a session whose rollback fails is discarded.
//!
//! `sqlparser` rather than `pg_query`: pure Rust, no libclang (pg_query needs it and about 105 s more
//! build); it reads the `$n` placeholders of normalised texts. What it cannot parse is not planned.

use std::time::Duration;

use serde_json::Value;
use sqlparser::ast::Statement;
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::parser::Parser;

use super::{hex, PlansCollector, Sighting, Source};
use crate::batch::BatchKind;
use crate::collect::Context;
use crate::db::Session;

/// Why a text is not planned.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("not parsed as SQL: {0}")]
    Unparsed(String),
    #[error("{0} statements in one text")]
    Several(usize),
    #[error("not a SELECT, INSERT, UPDATE, DELETE or WITH statement")]
    NotDml,
}

/// Whether `sql` is exactly one SELECT/INSERT/UPDATE/DELETE/WITH statement.
pub fn plannable(sql: &str) -> Result<(), Refused> {
    let statements = Parser::parse_sql(&PostgreSqlDialect {}, sql)
        .map_err(|e| Refused::Unparsed(e.to_string()))?;
    match statements.as_slice() {
        [one] => match one {
            Statement::Query(_)
            | Statement::Insert(_)
            | Statement::Update { .. }
            | Statement::Delete(_) => Ok(()),
            _ => Err(Refused::NotDml),
        },
        several => Err(Refused::Several(several.len())),
    }
}

/// Plans `sql` with `EXPLAIN (GENERIC_PLAN, FORMAT JSON)` in a read-only transaction that is
/// rolled back; returns the plan (`{"Plan": ...}`).
pub async fn explain(session: &mut Session, sql: &str, timeout: Duration) -> Result<Value, String> {
    plannable(sql).map_err(|e| e.to_string())?;
    let lock = (timeout / 5).max(Duration::from_millis(1));
    let begin = format!(
        "BEGIN READ ONLY; SET LOCAL statement_timeout = {}; SET LOCAL lock_timeout = {}",
        timeout.as_millis(),
        lock.as_millis()
    );
    session
        .simple("explain_begin", &begin)
        .await
        .map_err(|e| e.to_string())?;
    let text = format!(
        "EXPLAIN {} (GENERIC_PLAN, FORMAT JSON) {sql}",
        crate::identity::QUERY_TAG
    );
    let result = session.simple_rows("explain", &text).await;
    if session
        .simple("explain_rollback", "ROLLBACK")
        .await
        .is_err()
    {
        session.discard();
    }
    let rows = result.map_err(|e| e.to_string())?;
    let json = rows.first().ok_or("EXPLAIN returned no row")?;
    let v: Value = serde_json::from_str(json).map_err(|e| e.to_string())?;
    // FORMAT JSON: an array of one object holding "Plan".
    match v {
        Value::Array(mut items) if !items.is_empty() => Ok(items.swap_remove(0)),
        _ => Err("EXPLAIN's output is not a JSON array".into()),
    }
}

/// A statement EXPLAIN on demand may plan: from this cycle's pg_statements records.
#[derive(Debug, Clone)]
pub struct Candidate {
    pub fingerprint: u64,
    pub queryid: Option<i64>,
    pub dbname: Option<String>,
    pub query: String,
    pub total_ms: f64,
}

/// The statements of this cycle's pg_statements batch with a complete text, most total time
/// (execution plus planning) first. Read back from the records by name: the one place the plans
/// collector reads another collector's output.
pub fn candidates(batches: &[crate::batch::Batch]) -> Vec<Candidate> {
    let mut out: Vec<Candidate> = batches
        .iter()
        .filter(|b| b.kind == BatchKind::PgStatements)
        .flat_map(|b| b.data.iter())
        .filter_map(|r| {
            let v = r.to_value().ok()?;
            if v.get("query_truncated").and_then(Value::as_bool) != Some(false) {
                return None;
            }
            let ms = |k: &str| v.get(k).and_then(Value::as_f64).unwrap_or(0.0);
            Some(Candidate {
                fingerprint: u64::from_str_radix(v.get("fingerprint")?.as_str()?, 16).ok()?,
                queryid: v
                    .get("queryid")
                    .and_then(Value::as_str)
                    .and_then(|q| q.parse().ok()),
                dbname: v.get("dbname").and_then(Value::as_str).map(str::to_string),
                query: v.get("query")?.as_str()?.to_string(),
                total_ms: ms("total_exec_time_ms") + ms("total_plan_time_ms"),
            })
        })
        .collect();
    out.sort_by(|a, b| b.total_ms.total_cmp(&a.total_ms));
    out
}

/// A statement is explained again at most this often, and not when a plan was seen this recently.
const EXPLAIN_EVERY: std::time::Duration = std::time::Duration::from_secs(3600);

impl PlansCollector {
    /// EXPLAIN on demand: plans of this cycle's top statements of the agent's database that have
    /// no plan seen and no attempt in the last hour, at most `explain_per_cycle`; with the server
    /// time they took (None when none ran).
    /// Whether `c` may be explained now: of the agent's database, not the agent's own, not tried
    /// and with no plan seen in the last hour.
    pub(super) fn eligible(
        &self,
        c: &Candidate,
        settings: &crate::collect::CollectSettings,
    ) -> bool {
        let recent_ms = crate::clock::now_ms() - EXPLAIN_EVERY.as_millis() as i64;
        c.dbname.as_deref() == Some(settings.database.as_str())
            && !self.explained.contains_key(&c.fingerprint)
            && !crate::identity::is_agent_text(&c.query)
            && !self
                .store
                .statement(c.fingerprint)
                .is_some_and(|st| st.plans.iter().any(|p| p.last_seen >= recent_ms))
    }

    pub(super) async fn explain_top(
        &mut self,
        ctx: &mut Context<'_>,
    ) -> (Vec<Sighting>, Option<f64>) {
        let settings = ctx.settings;
        let candidates = std::mem::take(&mut self.candidates);
        if !settings.plans.explain || candidates.is_empty() {
            return (Vec::new(), None);
        }
        let (Some(session), Some(server)) = (ctx.session.as_deref_mut(), ctx.server) else {
            return (Vec::new(), None);
        };
        if server.info.version_num < 160_000 {
            if !self.said_needs_16 {
                self.said_needs_16 = true;
                tracing::info!(
                    version_num = server.info.version_num,
                    "plans.explain needs PostgreSQL 16 (EXPLAIN GENERIC_PLAN plans a text with $n \
                     parameters); only auto_explain plans are collected"
                );
            }
            return (Vec::new(), None);
        }
        let now = std::time::Instant::now();
        self.explained
            .retain(|_, at| now.saturating_duration_since(*at) < EXPLAIN_EVERY);
        let (mut out, mut spent, mut tried) = (Vec::new(), 0.0, 0);
        for c in candidates {
            if tried >= settings.plans.explain_per_cycle {
                break;
            }
            if !self.eligible(&c, settings) {
                continue;
            }
            tried += 1;
            self.explained.insert(c.fingerprint, now);
            let started = std::time::Instant::now();
            let result = explain(session, &c.query, settings.plans.explain_timeout).await;
            spent += started.elapsed().as_secs_f64() * 1000.0;
            let mut plan = match result {
                Ok(plan) => plan,
                Err(why) => {
                    tracing::debug!(fingerprint = %hex(c.fingerprint), error = %why,
                        "EXPLAIN on demand refused or failed; not tried again for an hour");
                    continue;
                }
            };
            if let Value::Object(m) = &mut plan {
                m.insert("Query Text".into(), Value::String(c.query.clone()));
            }
            if settings.privacy.obfuscate_queries {
                let mut counts = crate::privacy::PrivacyCounts::default();
                crate::privacy::plan::mask_plan_tree(
                    &mut plan,
                    crate::privacy::ObfuscateOptions::default(),
                    &mut counts,
                );
                crate::privacy::count(ctx.counters, counts);
            }
            let Some(plan_id) =
                pga_logparse::plan::plan_id(&plan).and_then(|id| u64::from_str_radix(&id, 16).ok())
            else {
                continue;
            };
            out.push(Sighting {
                fingerprint: c.fingerprint,
                queryid: c.queryid,
                plan_id,
                at_ms: crate::clock::now_ms(),
                duration_ms: None,
                dbname: c.dbname,
                tree: plan,
                source: Source::Explain,
            });
        }
        (out, (tried > 0).then_some(spent))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_single_dml_is_plannable() {
        for ok in [
            "SELECT count(*) FROM t WHERE v = $1",
            "select * from t where id in ($1, $2) order by 1 limit $3",
            "WITH x AS (SELECT $1::int AS a) SELECT * FROM x",
            "INSERT INTO t (a) VALUES ($1)",
            "UPDATE t SET a = $1 WHERE id = $2",
            "DELETE FROM t WHERE id = $1",
            "SELECT side_effect()",
        ] {
            assert_eq!(plannable(ok), Ok(()), "{ok}");
        }
        // Refused as not DML, or as not parsed (sqlparser does not know DO): refused either way.
        for bad in [
            "DO $$ BEGIN PERFORM 1; END $$",
            "CREATE TABLE x (a int)",
            "EXPLAIN ANALYZE SELECT 1",
            "COPY t TO STDOUT",
            "CALL p()",
            "VACUUM t",
            "SELECT 'cut",
        ] {
            let r = plannable(bad);
            assert!(
                matches!(r, Err(Refused::NotDml | Refused::Unparsed(_))),
                "{bad}: {r:?}"
            );
        }
        assert_eq!(
            plannable("SELECT 1; DELETE FROM t"),
            Err(Refused::Several(2))
        );
    }
}
