//! The `[otlp]` section and the `OTEL_EXPORTER_OTLP_*` variables: what `listener.protocol = otlp`
//! needs besides `[listener]` (docs/otlp.md).
//!
//! `listener.url` is the base endpoint, as `OTEL_EXPORTER_OTLP_ENDPOINT` is: logs go to
//! `<url>/v1/logs`, metrics to `<url>/v1/metrics`, unless `otlp.logs_url` / `otlp.metrics_url`
//! give a signal's full URL. The standard variables fill keys that neither the file nor a
//! `BITVILLE_PG_*` variable set ([`apply_env`]), and only when the protocol is `otlp`, so a host
//! whose environment carries them for other programs keeps its Bitville settings.

use std::collections::btree_map::Entry;

use super::validate::Validator;
use super::value::{Origin, RawConfig, RawValue};
use super::{keys, ConfigError, Secret};

/// The standard variables read as defaults, and the key each fills (`listener.timeout_s` from
/// milliseconds, see [`apply_env`]).
pub const OTEL_ENV: &[(&str, &str, &str)] = &[
    ("OTEL_EXPORTER_OTLP_ENDPOINT", "listener", "url"),
    ("OTEL_EXPORTER_OTLP_LOGS_ENDPOINT", "otlp", "logs_url"),
    ("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", "otlp", "metrics_url"),
    ("OTEL_EXPORTER_OTLP_HEADERS", "otlp", "headers"),
    ("OTEL_EXPORTER_OTLP_COMPRESSION", "otlp", "compression"),
    ("OTEL_EXPORTER_OTLP_TIMEOUT", "listener", "timeout_s"),
    ("OTEL_SERVICE_NAME", "otlp", "service_name"),
];

/// Is `name` one of the standard variables the agent reads?
pub fn is_otel_var(name: &str) -> bool {
    OTEL_ENV.iter().any(|(v, _, _)| *v == name)
}

/// The OTLP settings (meaningful with `listener.protocol = otlp`).
#[derive(Debug, Clone, PartialEq)]
pub struct OtlpConfig {
    /// Full URL of the logs signal; None: `<listener.url>/v1/logs`.
    pub logs_url: Option<String>,
    /// Full URL of the metrics signal; None: `<listener.url>/v1/metrics`.
    pub metrics_url: Option<String>,
    /// Extra request headers (`otlp.headers`), values secret.
    pub headers: Vec<(String, Secret)>,
    /// Send bodies gzip-compressed (`otlp.compression = gzip`, the default).
    pub gzip: bool,
    /// The resource's `service.name`.
    pub service_name: String,
    /// Most statements sent as metrics per interval (by total time).
    pub top_statements: usize,
}

impl Default for OtlpConfig {
    fn default() -> OtlpConfig {
        OtlpConfig {
            logs_url: None,
            metrics_url: None,
            headers: Vec::new(),
            gzip: true,
            service_name: "postgres-agent".into(),
            top_statements: 100,
        }
    }
}

/// Path of the logs signal under a base endpoint (OTLP/HTTP specification).
pub const LOGS_PATH: &str = "v1/logs";
/// Path of the metrics signal under a base endpoint.
pub const METRICS_PATH: &str = "v1/metrics";

impl OtlpConfig {
    /// Where logs go, for base endpoint `base` (`listener.url`).
    pub fn logs_url(&self, base: &str) -> String {
        self.logs_url
            .clone()
            .unwrap_or_else(|| join(base, LOGS_PATH))
    }

    /// Where metrics go, for base endpoint `base`.
    pub fn metrics_url(&self, base: &str) -> String {
        self.metrics_url
            .clone()
            .unwrap_or_else(|| join(base, METRICS_PATH))
    }
}

fn join(base: &str, path: &str) -> String {
    format!("{}/{path}", base.trim_end_matches('/'))
}

/// Fills keys still unset from the standard `OTEL_*` variables, when `listener.protocol` is `otlp`.
/// `OTEL_EXPORTER_OTLP_TIMEOUT` is in milliseconds; it fills `listener.timeout_s` rounded up.
pub fn apply_env(raw: &mut RawConfig, env: &[(String, String)]) -> Result<(), ConfigError> {
    if raw.get("listener", "protocol").value.trim() != "otlp" {
        return Ok(());
    }
    for (name, value) in env {
        let Some((_, section, key)) = OTEL_ENV.iter().find(|(v, _, _)| v == name) else {
            continue;
        };
        let Some(spec) = keys::spec(section, key) else {
            continue;
        };
        let value = match (*section, *key) {
            ("listener", "timeout_s") => match value.trim().parse::<u64>() {
                Ok(ms) => ms.div_ceil(1000).max(1).to_string(),
                Err(_) => value.clone(),
            },
            _ => value.trim().to_string(),
        };
        if let Entry::Vacant(slot) = raw.values.entry((spec.section, spec.key)) {
            let value = RawValue {
                value,
                origin: Origin::Env(name.clone()),
                alias: None,
            };
            super::validate::no_control_chars(&value, spec.section, spec.key)?;
            slot.insert(value);
        }
    }
    Ok(())
}

impl Validator<'_> {
    /// The `[otlp]` section, checked.
    pub(super) fn otlp(&self) -> Result<OtlpConfig, ConfigError> {
        let url = |key: &'static str| -> Result<Option<String>, ConfigError> {
            let Some(text) = self.opt_str("otlp", key) else {
                return Ok(None);
            };
            match reqwest::Url::parse(&text) {
                Ok(u) if matches!(u.scheme(), "http" | "https") && u.host_str().is_some() => {
                    Ok(Some(text))
                }
                _ => Err(self.bad(
                    "otlp",
                    key,
                    "must be an http:// or https:// URL with a host",
                )),
            }
        };
        Ok(OtlpConfig {
            logs_url: url("logs_url")?,
            metrics_url: url("metrics_url")?,
            headers: parse_headers(self.opt_str("otlp", "headers").as_deref().unwrap_or(""))
                .map_err(|reason| self.bad("otlp", "headers", reason))?,
            gzip: self.choice("otlp", "compression")? == "gzip",
            service_name: self.nonempty("otlp", "service_name")?,
            top_statements: self.int("otlp", "top_statements")? as usize,
        })
    }
}

/// `key1=value1,key2=value2` as `OTEL_EXPORTER_OTLP_HEADERS` writes it (values percent-decoded).
pub fn parse_headers(text: &str) -> Result<Vec<(String, Secret)>, String> {
    let mut out = Vec::new();
    for pair in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let Some((name, value)) = pair.split_once('=') else {
            return Err("expected key=value pairs separated by commas".into());
        };
        let name = name.trim();
        let value = percent_decode(value.trim());
        if reqwest::header::HeaderName::from_bytes(name.as_bytes()).is_err() {
            return Err(format!("`{name}` is not a valid HTTP header name"));
        }
        if reqwest::header::HeaderValue::from_str(&value).is_err() {
            return Err(format!(
                "the value of `{name}` is not a valid HTTP header value"
            ));
        }
        out.push((name.to_string(), Secret::new(value)));
    }
    Ok(out)
}

/// `%XX` escapes decoded (the W3C baggage encoding the OTel variable uses); anything malformed is
/// kept as written.
fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            let hex = std::str::from_utf8(&b[i + 1..i + 3]).ok();
            if let Some(v) = hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_parse_and_decode() {
        let h = parse_headers("api-key=a%20b, x-tenant = t1").unwrap();
        assert_eq!(h.len(), 2);
        assert_eq!(h[0].0, "api-key");
        assert_eq!(h[0].1.expose(), "a b");
        assert_eq!(h[1].1.expose(), "t1");
        assert!(parse_headers("novalue").is_err());
        assert!(parse_headers("").unwrap().is_empty());
        assert_eq!(percent_decode("100%"), "100%");
    }

    fn load(env: &[(&str, &str)]) -> Result<super::super::Config, ConfigError> {
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        super::super::Config::load_with(None, env)
    }

    #[test]
    fn otel_variables_are_defaults_under_the_agents_keys() {
        let otel = [
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318"),
            ("OTEL_EXPORTER_OTLP_HEADERS", "x-api-key=s3cr%3Dt"),
            ("OTEL_EXPORTER_OTLP_COMPRESSION", "none"),
            ("OTEL_EXPORTER_OTLP_TIMEOUT", "2500"),
            (
                "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
                "http://m:4318/custom",
            ),
            ("OTEL_SERVICE_NAME", "db-7"),
        ];
        let mut env = otel.to_vec();
        env.push(("BITVILLE_PG_LISTENER_PROTOCOL", "otlp"));
        let c = load(&env).unwrap();
        let l = &c.listener;
        assert_eq!(l.url.as_deref(), Some("http://collector:4318"));
        assert_eq!(l.timeout.as_secs(), 3);
        assert!(!l.otlp.gzip);
        assert_eq!(l.otlp.headers[0].1.expose(), "s3cr=t");
        assert_eq!(l.otlp.service_name, "db-7");
        assert_eq!(
            l.otlp.logs_url("http://collector:4318"),
            "http://collector:4318/v1/logs"
        );
        assert_eq!(l.otlp.metrics_url("x"), "http://m:4318/custom");
        // The agent's own keys win.
        env.push(("BITVILLE_PG_LISTENER_URL", "https://mine:4318"));
        env.push(("BITVILLE_PG_OTLP_COMPRESSION", "gzip"));
        let c = load(&env).unwrap();
        assert_eq!(c.listener.url.as_deref(), Some("https://mine:4318"));
        assert!(c.listener.otlp.gzip);
        // Another protocol does not read them.
        let c = load(&otel).unwrap();
        assert_eq!(c.listener.url, None);
        assert_eq!(c.listener.otlp.service_name, "postgres-agent");
        // A bad value names the variable.
        let err = load(&[
            ("BITVILLE_PG_LISTENER_PROTOCOL", "otlp"),
            ("OTEL_EXPORTER_OTLP_COMPRESSION", "zstd"),
        ])
        .unwrap_err()
        .to_string();
        assert!(err.contains("OTEL_EXPORTER_OTLP_COMPRESSION"), "{err}");
    }

    #[test]
    fn signal_urls_join_the_base() {
        let c = OtlpConfig::default();
        assert_eq!(c.logs_url("http://h:4318/"), "http://h:4318/v1/logs");
        assert_eq!(c.metrics_url("http://h:4318"), "http://h:4318/v1/metrics");
    }
}
