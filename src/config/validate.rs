//! Stage two of configuration: reads typed values out of a [`RawConfig`], producing errors that name
//! where each value came from (the file or variable, section, key and value; secrets redacted).
//!
//! Also the two checks stage one makes as it reads each value, because a later value would hide them:
//! no control characters ([`no_control_chars`]), and no key given twice in a file ([`Given`]).

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use super::value::{is_secret, Origin, RawConfig, RawValue};
use super::{keys, ConfigError, Secret};

/// The error for a value as given; a secret is shown as `<redacted>`.
fn bad_value(
    rv: &RawValue,
    section: &'static str,
    key: &'static str,
    secret: bool,
    reason: impl Into<String>,
) -> ConfigError {
    ConfigError::BadValue {
        origin: rv.origin.clone(),
        section,
        key,
        value: shown(&rv.value, secret),
        reason: reason.into(),
    }
}

fn shown(value: &str, secret: bool) -> String {
    if secret {
        "<redacted>".to_string()
    } else {
        format!("{value:?}")
    }
}

/// `url` with anything before an `@` in its authority replaced by `<redacted>`.
fn without_userinfo(url: &str) -> String {
    let start = url.find("://").map_or(0, |i| i + 3);
    let end = url[start..]
        .find(['/', '?', '#'])
        .map_or(url.len(), |i| start + i);
    match url[start..end].rfind('@') {
        Some(at) => format!("{}<redacted>{}", &url[..start], &url[start + at..]),
        None => url.to_string(),
    }
}

/// Why a value holding a control character is refused, or None.
///
/// Every character of the Unicode class Cc is refused (NUL, tab, CR, LF, ESC, DEL, U+0080 to U+009F),
/// in every key: none has a use for one, and it would otherwise reach libpq (which cuts at a NUL), an
/// HTTP header, a path or a log line. A `log_line_prefix` with a tab is read from the server when
/// `[logs] line_prefix` is left empty. Callers pass a value as it will be used: INI and environment
/// values trimmed (so a secret's trailing newline in a variable is still fine), a secret file's first
/// line as it is.
fn control_char(value: &str) -> Option<String> {
    let c = value.chars().find(|c| c.is_control())?;
    Some(format!(
        "contains the control character U+{:04X}; control characters (tab included) are not allowed",
        u32::from(c)
    ))
}

/// Refuses a value from the environment holding a control character; `section` and `key` are ours.
pub(super) fn no_control_chars(
    rv: &RawValue,
    section: &'static str,
    key: &'static str,
) -> Result<(), ConfigError> {
    match control_char(rv.value.trim()) {
        Some(reason) => Err(bad_value(rv, section, key, is_secret(section, key), reason)),
        None => Ok(()),
    }
}

/// The keys of one INI file seen so far, to refuse a key given twice.
#[derive(Default)]
pub(super) struct Given {
    /// (section as written, our section, our key) -> (key as written, value as shown).
    seen: HashMap<(&'static str, &'static str, &'static str), (&'static str, String)>,
}

impl Given {
    /// Checks `[section] key = value` of the file, where `target` is our key that `key` sets: refuses
    /// a control character, and a key given before in a section of the same name, under the same
    /// name or under the other of our name and the Python agent's (rust-ini would keep the last).
    pub(super) fn check(
        &mut self,
        section: &'static str,
        key: &'static str,
        target: (&'static str, &'static str),
        rv: &RawValue,
    ) -> Result<(), ConfigError> {
        let secret = is_secret(target.0, target.1);
        if let Some(reason) = control_char(rv.value.trim()) {
            return Err(bad_value(rv, section, key, secret, reason));
        }
        let value = shown(&rv.value, secret);
        match self.seen.get(&(section, target.0, target.1)) {
            Some((first_key, first_value)) => Err(ConfigError::DuplicateKey {
                origin: rv.origin.clone(),
                section,
                key,
                first: format!("{first_key} = {first_value}"),
                second: format!("{key} = {value}"),
            }),
            None => {
                self.seen
                    .insert((section, target.0, target.1), (key, value));
                Ok(())
            }
        }
    }
}

/// Reads typed values out of a [`RawConfig`], producing errors that name where each value came from.
pub(super) struct Validator<'a> {
    pub(super) raw: &'a RawConfig,
}

impl Validator<'_> {
    pub(super) fn bad(
        &self,
        section: &'static str,
        key: &'static str,
        reason: impl Into<String>,
    ) -> ConfigError {
        let rv = self.raw.get(section, key);
        let secret = is_secret(section, key);
        // A value from the Python agent's file is named as it is written there.
        let (section, key) = match rv.alias {
            Some(a) if matches!(rv.origin, Origin::File(_)) => (a.old_section, a.old_key),
            _ => (section, key),
        };
        bad_value(&rv, section, key, secret, reason)
    }

    pub(super) fn str(
        &self,
        section: &'static str,
        key: &'static str,
    ) -> Result<String, ConfigError> {
        Ok(text(&self.raw.get(section, key)))
    }

    pub(super) fn opt_str(&self, section: &'static str, key: &'static str) -> Option<String> {
        let v = text(&self.raw.get(section, key));
        (!v.trim().is_empty()).then_some(v)
    }

    pub(super) fn nonempty(
        &self,
        section: &'static str,
        key: &'static str,
    ) -> Result<String, ConfigError> {
        self.opt_str(section, key)
            .ok_or_else(|| self.bad(section, key, "must not be empty"))
    }

    pub(super) fn int(&self, section: &'static str, key: &'static str) -> Result<u64, ConfigError> {
        let (lo, hi) = match keys::spec(section, key).map(|s| s.kind) {
            Some(keys::Kind::Int(lo, hi)) => (lo, hi),
            _ => (0, u64::MAX),
        };
        let text = self.raw.get(section, key).value;
        let n: u64 = text.trim().replace('_', "").parse().map_err(|_| {
            self.bad(
                section,
                key,
                format!("expected a whole number from {lo} to {hi}"),
            )
        })?;
        if n < lo || n > hi {
            return Err(self.bad(section, key, format!("must be from {lo} to {hi}")));
        }
        Ok(n)
    }

    pub(super) fn millis(
        &self,
        section: &'static str,
        key: &'static str,
    ) -> Result<Duration, ConfigError> {
        self.int(section, key).map(Duration::from_millis)
    }

    /// `[activity] sample_interval_ms`: 0 (off) or 100 to 60000.
    pub(super) fn sample_interval(&self) -> Result<Option<Duration>, ConfigError> {
        let ms = self.int("activity", "sample_interval_ms")?;
        match ms {
            0 => Ok(None),
            1..=99 => Err(self.bad(
                "activity",
                "sample_interval_ms",
                "must be 0 (sampling off) or from 100 to 60000",
            )),
            _ => Ok(Some(Duration::from_millis(ms))),
        }
    }

    /// An optional number above zero and at most `max` (empty = None); `whole`: no fraction.
    pub(super) fn opt_positive(
        &self,
        section: &'static str,
        key: &'static str,
        max: f64,
        whole: bool,
    ) -> Result<Option<f64>, ConfigError> {
        let Some(text) = self.opt_str(section, key) else {
            return Ok(None);
        };
        match text.trim().parse::<f64>() {
            Ok(n) if n.is_finite() && n > 0.0 && n <= max && (!whole || n.fract() == 0.0) => {
                Ok(Some(n))
            }
            _ => Err(self.bad(
                section,
                key,
                format!(
                    "expected {} above 0 and at most {max}, or empty for the default",
                    if whole { "a whole number" } else { "a number" }
                ),
            )),
        }
    }

    pub(super) fn bool(
        &self,
        section: &'static str,
        key: &'static str,
    ) -> Result<bool, ConfigError> {
        match self
            .raw
            .get(section, key)
            .value
            .trim()
            .to_ascii_lowercase()
            .as_str()
        {
            "true" | "yes" | "on" | "1" => Ok(true),
            "false" | "no" | "off" | "0" => Ok(false),
            _ => Err(self.bad(section, key, "expected true or false")),
        }
    }

    pub(super) fn choice(
        &self,
        section: &'static str,
        key: &'static str,
    ) -> Result<String, ConfigError> {
        let value = self.raw.get(section, key).value.trim().to_ascii_lowercase();
        let Some(keys::Kind::Choice(allowed)) = keys::spec(section, key).map(|s| s.kind) else {
            return Ok(value);
        };
        if allowed.contains(&value.as_str()) {
            Ok(value)
        } else {
            let mut reason = format!("expected one of: {}", allowed.join(", "));
            if let Some(n) = keys::nearest(&value, allowed.iter().copied()) {
                reason.push_str(&format!(" (did you mean `{n}`?)"));
            }
            Err(self.bad(section, key, reason))
        }
    }

    pub(super) fn list(
        &self,
        section: &'static str,
        key: &'static str,
        allowed: Option<&[&str]>,
    ) -> Result<Vec<String>, ConfigError> {
        let items: Vec<String> = self
            .raw
            .get(section, key)
            .value
            .split(',')
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect();
        if let Some(allowed) = allowed {
            if let Some(bad) = items.iter().find(|i| !allowed.contains(&i.as_str())) {
                return Err(self.bad(
                    section,
                    key,
                    format!("`{bad}` is not one of: {}", allowed.join(", ")),
                ));
            }
        }
        Ok(items)
    }

    /// A secret given inline or through a file; both at once is an error.
    pub(super) fn secret_or_file(
        &self,
        section: &'static str,
        key: &'static str,
        file_key: &'static str,
    ) -> Result<Secret, ConfigError> {
        let inline = self.opt_str(section, key);
        let Some(path) = self.opt_str(section, file_key) else {
            return Ok(Secret::new(inline.unwrap_or_default()));
        };
        let explicit_inline = self
            .raw
            .values
            .get(&(section, key))
            .is_some_and(|v| !matches!(&v.origin, Origin::Env(n) if n.starts_with("PG")));
        if inline.is_some() && explicit_inline {
            return Err(self.bad(
                section,
                file_key,
                format!("set either `{key}` or `{file_key}`, not both"),
            ));
        }
        let text = std::fs::read_to_string(&path)
            .map_err(|e| self.bad(section, file_key, format!("cannot read the file: {e}")))?;
        let first = text.lines().next().unwrap_or("").trim_end_matches('\r');
        if first.is_empty() {
            return Err(self.bad(section, file_key, "the file is empty"));
        }
        if let Some(reason) = control_char(first) {
            return Err(self.bad(section, file_key, format!("its first line {reason}")));
        }
        Ok(Secret::new(first))
    }

    /// `[listener] api_key` (or the first line of `api_key_file`): it must make a valid HTTP header
    /// value after `Bearer `, else every request would fail at the outbox's first send.
    pub(super) fn api_key(&self) -> Result<Secret, ConfigError> {
        let key = self.secret_or_file("listener", "api_key", "api_key_file")?;
        let header = format!("Bearer {}", key.expose());
        if reqwest::header::HeaderValue::from_str(&header).is_err() {
            let named = match self.opt_str("listener", "api_key_file") {
                Some(_) => "api_key_file",
                None => "api_key",
            };
            return Err(self.bad(
                "listener",
                named,
                "the API key is not a valid HTTP header value",
            ));
        }
        Ok(key)
    }

    /// `[listener] url`: None when empty, else an absolute http:// or https:// URL with a host and no
    /// user name or password (the API key is the credential, and the URL appears in logs). Errors show
    /// the URL with any user name and password replaced.
    pub(super) fn listener_url(&self) -> Result<Option<String>, ConfigError> {
        let Some(text) = self.opt_str("listener", "url") else {
            return Ok(None);
        };
        let bad = |reason: String| match self.bad("listener", "url", reason) {
            ConfigError::BadValue {
                origin,
                section,
                key,
                reason,
                ..
            } => ConfigError::BadValue {
                origin,
                section,
                key,
                value: format!("{:?}", without_userinfo(&text)),
                reason,
            },
            other => other,
        };
        if !(text.starts_with("https://") || text.starts_with("http://")) {
            return Err(bad("must start with https:// or http://".into()));
        }
        let url = reqwest::Url::parse(&text).map_err(|e| bad(format!("not a valid URL: {e}")))?;
        if url.host_str().is_none_or(str::is_empty) {
            return Err(bad("has no host".into()));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(bad(
                "must not contain a user name or password; give the key as `api_key_file`".into(),
            ));
        }
        Ok(Some(text))
    }

    /// `[agent] state_dir`: it is created when first needed, so it may be missing, but what is
    /// there must be a directory. Anything else about it (a parent that is a file, no permission) is
    /// left to `check` and the first write, where it is a runtime failure.
    pub(super) fn state_dir(&self) -> Result<PathBuf, ConfigError> {
        let dir = PathBuf::from(self.nonempty("agent", "state_dir")?);
        match std::fs::metadata(&dir) {
            Ok(meta) if !meta.is_dir() => {
                Err(self.bad("agent", "state_dir", "exists and is not a directory"))
            }
            _ => Ok(dir),
        }
    }
}

/// A value as text: a file's value was trimmed before its quotes were removed, so the spaces a
/// quoted value keeps (`line_prefix = "%m [%p] "`) stay; other values are trimmed here.
fn text(rv: &RawValue) -> String {
    match rv.origin {
        Origin::File(_) => rv.value.clone(),
        _ => rv.value.trim().to_string(),
    }
}
