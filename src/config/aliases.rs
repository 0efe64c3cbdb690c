//! The Python agent's configuration names (its INI keys and environment variables) and the keys of ours
//! they stand for.
//!
//! This table is the one definition of the compatibility layer: [`super::raw`] recognises an old INI
//! key or variable through it and keeps its value apart, and [`resolve`] merges those values into our
//! keys, refuses an old and a new name that disagree, and leaves one notice per old name used (logged
//! at WARN once logging runs). Our own keys and their precedence are not defined here.

use super::env::ENV_PREFIX;
use super::value::{is_secret, Alias, Origin, RawConfig, RawValue};
use super::ConfigError;

const fn a(
    old_section: &'static str,
    old_key: &'static str,
    env: &'static str,
    section: &'static str,
    key: &'static str,
) -> Alias {
    Alias {
        old_section,
        old_key,
        env,
        section,
        key,
    }
}

/// Every Python agent name that differs from ours. Its `[listener] url/api_key` and `[buffer]
/// max_size_mb` (and `BITVILLE_PG_LISTENER_URL/_API_KEY`) already are our names.
#[rustfmt::skip]
pub const ALIASES: &[Alias] = &[
    a("database", "host", "BITVILLE_PG_DB_HOST", "postgres", "host"),
    a("database", "port", "BITVILLE_PG_DB_PORT", "postgres", "port"),
    a("database", "name", "BITVILLE_PG_DB_NAME", "postgres", "database"),
    a("database", "user", "BITVILLE_PG_DB_USER", "postgres", "user"),
    a("database", "password", "BITVILLE_PG_DB_PASSWORD", "postgres", "password"),
    a("database", "statement_timeout_ms", "BITVILLE_PG_STATEMENT_TIMEOUT_MS", "safety", "statement_timeout_ms"),
    a("collection", "interval_s", "BITVILLE_PG_COLLECTION_INTERVAL_S", "agent", "collection_interval_s"),
    a("collection", "log_path", "BITVILLE_PG_LOG_PATH", "logs", "path"),
    a("listener", "project_id", "BITVILLE_PG_PROJECT_ID", "agent", "project_id"),
    a("buffer", "path", "BITVILLE_PG_BUFFER_PATH", "buffer", "python_buffer_path"),
];

/// Sections that only the Python agent's file has.
pub const OLD_SECTIONS: &[&str] = &["database", "collection"];

/// The alias for `[section] key` of the Python agent's file.
pub fn by_ini(section: &str, key: &str) -> Option<&'static Alias> {
    ALIASES
        .iter()
        .find(|a| a.old_section == section && a.old_key == key)
}

/// The alias for a Python agent environment variable.
pub fn by_env(name: &str) -> Option<&'static Alias> {
    ALIASES.iter().find(|a| a.env == name)
}

/// Our environment variable for `[section] key`.
pub fn env_name(section: &str, key: &str) -> String {
    format!("{}{section}_{key}", ENV_PREFIX).to_ascii_uppercase()
}

impl Alias {
    fn same(&self, other: &Alias) -> bool {
        self.section == other.section && self.key == other.key
    }

    /// The old name as it was given: `[database] host in FILE` or the variable.
    fn old_name(&self, origin: &Origin) -> String {
        match origin {
            Origin::Env(v) => format!("environment variable {v}"),
            other => format!("[{}] {} in {other}", self.old_section, self.old_key),
        }
    }
}

/// Our key as it was given: `[postgres] host in FILE` or the variable.
fn new_name(section: &str, key: &str, origin: &Origin) -> String {
    match origin {
        Origin::Env(v) => format!("environment variable {v}"),
        other => format!("[{section}] {key} in {other}"),
    }
}

/// Merges the values given under old names into our keys.
///
/// For each alias, the old name's value (the environment's over the file's) goes to our key unless our
/// key is set too: then both must be equal (after trimming), else it is an error naming both. The
/// libpq variables are applied after this, so an old name counts as set. Leaves one notice per old
/// name and place used in `raw.notices`.
pub fn resolve(raw: &mut RawConfig) -> Result<(), ConfigError> {
    let aliased = std::mem::take(&mut raw.aliased);
    for alias in ALIASES {
        let uses: Vec<&RawValue> = aliased
            .iter()
            .filter(|(a, _)| a.same(alias))
            .map(|(_, v)| v)
            .collect();
        let from_env = uses
            .iter()
            .rev()
            .find(|v| matches!(v.origin, Origin::Env(_)));
        let Some(old) = from_env.or(uses.last()).copied() else {
            continue;
        };
        let mut noticed: Vec<&Origin> = Vec::new();
        for used in &uses {
            if noticed.contains(&&used.origin) {
                continue;
            }
            noticed.push(&used.origin);
            let new = match &used.origin {
                Origin::Env(_) => format!(
                    "{} ([{}] {})",
                    env_name(alias.section, alias.key),
                    alias.section,
                    alias.key
                ),
                _ => format!("[{}] {}", alias.section, alias.key),
            };
            raw.notices.push(format!(
                "{} is the Python agent's name for {new}; it is read as such, rename it",
                alias.old_name(&used.origin)
            ));
        }
        match raw.values.get(&(alias.section, alias.key)) {
            Some(new) if new.value.trim() != old.value.trim() => {
                let shown = |v: &str| {
                    if is_secret(alias.section, alias.key) {
                        "<redacted>".to_string()
                    } else {
                        format!("{:?}", v.trim())
                    }
                };
                return Err(ConfigError::AliasConflict {
                    old: format!("{} = {}", alias.old_name(&old.origin), shown(&old.value)),
                    new: format!(
                        "{} = {}",
                        new_name(alias.section, alias.key, &new.origin),
                        shown(&new.value)
                    ),
                    section: alias.section,
                    key: alias.key,
                });
            }
            Some(_) => {}
            None => {
                raw.values.insert(
                    (alias.section, alias.key),
                    RawValue {
                        value: old.value.clone(),
                        origin: old.origin.clone(),
                        alias: Some(alias),
                    },
                );
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_alias_names_a_key_of_ours_and_no_name_twice() {
        for (i, a) in ALIASES.iter().enumerate() {
            assert!(
                super::super::keys::spec(a.section, a.key).is_some(),
                "{a:?}"
            );
            assert!(
                super::super::keys::spec(a.old_section, a.old_key).is_none(),
                "{a:?} is also a key of ours"
            );
            for b in &ALIASES[i + 1..] {
                assert!(!a.same(b) && a.env != b.env, "{a:?} / {b:?}");
            }
        }
    }
}
