//! Stage one of configuration: INI file + environment into a flat map of known keys, with no other I/O.
//!
//! Every value remembers where it came from, so a later validation error can name the file (or the
//! environment variable), the section, the key and the value.
//!
//! The types it fills ([`RawConfig`], [`RawValue`], [`Origin`]) are defined in [`super::value`], which
//! [`super::aliases`] and [`super::validate`] read too; this file owns the reading.

use std::collections::btree_map::Entry;
use std::path::Path;

use super::aliases;
use super::env::{self, ENV_CONFIG_PATH, ENV_PREFIX};
use super::keys;
use super::value::{Origin, RawConfig, RawValue};
use super::{validate, ConfigError};

impl RawConfig {
    /// Parses INI text. `path` is only used in error messages.
    pub fn from_ini(text: &str, path: &Path) -> Result<RawConfig, ConfigError> {
        let ini = ini::Ini::load_from_str_noescape(text).map_err(|e| ConfigError::Syntax {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        let mut raw = RawConfig {
            file: Some(path.to_path_buf()),
            ..RawConfig::default()
        };
        let origin = Origin::File(path.to_path_buf());
        let mut given = validate::Given::default();
        for (section, props) in ini.iter() {
            let Some(section) = section else {
                if let Some((key, _)) = props.iter().next() {
                    return Err(ConfigError::KeyOutsideSection {
                        origin,
                        key: key.to_string(),
                    });
                }
                continue;
            };
            let section = section.trim().to_ascii_lowercase();
            let all_sections = || keys::SECTIONS.iter().chain(aliases::OLD_SECTIONS).copied();
            let Some(section_name) = all_sections().find(|s| *s == section) else {
                return Err(ConfigError::UnknownSection {
                    origin,
                    suggestion: keys::nearest(&section, all_sections()).map(str::to_string),
                    section,
                });
            };
            for (key, value) in props.iter() {
                let key = key.trim().to_ascii_lowercase();
                let value = RawValue {
                    value: unquote(value).to_string(),
                    origin: origin.clone(),
                    alias: None,
                };
                if let Some(spec) = keys::spec(section_name, &key) {
                    let target = (spec.section, spec.key);
                    given.check(section_name, spec.key, target, &value)?;
                    raw.values.insert(target, value);
                } else if let Some(alias) = aliases::by_ini(section_name, &key) {
                    given.check(
                        section_name,
                        alias.old_key,
                        (alias.section, alias.key),
                        &value,
                    )?;
                    raw.aliased.push((alias, value));
                } else {
                    return Err(unknown_key(section_name, &key, &origin));
                }
            }
        }
        Ok(raw)
    }

    /// Applies `BITVILLE_PG_<SECTION>_<KEY>` overrides from `vars`.
    pub fn apply_env<I>(&mut self, vars: I) -> Result<(), ConfigError>
    where
        I: IntoIterator<Item = (String, String)>,
    {
        for (name, value) in vars {
            let Some(rest) = name.strip_prefix(ENV_PREFIX) else {
                continue;
            };
            if name == ENV_CONFIG_PATH {
                continue;
            }
            let origin = Origin::Env(name.clone());
            if let Some(alias) = aliases::by_env(&name) {
                let value = RawValue {
                    value,
                    origin,
                    alias: None,
                };
                validate::no_control_chars(&value, alias.section, alias.key)?;
                self.aliased.push((alias, value));
                continue;
            }
            let rest = rest.to_ascii_lowercase();
            // Section names may contain underscores (circuit_breaker), so match the longest section.
            let section = keys::SECTIONS
                .iter()
                .filter(|s| {
                    rest.len() > s.len() && rest.starts_with(*s) && rest[s.len()..].starts_with('_')
                })
                .max_by_key(|s| s.len());
            let Some(&section) = section else {
                return Err(ConfigError::UnknownEnv {
                    suggestion: nearest_env(&rest),
                    name,
                });
            };
            let key = &rest[section.len() + 1..];
            let spec = match keys::spec(section, key) {
                Some(spec) => spec,
                None => {
                    return Err(ConfigError::UnknownEnv {
                        suggestion: nearest_env(&rest),
                        name,
                    })
                }
            };
            let value = RawValue {
                value,
                origin,
                alias: None,
            };
            validate::no_control_chars(&value, spec.section, spec.key)?;
            self.values.insert((spec.section, spec.key), value);
        }
        Ok(())
    }

    /// Fills keys that are still unset from the libpq environment variables ([`env::LIBPQ`]).
    pub fn apply_libpq_env<I>(&mut self, vars: I) -> Result<(), ConfigError>
    where
        I: IntoIterator<Item = (String, String)>,
    {
        for (name, value) in vars {
            let Some((_, key)) = env::LIBPQ.iter().find(|(var, _)| *var == name) else {
                continue;
            };
            let Some(spec) = keys::spec("postgres", key) else {
                continue;
            };
            if let Entry::Vacant(slot) = self.values.entry((spec.section, spec.key)) {
                let value = RawValue {
                    value,
                    origin: Origin::Env(name),
                    alias: None,
                };
                validate::no_control_chars(&value, spec.section, spec.key)?;
                slot.insert(value);
            }
        }
        Ok(())
    }

    /// The value of a key: explicit if set, else the built-in default.
    pub fn get(&self, section: &'static str, key: &'static str) -> RawValue {
        if let Some(v) = self.values.get(&(section, key)) {
            return v.clone();
        }
        RawValue {
            value: keys::spec(section, key)
                .map(|s| s.default)
                .unwrap_or("")
                .to_string(),
            origin: Origin::Default,
            alias: None,
        }
    }
}

/// An unknown key, with the nearest known key of the section (ours or the Python agent's) as hint.
fn unknown_key(section: &str, key: &str, origin: &Origin) -> ConfigError {
    let ours = keys::KEYS
        .iter()
        .filter(|s| s.section == section)
        .map(|s| s.key);
    let old = aliases::ALIASES
        .iter()
        .filter(|a| a.old_section == section)
        .map(|a| a.old_key);
    ConfigError::UnknownKey {
        origin: origin.clone(),
        section: section.to_string(),
        key: key.to_string(),
        suggestion: keys::nearest(key, ours.chain(old)).map(str::to_string),
    }
}

fn nearest_env(rest: &str) -> Option<String> {
    let old = aliases::ALIASES.iter().map(|a| {
        a.env
            .strip_prefix(ENV_PREFIX)
            .unwrap_or(a.env)
            .to_ascii_lowercase()
    });
    let names: Vec<String> = keys::KEYS
        .iter()
        .map(|s| format!("{}_{}", s.section, s.key))
        .chain(old)
        .collect();
    keys::nearest(rest, names.iter().map(String::as_str))
        .map(|n| format!("{ENV_PREFIX}{}", n.to_ascii_uppercase()))
}

/// INI values may be written in double quotes to keep leading or trailing spaces or `;`.
fn unquote(v: &str) -> &str {
    if v.len() >= 2 && v.starts_with('"') && v.ends_with('"') {
        &v[1..v.len() - 1]
    } else {
        v
    }
}
