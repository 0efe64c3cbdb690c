//! The agent's own structured logs on stderr, level reloadable on SIGHUP: human text when stderr is
//! a terminal, JSON lines elsewhere (journald, a pipe, a file), unless `logging.format` or
//! `--log-format` says `json` or `text`.
//!
//! stdout is reserved for batches (dry-run and no-listener mode), so logs never go there.

use std::io::IsTerminal;
use std::str::FromStr;

use tracing_subscriber::filter::Targets;
use tracing_subscriber::prelude::*;
use tracing_subscriber::reload;

/// Changes the log level of a running process.
#[derive(Clone)]
pub struct LogControl {
    handle: Option<reload::Handle<Targets, tracing_subscriber::Registry>>,
    from_env: bool,
}

impl LogControl {
    /// Applies `logging.level` (ignored while RUST_LOG is set, which always wins).
    pub fn set_level(&self, level: &str) {
        if self.from_env {
            return;
        }
        if let (Some(handle), Ok(filter)) = (&self.handle, Targets::from_str(level)) {
            let _ = handle.reload(filter);
        }
    }
}

/// Whether `format` (`auto`, `json` or `text`) means text here: `auto` is text on a terminal.
pub fn is_text(format: &str) -> bool {
    match format {
        "text" => true,
        "json" => false,
        _ => std::io::stderr().is_terminal(),
    }
}

/// Installs the global subscriber. `format` is `auto`, `json` or `text` ([`is_text`]); RUST_LOG,
/// when set, overrides `level`.
pub fn init(level: &str, format: &str) -> LogControl {
    let env = std::env::var("RUST_LOG").ok().filter(|s| !s.is_empty());
    let from_env = env.as_ref().is_some_and(|s| Targets::from_str(s).is_ok());
    let filter = env
        .as_deref()
        .and_then(|s| Targets::from_str(s).ok())
        .or_else(|| Targets::from_str(level).ok())
        .unwrap_or_else(|| Targets::new().with_default(tracing::Level::INFO));
    let (filter, handle) = reload::Layer::new(filter);
    let registry = tracing_subscriber::registry().with(filter);
    let result = if is_text(format) {
        registry
            .with(
                tracing_subscriber::fmt::layer()
                    .with_writer(std::io::stderr)
                    .with_target(false),
            )
            .try_init()
    } else {
        registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_current_span(false)
                    .with_writer(std::io::stderr),
            )
            .try_init()
    };
    LogControl {
        handle: result.is_ok().then_some(handle),
        from_env,
    }
}
