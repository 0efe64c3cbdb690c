//! The values of stage one as data: what was given for a key ([`RawValue`]), where it came from
//! ([`Origin`]), the whole set ([`RawConfig`]), the Python agent's name a value may have been given
//! under ([`Alias`]), and which keys are secrets.
//!
//! A leaf of the config module: [`super::raw`] fills these types from the INI file and the
//! environment, [`super::aliases`] merges old names into them, [`super::validate`] reads them. It
//! reads nothing and checks nothing itself.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

use super::keys::{self, Kind};

/// Where a value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    Default,
    File(PathBuf),
    Env(String),
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Default => f.write_str("built-in default"),
            Origin::File(p) => write!(f, "{}", p.display()),
            Origin::Env(v) => write!(f, "environment variable {v}"),
        }
    }
}

#[derive(Debug, Clone)]
pub struct RawValue {
    pub value: String,
    pub origin: Origin,
    /// Set when the value was given under the Python agent's name for this key.
    pub alias: Option<&'static Alias>,
}

/// Known keys that were set explicitly, by file or environment.
#[derive(Debug, Default, Clone)]
pub struct RawConfig {
    pub file: Option<PathBuf>,
    pub values: BTreeMap<(&'static str, &'static str), RawValue>,
    /// Values given under the Python agent's names, in the order read; [`super::aliases::resolve`] moves
    /// them into `values`.
    pub aliased: Vec<(&'static Alias, RawValue)>,
    /// One line per Python agent name used, for a warning once logging runs.
    pub notices: Vec<String>,
}

/// One name of the Python agent and the key of ours it sets.
#[derive(Debug)]
pub struct Alias {
    /// Section and key in the Python agent's INI file.
    pub old_section: &'static str,
    pub old_key: &'static str,
    /// The Python agent's environment variable.
    pub env: &'static str,
    /// Our section and key.
    pub section: &'static str,
    pub key: &'static str,
}

/// Is this key a secret whose value must never be printed?
pub fn is_secret(section: &str, key: &str) -> bool {
    keys::spec(section, key).is_some_and(|s| s.kind == Kind::Secret)
}
