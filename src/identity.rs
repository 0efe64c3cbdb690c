//! The agent's identity on the watched server: the `application_name` of its sessions, the comment
//! tag its queries carry, and how to tell its own statement texts apart from everyone else's.
//!
//! A pure leaf: no I/O, no config. [`crate::db`] applies the name and the tag to every session and
//! query; collectors, correlation and the log task use them to leave the agent's own work out. It does
//! not decide how a query is tagged (that is [`crate::db::tagged`]) nor what is done with an excluded
//! statement or entry (the callers count those).

/// The `application_name` of every agent session; collectors exclude sessions carrying it.
pub const APPLICATION_NAME: &str = "bitville-postgres-agent";
/// Every agent query starts with this comment, so its statements can be told apart in
/// pg_stat_statements and pg_stat_activity.
pub const QUERY_TAG: &str = "/* postgres-agent */";

/// Whether a pg_stat_statements text is one of the agent's own statements. Agent queries carry the
/// tag both first (added by [`crate::db::Session::query`]) and right after their first keyword, because
/// PostgreSQL 18 stores statement texts without their leading comments.
pub fn is_agent_text(text: &str) -> bool {
    let text = text.trim_start();
    text.starts_with(QUERY_TAG)
        || text
            .split_once(char::is_whitespace)
            .is_some_and(|(_, rest)| rest.trim_start().starts_with(QUERY_TAG))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agent_texts_are_recognised_with_the_tag_first_or_after_the_first_keyword() {
        assert!(is_agent_text("/* postgres-agent */ SELECT $1"));
        assert!(is_agent_text(
            "SELECT /* postgres-agent */ pid FROM pg_stat_activity"
        ));
        assert!(!is_agent_text("SELECT pid FROM t /* postgres-agent */"));
        assert!(!is_agent_text("SELECT $1"));
        assert!(!is_agent_text(""));
    }
}
