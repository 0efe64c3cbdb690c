//! `check`'s `health` line (issue 24) against a real server: OK for a superuser, and for a role
//! without pg_monitor that may not read one view, a WARN naming the view and the GRANTs that fix it.

use crate::support;

use support::check::{check, line};
use support::PgServer;

#[test]
fn the_health_line_names_each_unreadable_view_and_its_grant() {
    let server = PgServer::start();
    server.psql("postgres", "CREATE DATABASE other");
    let (code, out) = check(&server, "[health]\nenabled = true\n");
    assert_eq!(code, 0, "{out}");
    let ok = line(&out, "health");
    assert!(ok.starts_with("OK"), "{out}");
    assert!(ok.contains("visits 2/2 databases"), "{ok}");

    server.psql(
        "postgres",
        "CREATE ROLE limited LOGIN; REVOKE SELECT ON pg_catalog.pg_stat_bgwriter FROM PUBLIC; \
         REVOKE CONNECT ON DATABASE other FROM PUBLIC",
    );
    let (_, out) = check(&server, "[postgres]\nuser = limited\n");
    let warn = line(&out, "health");
    assert!(warn.starts_with("WARN"), "{out}");
    assert!(warn.contains("[health] enabled = false"), "{warn}");
    assert!(warn.contains("cannot read pg_stat_bgwriter"), "{warn}");
    assert!(warn.contains("pg_read_all_stats"), "{warn}");
    assert!(warn.contains("visits 1/2 databases"), "{warn}");
    assert!(warn.contains("GRANT pg_monitor TO \"limited\";"), "{warn}");
    assert!(
        warn.contains("GRANT SELECT ON pg_catalog.pg_stat_bgwriter TO \"limited\";"),
        "{warn}"
    );
}
