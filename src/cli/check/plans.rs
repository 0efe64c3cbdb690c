//! The `plans` line of `check`, only with `[plans] explain = true`: EXPLAIN on demand needs
//! PostgreSQL 16 (GENERIC_PLAN) and, to plan statements on every table, SELECT on them:
//! `pg_read_all_data` (14+) or grants per table. Says whether the role has it.

use super::CheckResult;
use crate::config::Config;
use crate::db::Session;

pub async fn check(config: &Config, session: &mut Session) -> Option<CheckResult> {
    if !config.plans.explain {
        return None;
    }
    let name = "plans";
    let user = &config.postgres.user;
    let sql = "SELECT current_setting('server_version_num')::int, \
               (SELECT rolsuper FROM pg_roles WHERE rolname = current_user), \
               CASE WHEN EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'pg_read_all_data') \
               THEN pg_has_role(current_user, 'pg_read_all_data', 'USAGE') ELSE false END";
    let row = match session.query_opt("check_plans", sql, &[]).await {
        Ok(Some(row)) => row,
        Ok(None) => return None,
        Err(e) => return Some(CheckResult::fail(name, e.to_string(), "check the role")),
    };
    let version: i32 = row.try_get(0).unwrap_or(0);
    let superuser: bool = row
        .try_get::<_, Option<bool>>(1)
        .ok()
        .flatten()
        .unwrap_or(false);
    let read_all: bool = row.try_get(2).unwrap_or(false);
    Some(if version < 160_000 {
        CheckResult::warn(
            name,
            format!(
                "plans.explain needs PostgreSQL 16 (EXPLAIN GENERIC_PLAN); server_version_num is \
                 {version}: only auto_explain plans are collected"
            ),
            "set [plans] explain = false, or upgrade the server to 16 or later",
        )
    } else if superuser || read_all {
        CheckResult::ok(
            name,
            format!(
                "plans.explain: role {user} has pg_read_all_data (or is superuser): EXPLAIN can \
                 plan statements on every table"
            ),
        )
    } else {
        CheckResult::warn(
            name,
            format!(
                "plans.explain: role {user} lacks pg_read_all_data: EXPLAIN of statements on \
                 tables it may not SELECT fails (tried once an hour)"
            ),
            format!("GRANT pg_read_all_data TO \"{user}\"; (or GRANT SELECT on the tables)"),
        )
    })
}
