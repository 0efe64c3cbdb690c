//! The privacy policy as the rest of the agent uses it: built once from plain values (the agent
//! converts its `[privacy]` settings), applied to query texts (activity, locks, statements) and to the
//! text fields of log entries. It owns the order of operations (redaction on the raw text first, then
//! literal obfuscation) and nothing else. What it masks and redacts is counted into a
//! [`PrivacyCounts`] the caller owns.

use std::borrow::Cow;

use super::fields::{LogFields, TextField};
use super::lexer::StringMode;
use super::messages::{self, SqlPart};
use super::obfuscate::{
    fingerprint_and_obfuscate, obfuscate_counted, obfuscate_keeping_numbers_in, ObfuscateOptions,
};
use super::redact::{self, RedactClass, RedactClasses, REDACTED};
use super::{PrivacyCounts, PrivacyError};

/// The privacy policy: whether literals are masked, which secret classes are redacted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Privacy {
    pub obfuscate_queries: bool,
    pub redact: RedactClasses,
    /// How plain strings read: [`StringMode::Either`], since any session may turn
    /// `standard_conforming_strings` off for itself.
    pub strings: StringMode,
}

impl Default for Privacy {
    fn default() -> Self {
        Privacy {
            obfuscate_queries: true,
            redact: RedactClasses::DEFAULT,
            strings: StringMode::Either,
        }
    }
}

impl Privacy {
    /// No masking and no redaction: texts pass through unchanged (offline parsing tests).
    pub const PASS_THROUGH: Privacy = Privacy {
        obfuscate_queries: false,
        redact: RedactClasses::NONE,
        strings: StringMode::Standard,
    };

    /// The policy of `obfuscate_queries` and the names of the secret classes to redact (see
    /// [`RedactClasses::parse`]); plain strings are read either way ([`StringMode::Either`]).
    pub fn new<S: AsRef<str>>(
        obfuscate_queries: bool,
        redact_classes: &[S],
    ) -> Result<Privacy, PrivacyError> {
        Ok(Privacy {
            obfuscate_queries,
            redact: RedactClasses::parse(redact_classes)?,
            strings: StringMode::Either,
        })
    }

    fn options(&self) -> ObfuscateOptions {
        ObfuscateOptions {
            strings: self.strings,
            numbers: true,
        }
    }

    /// A query text as it may leave the host (pg_stat_activity, locks, pg_stat_statements): literals
    /// masked when `obfuscate_queries`; otherwise unchanged except for credentials when that class is
    /// redacted, so `ALTER ROLE ... PASSWORD` is never shipped from activity either. What was masked
    /// or redacted is counted into `counts`.
    pub fn query_text<'t>(&self, sql: &'t str, counts: &mut PrivacyCounts) -> Cow<'t, str> {
        if self.obfuscate_queries {
            return obfuscate_counted(sql, self.options(), counts);
        }
        if !self.redact.contains(RedactClass::Credential) {
            return Cow::Borrowed(sql);
        }
        let (text, n) = redact::redact_credentials_counted(sql);
        counts.log_spans_redacted += n as u64;
        text
    }

    /// Applies the policy to a log entry: redaction of the configured classes, then (when
    /// `obfuscate_queries`) literal masking of `statement`, `query`, the SQL of `statement:`/`execute`/
    /// `plan:` messages, `prepare:` details, `SQL statement "..."` context lines and parameter lists.
    /// Returns what it redacted and masked.
    pub fn apply_to_log(&self, mut fields: LogFields<'_>) -> PrivacyCounts {
        let mut counts = PrivacyCounts {
            log_spans_redacted: redact::redact_log_secrets(&mut fields, self.redact) as u64,
            ..PrivacyCounts::default()
        };
        if self.obfuscate_queries {
            self.obfuscate_log(&mut fields, SqlSource::None, &mut counts);
        }
        counts
    }

    /// [`Privacy::apply_to_log`], and the fingerprint of the entry's SQL (`sql` says which text
    /// holds it) taken from the same lexing pass that masks its literals: the log pipeline's hot
    /// path, where every statement is both fingerprinted and masked. The fingerprint is that of the
    /// raw text (as [`super::fingerprint()`] of it), and the fields end exactly as
    /// [`Privacy::apply_to_log`] leaves them; only a field that redaction changed is lexed again.
    /// Returns what it redacted and masked, and the fingerprint.
    pub fn apply_to_log_fingerprinting(
        &self,
        mut fields: LogFields<'_>,
        sql: SqlSource,
    ) -> (PrivacyCounts, Option<u64>) {
        let opts = self.options();
        let mut counts = PrivacyCounts::default();
        // (fingerprint, the field's new text if masking changes it, identity of the raw text).
        let mut pass = |t: &str, head: &str| -> (u64, Option<String>) {
            if !self.obfuscate_queries {
                return (super::fingerprint::fingerprint_u64(t), None);
            }
            match fingerprint_and_obfuscate(t, opts, &mut counts) {
                (fp, Cow::Owned(masked)) => {
                    let mut text = String::with_capacity(head.len() + masked.len());
                    text.push_str(head);
                    text.push_str(&masked);
                    (fp, Some(text))
                }
                (fp, Cow::Borrowed(_)) => (fp, None),
            }
        };
        let done = match sql {
            SqlSource::None => None,
            SqlSource::Statement => fields.statement.text().map(|t| (pass(t, ""), identity(t))),
            SqlSource::Message => {
                fields
                    .message
                    .text()
                    .and_then(|m| match messages::message_sql(m) {
                        Some((at, SqlPart::Statement)) => {
                            Some((pass(&m[at..], &m[..at]), identity(m)))
                        }
                        _ => None,
                    })
            }
        };
        counts.log_spans_redacted += redact::redact_log_secrets(&mut fields, self.redact) as u64;
        let Some(((fp, masked), id)) = done else {
            if self.obfuscate_queries {
                self.obfuscate_log(&mut fields, SqlSource::None, &mut counts);
            }
            return (counts, None);
        };
        if self.obfuscate_queries {
            let target: &mut dyn TextField = match sql {
                SqlSource::Statement => &mut *fields.statement,
                _ => &mut *fields.message,
            };
            // Masked already, unless redaction rewrote it: then it is masked as it now reads.
            let untouched = target.text().map(identity) == Some(id);
            if untouched {
                if let Some(masked) = masked {
                    target.replace(masked);
                }
                self.obfuscate_log(&mut fields, sql, &mut counts);
            } else {
                self.obfuscate_log(&mut fields, SqlSource::None, &mut counts);
            }
        }
        (counts, Some(fp))
    }

    fn obfuscate_log(
        &self,
        fields: &mut LogFields<'_>,
        done: SqlSource,
        counts: &mut PrivacyCounts,
    ) {
        let opts = self.options();
        if done != SqlSource::Statement {
            update(fields.statement, |t| obfuscate_counted(t, opts, counts));
        }
        update(fields.query, |t| obfuscate_counted(t, opts, counts));
        if done != SqlSource::Message {
            update(fields.message, |t| obfuscate_message_with(t, opts, counts));
        }
        update(fields.detail, |t| match messages::detail_sql(t) {
            Some(at) => mask_spans(t, &[(at, t.len())], opts, counts),
            None => obfuscate_parameters_with(t, opts, counts),
        });
        update(fields.context, |t| {
            let mut spans = messages::parameter_lists(t);
            spans.extend(messages::context_sql(t));
            spans.sort_unstable();
            mask_spans(t, &spans, opts, counts)
        });
    }
}

/// Which field of a log entry holds the SQL to fingerprint (see
/// [`Privacy::apply_to_log_fingerprinting`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SqlSource {
    /// None: nothing is fingerprinted.
    None,
    /// The `statement` field.
    Statement,
    /// The SQL of a `statement:` / `execute <name>:` message (after `duration: ... ms  `).
    Message,
}

/// Where a text lies in memory: equal before and after redaction exactly when redaction left the
/// field alone (it replaces a field's text only when it changes it).
fn identity(t: &str) -> (usize, usize) {
    (t.as_ptr() as usize, t.len())
}

/// The SQL of a `statement:`, `execute <name>:`, `parse`/`bind` or auto_explain `plan:` message
/// obfuscated; a plan keeps the numbers of its statistics lines (costs, rows, times, buffers) and
/// masks those of its query text, conditions and filters. Other messages are unchanged.
pub fn obfuscate_message(message: &str) -> Cow<'_, str> {
    obfuscate_message_with(
        message,
        ObfuscateOptions::default(),
        &mut PrivacyCounts::default(),
    )
}

fn obfuscate_message_with<'m>(
    message: &'m str,
    opts: ObfuscateOptions,
    counts: &mut PrivacyCounts,
) -> Cow<'m, str> {
    match messages::message_sql(message) {
        Some((at, SqlPart::Statement)) => mask_spans(message, &[(at, message.len())], opts, counts),
        Some((at, SqlPart::Plan)) => {
            let plan = &message[at..];
            if let Some(masked) = super::plan::mask_structured_plan(plan, opts, counts) {
                return match masked {
                    Cow::Borrowed(_) => Cow::Borrowed(message),
                    Cow::Owned(masked) => Cow::Owned(format!("{}{masked}", &message[..at])),
                };
            }
            let keep = messages::plan_statistics_lines(plan);
            match obfuscate_keeping_numbers_in(plan, opts.strings, &keep, counts) {
                Cow::Borrowed(_) => Cow::Borrowed(message),
                Cow::Owned(masked) => Cow::Owned(format!("{}{masked}", &message[..at])),
            }
        }
        None => Cow::Borrowed(message),
    }
}

/// Every value of the `parameters: $1 = '...', $2 = NULL` lists in a DETAIL or CONTEXT text masked
/// (`$1 = ?, $2 = NULL`); text without such a list unchanged.
pub fn obfuscate_parameters(text: &str) -> Cow<'_, str> {
    obfuscate_parameters_with(
        text,
        ObfuscateOptions::default(),
        &mut PrivacyCounts::default(),
    )
}

fn obfuscate_parameters_with<'t>(
    text: &'t str,
    opts: ObfuscateOptions,
    counts: &mut PrivacyCounts,
) -> Cow<'t, str> {
    // Values are quoted by the server with '' doubling only, whatever the session's settings.
    let opts = ObfuscateOptions {
        strings: StringMode::Standard,
        ..opts
    };
    mask_spans(text, &messages::parameter_lists(text), opts, counts)
}

fn update(field: &mut dyn TextField, f: impl FnOnce(&str) -> Cow<'_, str>) {
    let new = match field.text().map(f) {
        Some(Cow::Owned(new)) => new,
        _ => return,
    };
    field.replace(new);
}

/// Obfuscates each span of `text` independently (spans sorted, not overlapping); a span already
/// redacted is left alone.
fn mask_spans<'t>(
    text: &'t str,
    spans: &[(usize, usize)],
    opts: ObfuscateOptions,
    counts: &mut PrivacyCounts,
) -> Cow<'t, str> {
    let mut out: Option<String> = None;
    let mut copied = 0;
    for &(start, end) in spans {
        let (Some(part), Some(keep)) = (text.get(start..end), text.get(copied..start)) else {
            continue;
        };
        if part == REDACTED {
            continue;
        }
        if let Cow::Owned(masked) = obfuscate_counted(part, opts, counts) {
            let buf = out.get_or_insert_with(|| String::with_capacity(text.len()));
            buf.push_str(keep);
            buf.push_str(&masked);
            copied = end;
        }
    }
    match out {
        None => Cow::Borrowed(text),
        Some(mut buf) => {
            buf.push_str(&text[copied..]);
            Cow::Owned(buf)
        }
    }
}
