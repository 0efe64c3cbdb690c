//! The `health` line of `check`: which of the views and functions the health collectors read
//! (`collect::health`, docs/health.md) the role may read on this server version, the fix for each
//! it may not, and how many databases a table pass would visit. Never a failure: the agent runs
//! without any of them (each missing one is a warning once at run time).

use super::CheckResult;
use crate::config::Config;
use crate::db::Session;

/// Everything the health collectors read; views a server version lacks are named as such.
const VIEWS: &[&str] = &[
    "pg_stat_database",
    "pg_database",
    "pg_stat_bgwriter",
    "pg_stat_checkpointer",
    "pg_stat_wal",
    "pg_stat_io",
    "pg_stat_progress_vacuum",
    "pg_stat_progress_analyze",
    "pg_stat_progress_create_index",
    "pg_stat_progress_cluster",
    "pg_stat_replication",
    "pg_replication_slots",
    "pg_stat_wal_receiver",
    "pg_settings",
    "pg_stat_user_tables",
    "pg_statio_user_tables",
    "pg_stat_user_indexes",
    "pg_statio_user_indexes",
];

const FUNCTIONS: &[&str] = &[
    "pg_current_wal_lsn()",
    "pg_last_wal_replay_lsn()",
    "pg_last_wal_receive_lsn()",
    "pg_wal_lsn_diff(pg_lsn, pg_lsn)",
];

fn sql() -> String {
    let list = |items: &[&str]| {
        items
            .iter()
            .map(|v| format!("'{v}'"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    format!(
        "SELECT v AS name, to_regclass('pg_catalog.' || v) IS NOT NULL AS present, \
         to_regclass('pg_catalog.' || v) IS NOT NULL \
         AND has_table_privilege(('pg_catalog.' || v)::regclass, 'SELECT') AS readable \
         FROM unnest(ARRAY[{}]) v \
         UNION ALL SELECT f, to_regprocedure(f) IS NOT NULL, to_regprocedure(f) IS NOT NULL \
         AND has_function_privilege(to_regprocedure(f), 'EXECUTE') \
         FROM unnest(ARRAY[{}]) f \
         UNION ALL SELECT 'pg_read_all_stats', true, \
         pg_has_role(current_user, 'pg_read_all_stats', 'USAGE') \
         UNION ALL SELECT 'databases:' || count(*) FILTER (WHERE has_database_privilege(datname, \
         'CONNECT')) || '/' || count(*), true, true FROM pg_database \
         WHERE datallowconn AND NOT datistemplate",
        list(VIEWS),
        list(FUNCTIONS)
    )
}

pub(super) async fn check(config: &Config, session: &mut Session) -> CheckResult {
    let name = "health";
    let off = match config.health.enabled {
        true => "",
        false => "[health] enabled = false (the collectors are off); ",
    };
    let sql = sql();
    let rows = match session.query("check_health", &sql, &[]).await {
        Ok(rows) => rows,
        Err(e) => {
            return CheckResult::warn(
                name,
                format!("{off}cannot tell which health views the role reads: {e}"),
                "check the role",
            )
        }
    };
    let user = &config.postgres.user;
    let (mut refused, mut absent, mut databases, mut all_stats) =
        (Vec::new(), Vec::new(), String::new(), true);
    for row in &rows {
        let (item, present, readable): (String, bool, bool) = (
            row.try_get(0).unwrap_or_default(),
            row.try_get(1).unwrap_or(false),
            row.try_get(2).unwrap_or(false),
        );
        if let Some(d) = item.strip_prefix("databases:") {
            databases = d.to_string();
        } else if item == "pg_read_all_stats" {
            all_stats = readable;
        } else if !present {
            absent.push(item);
        } else if !readable {
            refused.push(item);
        }
    }
    let absent = match absent.is_empty() {
        true => String::new(),
        false => format!("; not on this server version: {}", absent.join(", ")),
    };
    let pass = format!("a table pass visits {databases} databases (CONNECT privilege)");
    if refused.is_empty() && all_stats {
        return CheckResult::ok(
            name,
            format!("{off}every health view is readable; {pass}{absent}"),
        );
    }
    let mut fixes = vec![format!("GRANT pg_monitor TO \"{user}\";")];
    for item in &refused {
        fixes.push(match item.contains('(') {
            true => format!("GRANT EXECUTE ON FUNCTION pg_catalog.{item} TO \"{user}\";"),
            false => format!("GRANT SELECT ON pg_catalog.{item} TO \"{user}\";"),
        });
    }
    let mut missing = Vec::new();
    if !refused.is_empty() {
        missing.push(format!(
            "cannot read {} (those sections are left out)",
            refused.join(", ")
        ));
    }
    if !all_stats {
        missing.push(
            "without pg_read_all_stats, replication and progress rows of other roles are hidden"
                .to_string(),
        );
    }
    CheckResult::warn(
        name,
        format!("{off}{}; {pass}{absent}", missing.join("; ")),
        fixes.join(" or "),
    )
}
