//! Unit tests of redaction classes and of the log policy ([`super::Privacy`]) on PostgreSQL's own
//! message wording.

use super::*;

#[derive(Default)]
struct Entry {
    state: Option<String>,
    message: Option<String>,
    detail: Option<String>,
    hint: Option<String>,
    context: Option<String>,
    statement: Option<String>,
    query: Option<String>,
}

impl Entry {
    fn new(state: Option<&str>, message: &str) -> Entry {
        Entry {
            state: state.map(str::to_string),
            message: Some(message.to_string()),
            ..Entry::default()
        }
    }

    fn fields(&mut self) -> LogFields<'_> {
        LogFields {
            sqlstate: self.state.as_deref(),
            message: &mut self.message,
            detail: &mut self.detail,
            hint: &mut self.hint,
            context: &mut self.context,
            statement: &mut self.statement,
            query: &mut self.query,
        }
    }

    fn redact(&mut self, classes: &[&str]) -> usize {
        let classes = RedactClasses::parse(classes).unwrap();
        redact_log_secrets(&mut self.fields(), classes)
    }
}

#[test]
fn class_lists_parse_and_reject_bad_names() {
    assert_eq!(
        RedactClasses::parse(&["credential", "parsing_error"]),
        Ok(RedactClasses::DEFAULT)
    );
    assert_eq!(RedactClasses::parse(&[" ALL "]), Ok(RedactClasses::ALL));
    assert_eq!(RedactClasses::parse(&["none"]), Ok(RedactClasses::NONE));
    assert_eq!(
        RedactClasses::parse(&["credentials"]),
        Err(PrivacyError::UnknownRedactClass {
            name: "credentials".into()
        })
    );
    assert_eq!(
        RedactClasses::parse(&["none", "table_data"]),
        Err(PrivacyError::NoneWithOtherClasses)
    );
    let err = RedactClasses::parse(&["bogus"]).unwrap_err().to_string();
    assert!(
        err.contains("privacy.redact_log_secrets") && err.contains("bogus"),
        "{err}"
    );
}

#[test]
fn role_passwords_are_redacted_in_every_form() {
    for sql in [
        "CREATE ROLE bob LOGIN PASSWORD 'hunter2secret'",
        "ALTER USER bob WITH ENCRYPTED PASSWORD 'hunter2secret' VALID UNTIL '2030-01-01'",
        "create user bob password E'hunter2\\'secret'",
        "ALTER ROLE bob PASSWORD $p$hunter2secret$p$; SELECT 1",
        "CREATE USER MAPPING FOR bob SERVER s OPTIONS (user 'bob', password 'hunter2secret')",
        "CREATE ROLE bob PASSWORD 'hunter2sec", // cut by track_activity_query_size
    ] {
        let mut e = Entry::new(None, &format!("statement: {sql}"));
        e.statement = Some(sql.to_string());
        assert!(e.redact(&["credential"]) >= 2, "{sql}");
        for text in [&e.message, &e.statement] {
            let text = text.as_deref().unwrap();
            assert!(!text.contains("hunter2"), "{text}");
            assert!(text.contains(REDACTED), "{text}");
        }
    }
    let mut e = Entry::new(
        None,
        "statement: ALTER ROLE bob PASSWORD 'x'; SELECT 'kept'",
    );
    e.redact(&["credential"]);
    assert_eq!(
        e.message.as_deref(),
        Some("statement: ALTER ROLE bob PASSWORD [redacted]; SELECT 'kept'")
    );
}

#[test]
fn connection_string_and_uri_passwords_are_redacted() {
    let mut e = Entry::new(Some("08001"), "could not establish connection");
    e.detail = Some("connection to \"host=db password=s3cr3t user=x\" failed; also password = 'a\\'b c' and postgresql://app:pw123@db:5432/x".into());
    e.redact(&["credential"]);
    let d = e.detail.unwrap();
    assert!(
        !d.contains("s3cr3t") && !d.contains("b c") && !d.contains("pw123"),
        "{d}"
    );
    assert!(
        d.contains("user=x") && d.contains("postgresql://app:[redacted]@db:5432/x"),
        "{d}"
    );
    // Not a credential: the word alone, or other settings.
    assert_eq!(
        redact_credentials("password authentication failed for user \"bob\""),
        "password authentication failed for user \"bob\""
    );
    assert_eq!(
        redact_credentials("SET password_encryption = 'scram-sha-256'"),
        "SET password_encryption = 'scram-sha-256'"
    );
}

#[test]
fn parsing_errors_lose_their_statement_by_sqlstate_or_message() {
    for state in [Some("42601"), None] {
        let mut e = Entry::new(state, "syntax error at or near \"secretword\"");
        e.statement = Some("SELEC secretword FROM t WHERE x = 'v'".into());
        assert_eq!(e.redact(&["parsing_error"]), 2);
        assert_eq!(e.statement.as_deref(), Some(REDACTED));
        assert_eq!(
            e.message.as_deref(),
            Some("syntax error at or near [redacted]")
        );
    }
    // Another error keeps its statement under parsing_error.
    let mut e = Entry::new(Some("42P01"), "relation \"nope\" does not exist");
    e.statement = Some("SELECT * FROM nope".into());
    assert_eq!(e.redact(&["parsing_error"]), 0);
    assert_eq!(e.statement.as_deref(), Some("SELECT * FROM nope"));
}

#[test]
fn statement_text_class_removes_all_sql() {
    let mut e = Entry::new(
        None,
        "duration: 12.5 ms  execute <unnamed>: SELECT * FROM t WHERE a = $1",
    );
    e.detail = Some("prepare: SELECT * FROM t WHERE a = $1".into());
    e.context = Some(
        "PL/pgSQL function f() line 2 at SQL statement\nSQL statement \"UPDATE t SET a = 1\""
            .into(),
    );
    e.statement = Some("SELECT f()".into());
    e.redact(&["statement_text"]);
    assert_eq!(
        e.message.as_deref(),
        Some("duration: 12.5 ms  execute <unnamed>: [redacted]")
    );
    assert_eq!(e.detail.as_deref(), Some("prepare: [redacted]"));
    assert_eq!(
        e.context.as_deref(),
        Some("PL/pgSQL function f() line 2 at SQL statement\nSQL statement \"[redacted]\"")
    );
    assert_eq!(e.statement.as_deref(), Some(REDACTED));
}

#[test]
fn statement_parameters_and_table_data() {
    let mut e = Entry::new(
        Some("23505"),
        "duplicate key value violates unique constraint \"u_email\"",
    );
    e.detail = Some("Key (email)=(ann@example.com) already exists.".into());
    e.context = Some("unnamed portal with parameters: $1 = 'ann@example.com', $2 = NULL".into());
    e.redact(&["statement_parameter", "table_data"]);
    assert_eq!(
        e.detail.as_deref(),
        Some("Key (email)=[redacted] already exists.")
    );
    assert_eq!(
        e.context.as_deref(),
        Some("unnamed portal with parameters: $1 = [redacted], $2 = NULL")
    );

    let mut e = Entry::new(
        Some("23502"),
        "null value in column \"b\" of relation \"t\" violates not-null constraint",
    );
    e.detail = Some("Failing row contains (1, secret value, null).".into());
    e.redact(&["table_data"]);
    assert_eq!(
        e.detail.as_deref(),
        Some("Failing row contains [redacted].")
    );

    let mut e = Entry::new(
        Some("22P02"),
        "invalid input syntax for type integer: \"12ab\"",
    );
    e.detail = Some("parameters: $1 = 'x'".into());
    e.redact(&["table_data"]);
    assert_eq!(
        e.message.as_deref(),
        Some("invalid input syntax for type integer: [redacted]")
    );
    assert_eq!(
        e.detail.as_deref(),
        Some("parameters: $1 = 'x'"),
        "not the table_data class"
    );
}

#[test]
fn none_redacts_nothing_and_all_redacts_everything() {
    let make = || {
        let mut e = Entry::new(Some("42601"), "syntax error at or near \"x\"");
        e.statement = Some("ALTER ROLE a PASSWORD 'p' x".into());
        e
    };
    let mut e = make();
    assert_eq!(e.redact(&["none"]), 0);
    assert_eq!(e.statement.as_deref(), Some("ALTER ROLE a PASSWORD 'p' x"));
    let mut e = make();
    assert!(e.redact(&["all"]) > 0);
    assert_eq!(e.statement.as_deref(), Some(REDACTED));
}

#[test]
fn policy_redacts_then_obfuscates_log_entries() {
    let privacy = Privacy::default();
    let mut e = Entry::new(
        None,
        "duration: 1.2 ms  statement: /* app='web' */ SELECT * FROM t WHERE a = 'x' AND n = 5",
    );
    e.detail = Some("parameters: $1 = 'ann@example.com', $2 = '42'".into());
    e.context =
        Some("SQL statement \"SELECT 'inner'\"\nPL/pgSQL function f() line 3 at PERFORM".into());
    e.statement = Some("CREATE ROLE r PASSWORD 'pw'".into());
    e.query = Some("SELECT 'q'".into());
    privacy.apply_to_log(e.fields());
    assert_eq!(
        e.message.as_deref(),
        Some("duration: 1.2 ms  statement: /* app='web' */ SELECT * FROM t WHERE a = ? AND n = ?")
    );
    assert_eq!(e.detail.as_deref(), Some("parameters: $1 = ?, $2 = ?"));
    assert_eq!(
        e.context.as_deref(),
        Some("SQL statement \"SELECT ?\"\nPL/pgSQL function f() line 3 at PERFORM")
    );
    assert_eq!(
        e.statement.as_deref(),
        Some("CREATE ROLE r PASSWORD [redacted]")
    );
    assert_eq!(e.query.as_deref(), Some("SELECT ?"));

    let plan = "duration: 3.0 ms  plan:\nQuery Text: SELECT * FROM t WHERE e = 'a@b'\nSeq Scan on t  (cost=0.00..1.50 rows=1 width=4)\n  Filter: (e = 'a@b'::text)";
    let mut e = Entry::new(None, plan);
    privacy.apply_to_log(e.fields());
    let m = e.message.unwrap();
    assert!(
        !m.contains("a@b") && m.contains("cost=0.00..1.50 rows=1"),
        "{m}"
    );
}

#[test]
fn obfuscation_off_ships_texts_unchanged_but_credentials() {
    let privacy = Privacy {
        obfuscate_queries: false,
        ..Privacy::default()
    };
    let sql = "SELECT * FROM t WHERE a = 'visible'";
    let mut counts = PrivacyCounts::default();
    assert!(matches!(
        privacy.query_text(sql, &mut counts),
        std::borrow::Cow::Borrowed(_)
    ));
    assert_eq!(
        privacy.query_text("ALTER ROLE x PASSWORD 'p'", &mut counts),
        "ALTER ROLE x PASSWORD [redacted]"
    );
    assert_eq!(counts.log_spans_redacted, 1);
    let mut e = Entry::new(None, "statement: SELECT 'visible'");
    privacy.apply_to_log(e.fields());
    assert_eq!(e.message.as_deref(), Some("statement: SELECT 'visible'"));
    assert_eq!(
        Privacy::default().query_text(sql, &mut counts),
        "SELECT * FROM t WHERE a = ?"
    );
    Privacy::default().query_text("SELECT 'cut", &mut counts);
    assert_eq!(
        counts,
        PrivacyCounts {
            unterminated_literals_masked: 1,
            log_spans_redacted: 1
        }
    );
}

#[test]
fn plain_values_build_the_policy() {
    let p = Privacy::new(true, &["credential", "table_data"]).unwrap();
    assert!(
        p.redact.contains(RedactClass::TableData) && !p.redact.contains(RedactClass::ParsingError)
    );
    assert_eq!(
        Privacy::new(true, &["credential", "bogus"]),
        Err(PrivacyError::UnknownRedactClass {
            name: "bogus".into()
        })
    );
}

#[test]
fn log_methods_return_what_they_did() {
    let privacy = Privacy::default();
    let mut e = Entry {
        statement: Some("ALTER ROLE x PASSWORD 'p'".into()),
        ..Entry::new(None, "statement: SELECT 'cut")
    };
    let counts = privacy.apply_to_log(e.fields());
    assert_eq!(counts.log_spans_redacted, 1, "{counts:?}");
    assert_eq!(counts.unterminated_literals_masked, 1, "{counts:?}");
}

#[test]
fn message_and_parameter_helpers() {
    assert_eq!(
        obfuscate_message("duration: 1.2 ms  statement: SELECT * FROM t WHERE a = 'x' -- c"),
        "duration: 1.2 ms  statement: SELECT * FROM t WHERE a = ? -- c"
    );
    assert_eq!(
        obfuscate_message("execute <unnamed>: SELECT $1 LIMIT 5"),
        "execute <unnamed>: SELECT $1 LIMIT ?"
    );
    let untouched = "checkpoint complete: wrote 3 buffers (0.0%)";
    assert!(matches!(
        obfuscate_message(untouched),
        std::borrow::Cow::Borrowed(_)
    ));
    assert_eq!(
        obfuscate_parameters("parameters: $1 = 'it''s', $2 = NULL, $3 = '5'"),
        "parameters: $1 = ?, $2 = NULL, $3 = ?"
    );
    // A DETAIL line cut inside a value masks the rest.
    assert_eq!(
        obfuscate_parameters("parameters: $1 = 'x', $2 = 'abc"),
        "parameters: $1 = ?, $2 = ?"
    );
}

#[test]
fn plans_keep_statistics_but_mask_conditions_and_query_text() {
    let plan = concat!(
        "duration: 3.0 ms  plan:\n",
        "Query Text: SELECT * FROM t\n  WHERE e = 'a@b' AND n > 4242\n  AND d\n  ->> 'k' = 777\n",
        "Sort  (cost=10.00..10.01 rows=3 width=4) (actual time=0.1..0.2 rows=1 loops=1)\n",
        "  Sort Key: n\n",
        "  ->  Seq Scan on t  (cost=0.00..1.50 rows=1 width=4)\n",
        "        Filter: ((e = 'a@b'::text) AND (n > 4242))\n",
        "        Rows Removed by Filter: 9\n",
        "        Buffers: shared hit=31"
    );
    let want = concat!(
        "duration: 3.0 ms  plan:\n",
        "Query Text: SELECT * FROM t\n  WHERE e = ? AND n > ?\n  AND d\n  ->> ? = ?\n",
        "Sort  (cost=10.00..10.01 rows=3 width=4) (actual time=0.1..0.2 rows=1 loops=1)\n",
        "  Sort Key: n\n",
        "  ->  Seq Scan on t  (cost=0.00..1.50 rows=1 width=4)\n",
        "        Filter: ((e = ?::text) AND (n > ?))\n",
        "        Rows Removed by Filter: ?\n",
        "        Buffers: shared hit=31"
    );
    assert_eq!(obfuscate_message(plan), want);
}
