//! `pg_settings`: a snapshot of every setting when the agent starts, and a change record whenever
//! one changes (`name`, `setting`, `previous_setting`, `unit`, `source`, `pending_restart`).
//!
//! The settings last seen are kept in `health-settings.json` under `agent.state_dir`, so a restart
//! of the agent reports only what changed while it was down, not every setting. The first snapshot
//! ever (no saved file, or another server) is reported as a snapshot with no change records. Each
//! start sends one snapshot (records with `change = "snapshot"`), then only changes (`changed`,
//! `added`, `removed`); a cycle without a change sends nothing. Settings are read again only when
//! `pg_conf_load_time()` or `pg_postmaster_start_time()` changed (a reload or a restart). Values that can hold credentials
//! (`primary_conninfo`, `ssl_passphrase_command`) are reported as `[redacted]`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{Reader, Row};
use crate::batch::BatchKind;
use crate::collect::{CollectError, Collected, Collector, Context};

/// When the configuration was last loaded: pg_settings can only have changed when this did (a
/// reload or a restart), so the full read (about 2 ms of server time) runs only then.
const LOADED: &str = "SELECT row_to_json(x)::text AS json FROM (SELECT \
     pg_conf_load_time()::text AS loaded, pg_postmaster_start_time()::text AS started) x";

const SQL: &str = "SELECT row_to_json(x)::text AS json FROM (SELECT name, setting, unit, source, \
     pending_restart, context, vartype FROM pg_settings) x";

/// Settings whose values may carry credentials.
const REDACTED: &[&str] = &["primary_conninfo", "ssl_passphrase_command"];

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Seen {
    setting: Option<String>,
    unit: Option<String>,
    source: Option<String>,
    pending_restart: bool,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct File {
    system_identifier: String,
    settings: BTreeMap<String, Seen>,
}

pub struct SettingsCollector {
    path: PathBuf,
    reader: Reader,
    saver: crate::collect::state_write::StateWriter,
    /// None until the first read of this run.
    last: Option<File>,
    /// [`LOADED`] at the last read.
    loaded: Option<Row>,
}

impl SettingsCollector {
    pub fn new(state_dir: &Path, read_only: bool) -> SettingsCollector {
        SettingsCollector {
            path: state_dir.join("health-settings.json"),
            reader: Reader::default(),
            saver: crate::collect::state_write::StateWriter::new(
                "the settings baseline",
                state_dir.join("health-settings.json"),
                read_only,
            ),
            last: None,
            loaded: None,
        }
    }

    /// The saved settings of this server, if any (a damaged file is logged and ignored: the next
    /// save replaces it).
    fn saved(&self, system_identifier: &str) -> Option<File> {
        let bytes = std::fs::read(&self.path).ok()?;
        match serde_json::from_slice::<File>(&bytes) {
            Ok(f) if f.system_identifier == system_identifier => Some(f),
            Ok(_) => None,
            Err(e) => {
                tracing::warn!(file = %self.path.display(), error = %e,
                    "the saved settings are damaged; this start reports a snapshot only");
                None
            }
        }
    }
}

fn record(name: &str, now: Option<&Seen>, before: Option<&Seen>, change: &str) -> Row {
    let mut r = Row::new();
    let seen = now.or(before);
    r.insert("name".into(), Value::from(name));
    r.insert("change".into(), Value::from(change));
    r.insert(
        "setting".into(),
        now.and_then(|s| s.setting.clone())
            .map_or(Value::Null, Value::from),
    );
    r.insert(
        "previous_setting".into(),
        before
            .and_then(|s| s.setting.clone())
            .map_or(Value::Null, Value::from),
    );
    for (k, v) in [
        ("unit", seen.and_then(|s| s.unit.clone())),
        ("source", seen.and_then(|s| s.source.clone())),
    ] {
        r.insert(k.into(), v.map_or(Value::Null, Value::from));
    }
    r.insert(
        "pending_restart".into(),
        Value::from(seen.is_some_and(|s| s.pending_restart)),
    );
    r
}

impl Collector for SettingsCollector {
    const NAME: &'static str = "health_settings";
    const KIND: BatchKind = BatchKind::PgSettings;
    type Record = Row;

    async fn collect(
        &mut self,
        ctx: &mut Context<'_>,
    ) -> Result<Option<Collected<Row>>, CollectError> {
        if !ctx.settings.health.enabled {
            return Ok(None);
        }
        let (session, server) = ctx.db()?;
        let sysid = server.info.system_identifier.clone();
        let loaded = self
            .reader
            .rows(session, "pg_settings", "health_settings_loaded", LOADED)
            .await?
            .and_then(|rows| rows.into_iter().next());
        if self.last.is_some() && loaded.is_some() && loaded == self.loaded {
            return Ok(None);
        }
        self.loaded = loaded;
        let Some(rows) = self
            .reader
            .rows(session, "pg_settings", "health_settings", SQL)
            .await?
        else {
            return Ok(None);
        };
        let mut now = File {
            system_identifier: sysid.clone(),
            settings: BTreeMap::new(),
        };
        for r in rows {
            let name = super::text(&r, "name");
            let setting = match REDACTED.contains(&name.as_str()) {
                true => Some("[redacted]".to_string()),
                false => r.get("setting").and_then(Value::as_str).map(str::to_string),
            };
            let text = |f: &str| r.get(f).and_then(Value::as_str).map(str::to_string);
            now.settings.insert(
                name,
                Seen {
                    setting,
                    unit: text("unit"),
                    source: text("source"),
                    pending_restart: r
                        .get("pending_restart")
                        .and_then(Value::as_bool)
                        .unwrap_or(false),
                },
            );
        }
        let (before, snapshot) = match self.last.take() {
            Some(last) if last.system_identifier == sysid => (Some(last), false),
            _ => (self.saved(&sysid), true),
        };
        let mut records = Vec::new();
        if snapshot {
            for (name, s) in &now.settings {
                records.push(record(name, Some(s), None, "snapshot"));
            }
        }
        if let Some(before) = &before {
            for (name, s) in &now.settings {
                match before.settings.get(name) {
                    None => records.push(record(name, Some(s), None, "added")),
                    Some(b) if b != s => records.push(record(name, Some(s), Some(b), "changed")),
                    Some(_) => {}
                }
            }
            for (name, b) in &before.settings {
                if !now.settings.contains_key(name) {
                    records.push(record(name, None, Some(b), "removed"));
                }
            }
        }
        let changed = before.as_ref().is_none_or(|b| b.settings != now.settings);
        if changed {
            match serde_json::to_vec(&now) {
                Ok(bytes) => {
                    self.saver.write_bytes(ctx.counters, bytes);
                }
                Err(e) => tracing::warn!(error = %e, "cannot encode the settings baseline"),
            }
        }
        self.last = Some(now);
        if records.is_empty() {
            return Ok(None);
        }
        let mut out = Collected::new(records);
        out.extra.insert("snapshot".into(), Value::from(snapshot));
        Ok(Some(out))
    }
}
