//! Query texts of pg_stat_statements entries, fetched only for entries being reported and only when
//! not already known, then cached by queryid. The server still reads its whole text file for any
//! `pg_stat_statements(true)` call, so the saving is in how often that happens (rarely, once texts are
//! cached) and in what crosses the wire (only the requested texts, cut to the length limit).
//!
//! The cache also remembers which queryids are the agent's own statements (their text starts with
//! the agent's tag, see [`is_agent_text`]), so those are dropped before any text is fetched in later cycles.

use std::collections::HashMap;

use tokio_postgres::types::Type;

use super::super::{col, CollectError};
use crate::db::Session;
use crate::identity::is_agent_text;
#[cfg(test)]
use crate::identity::QUERY_TAG;

/// Texts beyond this many bytes in total empty the cache (it refills with what is reported). Twice
/// the most one cycle can report at the defaults (500 entries of up to 4,096 bytes).
const MAX_CACHE_BYTES: usize = 4 * 1024 * 1024;

#[derive(Debug, Clone)]
enum Known {
    Text(String),
    Agent,
}

/// queryid -> text. A queryid is a hash of the statement's structure, including relation OIDs, so the
/// same id in two databases is, in practice, the same text.
#[derive(Debug, Default)]
pub struct TextCache {
    known: HashMap<i64, Known>,
    bytes: usize,
}

/// What the cache says about one queryid.
pub enum Lookup<'a> {
    Text(&'a str),
    Agent,
    Unknown,
}

impl TextCache {
    pub fn lookup(&self, queryid: i64) -> Lookup<'_> {
        match self.known.get(&queryid) {
            Some(Known::Text(t)) => Lookup::Text(t),
            Some(Known::Agent) => Lookup::Agent,
            None => Lookup::Unknown,
        }
    }

    pub fn is_agent(&self, queryid: i64) -> bool {
        matches!(self.known.get(&queryid), Some(Known::Agent))
    }

    fn insert(&mut self, queryid: i64, text: String) {
        if self.bytes + text.len() > MAX_CACHE_BYTES {
            self.known.clear();
            self.bytes = 0;
        }
        let known = if is_agent_text(&text) {
            Known::Agent
        } else {
            self.bytes += text.len();
            Known::Text(text)
        };
        self.known.insert(queryid, known);
    }

    /// Fetches the texts of `queryids` (which should all be unknown) in one query. Ids the server no
    /// longer has stay unknown.
    pub async fn fetch(
        &mut self,
        session: &mut Session,
        function: &str,
        queryids: &[i64],
        max_chars: i32,
    ) -> Result<(), CollectError> {
        const QUERY: &str = "statement_texts";
        if queryids.is_empty() {
            return Ok(());
        }
        let sql = format!(
            "SELECT /* postgres-agent */ DISTINCT ON (queryid) queryid, left(query, $2) AS query \
             FROM {function}(true) WHERE queryid = ANY($1) ORDER BY queryid"
        );
        let ids: Vec<i64> = queryids.to_vec();
        let rows = session
            .query(
                QUERY,
                &sql,
                &[(&ids, Type::INT8_ARRAY), (&max_chars, Type::INT4)],
            )
            .await?;
        for row in &rows {
            let id: i64 = col(row, QUERY, "queryid")?;
            if let Some(text) = col::<Option<String>>(row, QUERY, "query")? {
                self.insert(id, text);
            }
        }
        Ok(())
    }
}

/// Database and role names for the given OIDs, in one query.
pub async fn names(
    session: &mut Session,
    dbids: &[u32],
    userids: &[u32],
) -> Result<(HashMap<u32, String>, HashMap<u32, String>), CollectError> {
    const QUERY: &str = "statement_names";
    let rows = session
        .query(
            QUERY,
            "SELECT /* postgres-agent */ 'd' AS kind, oid, datname::text AS name FROM pg_database WHERE oid = ANY($1) \
             UNION ALL \
             SELECT 'r', oid, rolname::text FROM pg_roles WHERE oid = ANY($2)",
            &[(&dbids, Type::OID_ARRAY), (&userids, Type::OID_ARRAY)],
        )
        .await?;
    let (mut dbs, mut roles) = (HashMap::new(), HashMap::new());
    for row in &rows {
        let kind: String = col(row, QUERY, "kind")?;
        let oid: u32 = col(row, QUERY, "oid")?;
        let name: String = col(row, QUERY, "name")?;
        if kind == "d" {
            dbs.insert(oid, name);
        } else {
            roles.insert(oid, name);
        }
    }
    Ok((dbs, roles))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agent_texts_are_remembered_without_their_text() {
        let mut c = TextCache::default();
        c.insert(1, format!("{QUERY_TAG} SELECT 1"));
        c.insert(2, "SELECT $1".into());
        assert!(c.is_agent(1));
        assert!(matches!(c.lookup(2), Lookup::Text("SELECT $1")));
        assert!(matches!(c.lookup(3), Lookup::Unknown));
        assert_eq!(c.bytes, "SELECT $1".len());
    }
}
