//! Privacy: what of a query text or log entry may leave the host.
//!
//! The agent's privacy text functions as a crate of their own (`pga-privacy`; the `pga-` prefix marks
//! the postgres-agent's internal crates, which are not published): pure functions over text, with no
//! I/O, no configuration, no async runtime and no global counters, so the compiler keeps them below
//! everything that uses them. The agent re-exports the crate as `postgres_agent::privacy` and builds
//! the policy from its `[privacy]` settings there.
//!
//! Three tools, used by the collectors and the log pipeline:
//!
//! - **Obfuscation** ([`obfuscate()`], [`obfuscate_cow`], [`obfuscate_with`]): every literal becomes
//!   [`PLACEHOLDER`] (`?`): `'...'` strings (with `''` escapes), `E'...'` (backslash escapes), `U&'...'`,
//!   `N'...'`, `$$...$$` and `$tag$...$tag$`, `B'...'`/`X'...'`, and numbers (integers, decimals,
//!   exponents, `0x`/`0o`/`0b`, `_` separators). Comments, identifiers (`"quoted"` ones too), keywords,
//!   `$n` parameters, operators, casts and whitespace are copied byte for byte, so correlation comments
//!   survive and the text stays readable. Text cut by `track_activity_query_size` inside a literal
//!   ends in an unterminated literal, which is masked whole: nothing of it is shown.
//! - **Fingerprints** ([`fingerprint()`]): 16 hex digits of XXH3-64 over the normalised token stream
//!   (literals, parameters and comments removed, whitespace and case normalised, `IN (...)` lists of
//!   literals collapsed); see [the `fingerprint` module](mod@fingerprint) for the exact rules.
//! - **Log secret redaction** ([`RedactClasses`], [`redact_log_secrets`]): the classes of pganalyze's
//!   `filter_log_secret` (credential, parsing_error, statement_text, statement_parameter, table_data,
//!   plus `all`/`none`), replacing spans with [`REDACTED`].
//!
//! # API for the collectors and the log pipeline
//! Build a [`Privacy`] once from plain values (`Privacy::new(obfuscate_queries, &classes)?`; the
//! agent converts its config), then:
//! - query texts (activity, locks, statements): `privacy.query_text(&text, &mut counts)` returns a
//!   `Cow<str>`;
//!   `fingerprint(&raw_text)` on the raw text, before obfuscation (literals do not change it anyway).
//! - log entries: `privacy.apply_to_log(LogFields { sqlstate: entry.state_code.as_deref(),
//!   message: &mut entry.message, detail: &mut entry.detail, hint: &mut entry.hint,
//!   context: &mut entry.context, statement: &mut entry.statement, query: &mut entry.internal_query })`.
//!   The fields are disjoint borrows of the entry; each may be a `String`, `Option<String>`,
//!   `Cow<str>` or `Option<Cow<str>>` ([`TextField`]), so `logs::LogEntry` fits as it is. A field
//!   borrowed from the parser's buffer becomes owned only when its text changes.
//!   Redaction runs first, on the raw text; obfuscation (if enabled) then masks the literals of the
//!   statement fields, of `statement:`/`execute ...:`/`plan:` messages (a plan's statistics lines keep their numbers),
//!   `prepare:` details, `parameters: $1 = '...'` lists and `SQL statement "..."` context lines.
//!   `apply_to_log` returns what it did as [`PrivacyCounts`].
//!   Correlation IDs must be extracted before (comments are kept anyway). The pieces are also public on
//!   their own: [`obfuscate_message`] and [`obfuscate_parameters`] for a single message or DETAIL,
//!   [`redact_log_secrets`] for redaction without obfuscation, [`redact_credentials`] for any text.
//!
//! # Why a hand-written lexer
//! pg_query (libpg_query) needs libclang to build and, like sqlparser's tokenizer, rejects text cut
//! inside a literal, which is exactly what pg_stat_activity returns. squawk-lexer, the closest crate,
//! reads `E'...'` without backslash escapes (`E'a\'b secret'` would show `secret`), ignores
//! `standard_conforming_strings` and needs Rust 1.99; Datadog's libdd-trace-obfuscation removes
//! comments and brings its trace stack as dependencies. The lexer here follows `scan.l` for exactly the
//! rules that decide where literals start and end, and never fails.
//!
//! Known limits: with `standard_conforming_strings = off` on a session but not in [`Privacy::strings`],
//! a plain string holding `\'` ends early in the lexer's eyes; the remainder usually lexes as a new
//! string running to the end and is masked, and credential redaction covers passwords through the end
//! of their statement for this reason. auto_explain plans in JSON, YAML and XML carry their SQL in quoted
//! strings or XML text: [`plan`] masks them (in the message, and in a parsed plan tree).
//!
//! # Counts
//! No function keeps a counter of its own. What is masked or redacted is counted into a
//! [`PrivacyCounts`] value the caller owns (returned by the log methods, passed as `&mut` to
//! [`Privacy::query_text`] and [`obfuscate_counted`]); the agent adds them to its metrics registry.

pub mod entry;
pub mod fields;
pub mod fingerprint;
pub mod lexer;
pub mod messages;
pub mod obfuscate;
pub mod plan;
pub mod redact;

#[cfg(test)]
mod lexer_tests;
#[cfg(test)]
mod proptests;
#[cfg(test)]
mod redact_tests;

pub use entry::{obfuscate_message, obfuscate_parameters, Privacy, SqlSource};
pub use fields::{LogFields, TextField};
pub use fingerprint::{fingerprint, normalize};
pub use lexer::StringMode;
pub use obfuscate::{
    fingerprint_and_obfuscate, obfuscate, obfuscate_counted, obfuscate_cow, obfuscate_with,
    ObfuscateOptions, PLACEHOLDER,
};
pub use redact::{
    redact_credentials, redact_credentials_counted, redact_log_secrets, RedactClass, RedactClasses,
    REDACTED,
};

/// Errors of the privacy settings.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PrivacyError {
    #[error("privacy.redact_log_secrets: unknown class {name:?} (expected credential, parsing_error, statement_text, statement_parameter, table_data, all or none)")]
    UnknownRedactClass { name: String },
    #[error("privacy.redact_log_secrets: \"none\" cannot be combined with other classes")]
    NoneWithOtherClasses,
}

/// What the privacy functions did to the texts they were given, accumulated in a value the caller
/// owns (the agent adds it to its `/metrics` counters of the same names).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PrivacyCounts {
    /// Texts whose unterminated trailing literal was masked (cut by `track_activity_query_size`).
    pub unterminated_literals_masked: u64,
    /// Spans replaced by secret redaction (log fields, and credentials in query texts).
    pub log_spans_redacted: u64,
}

impl std::ops::AddAssign for PrivacyCounts {
    fn add_assign(&mut self, other: PrivacyCounts) {
        self.unterminated_literals_masked += other.unterminated_literals_masked;
        self.log_spans_redacted += other.log_spans_redacted;
    }
}
