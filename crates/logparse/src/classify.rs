//! Classification: gives each entry an `event` (a snake_case class) and pulls the numbers out of the
//! message: `duration_ms`, and in `extracted` lock waits, temp file sizes, checkpoint buffers and
//! times, vacuum pages and tuples, session times, and the auto_explain plan (JSON or text format,
//! as one tree: [`super::plan`]) with its `plan_id`.
//!
//! Matching is on the message's leading words as PostgreSQL writes them with `lc_messages = C`
//! (translated server messages are not recognised and get only the SQLSTATE-based classes). ERROR,
//! FATAL and PANIC entries no rule claims get the name of their SQLSTATE class
//! (`data_exception`, `syntax_error_or_access_rule_violation`, ...) or `error` without one.

use serde_json::{Map, Number, Value};

use super::entry::LogEntry;

/// Sets `event`, `duration_ms` and `extracted` on `e`.
pub fn classify(e: &mut LogEntry<'_>) {
    let Some(sev) = e.error_severity else {
        e.event = Some("unparsed");
        return;
    };
    let code = e.state_code.as_deref().unwrap_or("");
    let m: &str = &e.message;
    let mut x = Map::new();
    let mut duration: Option<f64> = None;
    let event: Option<&'static str> = if let Some(rest) = m.strip_prefix("duration: ") {
        let (ms, after) = number_then(rest, " ms");
        duration = ms;
        if let Some(plan) = after.strip_prefix("  plan:\n") {
            if let Some(v) = super::plan::parse(plan) {
                if let Some(id) = super::plan::plan_id(&v) {
                    x.insert("plan_id".into(), Value::String(id));
                }
                // auto_explain writes the query ID with log_verbose from PostgreSQL 16.
                if e.query_id.is_none() {
                    e.query_id = v.get("Query Identifier").and_then(Value::as_i64);
                }
                x.insert("plan".into(), v);
            }
            Some("auto_explain")
        } else {
            Some("statement_duration")
        }
    } else if m.starts_with("statement: ") || m.starts_with("execute ") {
        Some("statement")
    } else if m.starts_with("connection received: ") {
        Some("connection_received")
    } else if m.starts_with("connection authorized: ")
        || m.starts_with("replication connection authorized: ")
        || m.starts_with("connection authenticated: ")
    {
        Some("connection_authorized")
    } else if let Some(rest) = m.strip_prefix("disconnection: session time: ") {
        duration = session_time_ms(rest);
        Some("disconnection")
    } else if m.starts_with("checkpoint starting: ") || m.starts_with("restartpoint starting: ") {
        Some("checkpoint_starting")
    } else if m.starts_with("checkpoint complete: ") || m.starts_with("restartpoint complete: ") {
        put(&mut x, "buffers_written", after_word(m, "wrote "));
        put(&mut x, "write_s", after_word(m, "write="));
        put(&mut x, "sync_s", after_word(m, "sync="));
        let total = after_word(m, "total=");
        put(&mut x, "total_s", total);
        duration = total.map(|s| s * 1000.0);
        put(&mut x, "distance_kb", after_word(m, "distance="));
        Some("checkpoint_complete")
    } else if m.starts_with("automatic vacuum of table ")
        || m.starts_with("automatic aggressive vacuum")
    {
        duration = vacuum_numbers(m, &mut x);
        Some("autovacuum_completed")
    } else if m.starts_with("automatic analyze of table ") {
        duration = vacuum_numbers(m, &mut x);
        Some("autoanalyze_completed")
    } else if m.starts_with("process ") && m.contains(" still waiting for ") {
        duration = lock_numbers(m, &mut x);
        Some("lock_waiting")
    } else if m.starts_with("process ") && m.contains(" acquired ") {
        duration = lock_numbers(m, &mut x);
        Some("lock_acquired")
    } else if m.starts_with("process ") && m.contains(" detected deadlock ") {
        duration = lock_numbers(m, &mut x);
        Some("deadlock_detected")
    } else if let Some(rest) = m.strip_prefix("temporary file: path ") {
        put(&mut x, "temp_file_bytes", after_word(rest, ", size "));
        Some("temp_file_created")
    } else if m.starts_with("database system is ready to accept") {
        Some("server_start")
    } else if m.starts_with("starting PostgreSQL ") {
        Some("server_starting")
    } else if m.starts_with("database system is shut down") {
        Some("server_shutdown")
    } else if m.starts_with("received ") && m.ends_with(" shutdown request") {
        Some("shutdown_requested")
    } else if m.contains(" was terminated by signal ") || m.contains(" exited with exit code ") {
        Some("backend_crashed")
    } else {
        by_state(code, m)
    };
    let event = event.or(match sev {
        "ERROR" | "FATAL" | "PANIC" => Some(sqlstate_class(code)),
        _ => None,
    });
    if event == Some("statement_canceled") {
        let reason = if m.contains("statement timeout") {
            "statement_timeout"
        } else if m.contains("user request") {
            "user_request"
        } else {
            "other"
        };
        x.insert("reason".into(), Value::String(reason.into()));
    }
    e.event = event;
    e.duration_ms = duration;
    if !x.is_empty() {
        e.extracted = Some(x);
    }
}

fn by_state(code: &str, m: &str) -> Option<&'static str> {
    Some(match code {
        "40P01" => "deadlock_detected",
        "28P01" | "28000" => "auth_failed",
        "55P03" => "lock_timeout",
        "53300" => "too_many_connections",
        "53200" => "out_of_memory",
        "57014" => "statement_canceled",
        _ if m == "deadlock detected" => "deadlock_detected",
        // Without a SQLSTATE in the prefix (Debian's default): every method's failure
        // ("password", "Peer", "Ident", "LDAP", ... "authentication failed for user") and the
        // pg_hba.conf refusals, as SQLSTATE 28P01/28000 would class them.
        _ if m.contains("authentication failed for user")
            || m.starts_with("no pg_hba.conf entry for")
            || m.starts_with("pg_hba.conf rejects connection") =>
        {
            "auth_failed"
        }
        _ if m.starts_with("canceling statement due to lock timeout") => "lock_timeout",
        _ if m.starts_with("canceling statement due to") => "statement_canceled",
        _ if m.starts_with("sorry, too many clients") => "too_many_connections",
        _ if m.starts_with("out of memory") => "out_of_memory",
        _ => return None,
    })
}

fn put(x: &mut Map<String, Value>, k: &str, v: Option<f64>) {
    if let Some(v) = v {
        let n = if v.fract() == 0.0 && v.abs() < 9e15 {
            Number::from(v as i64)
        } else {
            match Number::from_f64(v) {
                Some(n) => n,
                None => return,
            }
        };
        x.insert(k.to_string(), Value::Number(n));
    }
}

/// The number at the start of `s`, and the text after `unit`.
fn number_then<'s>(s: &'s str, unit: &str) -> (Option<f64>, &'s str) {
    let n = s
        .bytes()
        .take_while(|b| b.is_ascii_digit() || *b == b'.')
        .count();
    let v = decimal(&s[..n]);
    (v, s[n..].strip_prefix(unit).unwrap_or(&s[n..]))
}

/// `digits[.digits]` as the nearest f64, as `str::parse` gives it. Durations (`%ld.%03d`) take the
/// exact fast path: with at most 15 significant digits the digits and the power of ten are both
/// exact f64s, and one IEEE division rounds their quotient correctly. Anything else goes to `parse`.
fn decimal(s: &str) -> Option<f64> {
    const POW10: [f64; 16] = [
        1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15,
    ];
    let b = s.as_bytes();
    let mut m: u64 = 0;
    let mut point: Option<usize> = None;
    for (i, &c) in b.iter().enumerate() {
        match c {
            b'0'..=b'9' => m = m.wrapping_mul(10).wrapping_add(u64::from(c - b'0')),
            b'.' if point.is_none() && i > 0 => point = Some(i),
            _ => return s.parse().ok(),
        }
    }
    let decimals = point.map_or(0, |p| b.len() - p - 1);
    let digits = b.len() - usize::from(point.is_some());
    if b.is_empty() || digits > 15 {
        return s.parse().ok();
    }
    Some(m as f64 / POW10[decimals])
}

/// The number right after the first `word` in `m`.
fn after_word(m: &str, word: &str) -> Option<f64> {
    let at = m.find(word)? + word.len();
    number_then(&m[at..], "").0
}

/// `H:MM:SS.mmm` as milliseconds.
fn session_time_ms(s: &str) -> Option<f64> {
    let t = s.split(' ').next()?;
    let mut parts = t.split(':');
    let h: f64 = parts.next()?.parse().ok()?;
    let m: f64 = parts.next()?.parse().ok()?;
    let sec: f64 = parts.next()?.parse().ok()?;
    Some(((h * 60.0 + m) * 60.0 + sec) * 1000.0)
}

fn vacuum_numbers(m: &str, x: &mut Map<String, Value>) -> Option<f64> {
    if let Some(start) = m.find('"') {
        if let Some(len) = m[start + 1..].find('"') {
            x.insert(
                "table".into(),
                Value::String(m[start + 1..start + 1 + len].to_string()),
            );
        }
    }
    if let Some(p) = m.find("pages: ") {
        let s = &m[p + 7..];
        put(x, "pages_removed", number_then(s, "").0);
        put(x, "pages_remain", after_word(s, "removed, "));
    }
    if let Some(p) = m.find("tuples: ") {
        let s = &m[p + 8..];
        put(x, "tuples_removed", number_then(s, "").0);
        put(x, "tuples_remain", after_word(s, "removed, "));
        put(x, "tuples_dead_not_removable", after_word(s, "remain, "));
    }
    after_word(m, "elapsed: ").map(|s| s * 1000.0)
}

fn lock_numbers(m: &str, x: &mut Map<String, Value>) -> Option<f64> {
    put(x, "waiting_pid", after_word(m, "process "));
    for (verb, skip) in [(" for ", 5), (" acquired ", 10)] {
        if let Some(p) = m.find(verb) {
            let rest = &m[p + skip..];
            if let Some(mode) = rest.split(' ').next().filter(|w| w.ends_with("Lock")) {
                x.insert("lock_mode".into(), Value::String(mode.to_string()));
                break;
            }
        }
    }
    if let Some(p) = m.rfind(" after ") {
        let (ms, _) = number_then(&m[p + 7..], " ms");
        put(x, "lock_wait_ms", ms);
        return ms;
    }
    None
}

/// The SQLSTATE class name (first two characters), as in PostgreSQL's errcodes appendix.
pub fn sqlstate_class(code: &str) -> &'static str {
    match code.get(..2).unwrap_or("") {
        "01" => "warning",
        "02" => "no_data",
        "03" => "sql_statement_not_yet_complete",
        "08" => "connection_exception",
        "09" => "triggered_action_exception",
        "0A" => "feature_not_supported",
        "0B" => "invalid_transaction_initiation",
        "0F" => "locator_exception",
        "0L" => "invalid_grantor",
        "0P" => "invalid_role_specification",
        "0Z" => "diagnostics_exception",
        "20" => "case_not_found",
        "21" => "cardinality_violation",
        "22" => "data_exception",
        "23" => "integrity_constraint_violation",
        "24" => "invalid_cursor_state",
        "25" => "invalid_transaction_state",
        "26" => "invalid_sql_statement_name",
        "27" => "triggered_data_change_violation",
        "28" => "invalid_authorization_specification",
        "2B" => "dependent_privilege_descriptors_still_exist",
        "2D" => "invalid_transaction_termination",
        "2F" => "sql_routine_exception",
        "34" => "invalid_cursor_name",
        "38" => "external_routine_exception",
        "39" => "external_routine_invocation_exception",
        "3B" => "savepoint_exception",
        "3D" => "invalid_catalog_name",
        "3F" => "invalid_schema_name",
        "40" => "transaction_rollback",
        "42" => "syntax_error_or_access_rule_violation",
        "44" => "with_check_option_violation",
        "53" => "insufficient_resources",
        "54" => "program_limit_exceeded",
        "55" => "object_not_in_prerequisite_state",
        "57" => "operator_intervention",
        "58" => "system_error",
        "72" => "snapshot_failure",
        "F0" => "config_file_error",
        "HV" => "fdw_error",
        "P0" => "plpgsql_error",
        "XX" => "internal_error",
        _ => "error",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::borrow::Cow;

    #[test]
    fn decimals_read_as_str_parse_reads_them() {
        let mut texts: Vec<String> = [
            "0",
            "0.000",
            "0.001",
            "0.383",
            "1.5",
            "12.000",
            "99999.999",
            "123456789012.345",
            "1234567890123.456",
            "0.1",
            "0.7",
            "2.675",
            "9007199254740993",
            "1..2",
            "",
            ".5",
            "5.",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        // Every `%ld.%03d` from 0 to 20 s, and a spread of larger ones.
        texts.extend((0..20_000u64).map(|ms| format!("{}.{:03}", ms / 1000, ms % 1000)));
        texts.extend((0..2_000u64).map(|i| {
            let us = i.wrapping_mul(0x9E37_79B9_7F4A_7C15) % 100_000_000_000;
            format!("{}.{:03}", us / 1000, us % 1000)
        }));
        for t in &texts {
            assert_eq!(
                decimal(t).map(f64::to_bits),
                t.parse::<f64>().ok().map(f64::to_bits),
                "{t:?}"
            );
        }
    }

    fn classified(sev: &'static str, code: Option<&str>, msg: &str) -> LogEntry<'static> {
        let mut e = LogEntry {
            error_severity: Some(sev),
            state_code: code.map(|c| Cow::Owned(c.to_string())),
            message: Cow::Owned(msg.to_string()),
            ..LogEntry::default()
        };
        classify(&mut e);
        e
    }

    #[test]
    fn extracts_numbers() {
        let e = classified("LOG", None, "duration: 12.5 ms  statement: select 1");
        assert_eq!(
            (e.event, e.duration_ms),
            (Some("statement_duration"), Some(12.5))
        );
        let e = classified(
            "LOG",
            None,
            "process 42 still waiting for ShareLock on transaction 7 after 1000.072 ms",
        );
        assert_eq!(e.event, Some("lock_waiting"));
        let x = e.extracted.unwrap();
        assert_eq!(x["lock_mode"], "ShareLock");
        assert_eq!(x["lock_wait_ms"], 1000.072);
        let e = classified(
            "LOG",
            None,
            "temporary file: path \"base/pgsql_tmp/pgsql_tmp1.0\", size 1400000",
        );
        assert_eq!(e.extracted.unwrap()["temp_file_bytes"], 1_400_000);
        let e = classified(
            "LOG",
            None,
            "disconnection: session time: 1:02:03.500 user=a database=b host=[local]",
        );
        assert_eq!(e.duration_ms, Some(3_723_500.0));
        let e = classified(
            "LOG",
            None,
            "duration: 3.0 ms  plan:\n{\"Query Text\": \"select 1\", \"Plan\": {}}",
        );
        assert_eq!(e.event, Some("auto_explain"));
        assert_eq!(e.extracted.unwrap()["plan"]["Query Text"], "select 1");
    }

    #[test]
    fn classes_errors_by_sqlstate() {
        assert_eq!(
            classified("ERROR", Some("22012"), "division by zero").event,
            Some("data_exception")
        );
        assert_eq!(
            classified("ERROR", Some("40P01"), "deadlock detected").event,
            Some("deadlock_detected")
        );
        assert_eq!(
            classified(
                "FATAL",
                Some("28P01"),
                "password authentication failed for user \"x\""
            )
            .event,
            Some("auth_failed")
        );
        // Debian's default prefix has no SQLSTATE: the message alone decides.
        for m in [
            "password authentication failed for user \"x\"",
            "Peer authentication failed for user \"x\"",
            "Ident authentication failed for user \"x\"",
            "no pg_hba.conf entry for host \"[local]\", user \"x\", database \"y\", no encryption",
            "pg_hba.conf rejects connection for host \"127.0.0.1\", user \"x\", database \"y\", no encryption",
        ] {
            assert_eq!(classified("FATAL", None, m).event, Some("auth_failed"), "{m}");
        }
        assert_eq!(classified("ERROR", None, "something").event, Some("error"));
        assert_eq!(classified("LOG", None, "something").event, None);
    }
}
