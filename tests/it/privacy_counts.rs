//! Privacy counts reach the registry: query texts cut inside a literal and credentials redacted are
//! counted in the `Counters` the collectors were handed (what `/metrics` exports as
//! `postgres_agent_privacy_unterminated_literals_masked_total` and
//! `postgres_agent_privacy_log_spans_redacted_total`), not in process-wide statics.

use crate::support;

use postgres_agent::telemetry::registry::{Counters, Event};
use support::collect::{client, cycle_counted};
use support::{agent_config, rt, PgServer};

#[test]
fn cut_literals_and_redacted_credentials_are_counted_in_the_callers_counters() {
    let server = PgServer::start();
    let state = tempfile::tempdir().unwrap();
    rt().block_on(async {
        // Idle sessions whose last statement pg_stat_activity shows: one cut at 100 bytes inside a
        // literal, one holding a password.
        let cut = client(&server, "postgres", "cut").await;
        cut.batch_execute(&format!("SELECT '{}'", "x".repeat(300)))
            .await
            .unwrap();
        let role = client(&server, "postgres", "role").await;
        role.batch_execute("CREATE ROLE privacy_counts_role PASSWORD 'hunter2'")
            .await
            .unwrap();

        let config = agent_config(&server, state.path(), "[safety]\nmax_query_length = 100\n");
        let masked = Counters::default();
        cycle_counted(&config, &masked).await;
        assert!(
            masked.get(Event::PrivacyLiteralsMasked) >= 1,
            "the text cut inside its literal was not counted: {masked:?}"
        );

        // Obfuscation off: nothing is masked, credentials are still redacted, and counted in these
        // counters only (the first set is not touched: nothing is process-wide).
        let before = masked.snapshot();
        let config = agent_config(
            &server,
            state.path(),
            "[privacy]\nobfuscate_queries = false\n",
        );
        let plain = Counters::default();
        cycle_counted(&config, &plain).await;
        assert!(
            plain.get(Event::PrivacyLogSpansRedacted) >= 1,
            "the password was not counted: {plain:?}"
        );
        assert_eq!(plain.get(Event::PrivacyLiteralsMasked), 0, "{plain:?}");
        assert_eq!(masked.snapshot(), before);
        drop((cut, role));
    });
}
