//! The process environment as the configuration sees it: only the variables the agent reads.
//!
//! `std::env::vars()` panics on the first variable whose name or value is not UTF-8, whoever it
//! belongs to. So the environment is read with `vars_os()` and decided per name: a variable the agent
//! does not read is skipped whatever its bytes; one it reads (`BITVILLE_PG_*`, the Python agent's
//! `BITVILLE_PG_*` names, the libpq variables in [`LIBPQ`], `RUST_LOG`, the [`PROXY`] variables) must
//! be UTF-8, else it is a configuration error naming it.

use std::ffi::OsString;

use super::ConfigError;

/// Prefix of every environment override: `BITVILLE_PG_<SECTION>_<KEY>`.
pub const ENV_PREFIX: &str = "BITVILLE_PG_";
/// Environment variable naming the config file.
pub const ENV_CONFIG_PATH: &str = "BITVILLE_PG_CONFIG_PATH";

/// The libpq variables read as fallbacks for `[postgres]`, and the key each fills.
pub const LIBPQ: &[(&str, &str)] = &[
    ("PGHOST", "host"),
    ("PGPORT", "port"),
    ("PGUSER", "user"),
    ("PGDATABASE", "database"),
    ("PGPASSWORD", "password"),
    ("PGSSLMODE", "sslmode"),
    ("PGSSLROOTCERT", "sslrootcert"),
    ("PGCONNECT_TIMEOUT", "connect_timeout_s"),
];

/// The agent's log filter, read by [`crate::telemetry::logging::init`].
pub const RUST_LOG: &str = "RUST_LOG";

/// The proxy variables the listener's HTTP client honours. It reads them with `std::env::var` and
/// would silently send direct past a proxy whose variable is not UTF-8, so they are checked here.
pub const PROXY: &[&str] = &[
    "HTTP_PROXY",
    "http_proxy",
    "HTTPS_PROXY",
    "https_proxy",
    "ALL_PROXY",
    "all_proxy",
    "NO_PROXY",
    "no_proxy",
];

/// Does the agent read this variable?
pub fn is_read(name: &str) -> bool {
    name.starts_with(ENV_PREFIX)
        || name == RUST_LOG
        || LIBPQ.iter().any(|(v, _)| *v == name)
        || PROXY.contains(&name)
        || super::otlp::is_otel_var(name)
}

/// The variables the agent reads, as strings; the others are dropped unexamined.
///
/// A name starting with `BITVILLE_PG_` that is not UTF-8 is an unknown variable (every one of ours
/// is ASCII); a value that is not UTF-8 in a variable the agent reads is [`ConfigError::EnvNotUnicode`].
pub fn read<I>(vars: I) -> Result<Vec<(String, String)>, ConfigError>
where
    I: IntoIterator<Item = (OsString, OsString)>,
{
    let mut read = Vec::new();
    for (name, value) in vars {
        let name = match name.into_string() {
            Ok(name) => name,
            Err(name) => {
                let lossy = name.to_string_lossy();
                if lossy.starts_with(ENV_PREFIX) {
                    return Err(ConfigError::UnknownEnv {
                        name: lossy.into_owned(),
                        suggestion: None,
                    });
                }
                continue;
            }
        };
        if !is_read(&name) {
            continue;
        }
        match value.into_string() {
            Ok(value) => read.push((name, value)),
            Err(_) => return Err(ConfigError::EnvNotUnicode { name }),
        }
    }
    Ok(read)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::ffi::OsStringExt;

    fn os(s: &[u8]) -> OsString {
        OsString::from_vec(s.to_vec())
    }

    #[test]
    fn unread_variables_are_skipped_whatever_their_bytes() {
        let vars = vec![
            (os(b"LANG_X"), os(b"\xff\xfe")),
            (os(b"\xffODD"), os(b"x")),
            (os(b"PGAPPNAME"), os(b"\xff")),
            (os(b"PGHOST"), os(b"db")),
            (os(b"BITVILLE_PG_AGENT_PROJECT_ID"), os(b"p")),
        ];
        let read = read(vars).unwrap();
        assert_eq!(
            read,
            vec![
                ("PGHOST".to_string(), "db".to_string()),
                ("BITVILLE_PG_AGENT_PROJECT_ID".to_string(), "p".to_string()),
            ]
        );
    }

    #[test]
    fn a_read_variable_that_is_not_utf8_is_named() {
        for name in [
            "BITVILLE_PG_POSTGRES_HOST",
            "BITVILLE_PG_DB_HOST",
            "BITVILLE_PG_CONFIG_PATH",
            "PGPASSWORD",
            "RUST_LOG",
            "https_proxy",
        ] {
            let err = read(vec![(os(name.as_bytes()), os(b"a\xffb"))]).unwrap_err();
            let msg = err.to_string();
            assert!(msg.contains(name) && msg.contains("UTF-8"), "{msg}");
        }
        let err = read(vec![(os(b"BITVILLE_PG_\xff"), os(b"x"))]).unwrap_err();
        assert!(matches!(err, ConfigError::UnknownEnv { .. }), "{err}");
    }
}
