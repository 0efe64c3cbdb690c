//! `postgres-agent once [--dry-run] [--pretty|--json]`: one collection cycle, each batch printed on
//! stdout as one JSON line (on a pipe, or with `--json`) or as a table (on a terminal, or with
//! `--pretty`). Exit status 0 when every collector succeeded, 1 when any failed (the batches of the others
//! are still printed; each failure is logged on stderr).
//!
//! The statement baseline under `agent.state_dir` is read and updated, so two runs report the
//! statement activity between them; `--dry-run` reads it and never writes it (nor anything else). Without `--dry-run` and with `listener.url` set, the batches go
//! through the outbox and one bounded send pass (what is not delivered stays in the outbox for the
//! daemon); with no listener they are printed, as the no-listener default does. Without `--dry-run`
//! it takes the state directory's lock ([`crate::state::lock`]): while a daemon runs on the same
//! directory it exits 75 and changes nothing.

use std::io::Write;
use std::process::ExitCode;

use crate::batch::Batch;
use crate::cli::pretty::{self, Format};
use crate::collect::{CollectSettings, Collectors};
use crate::config::Config;
use crate::db::Db;
use crate::ship::Shipper;
use crate::state::lock::{StateLock, EXIT_LOCKED};

/// Runs one cycle and prints its batches.
pub fn run(config: &Config, dry_run: bool, format: Format) -> ExitCode {
    // Without --dry-run, `once` writes the baseline and the outbox: the daemon's files, so it takes
    // the daemon's lock (and is refused the same way while a daemon runs).
    let _lock = if dry_run {
        None
    } else {
        match StateLock::acquire_or_defer(&config.agent.state_dir) {
            Ok(lock) => Some(lock),
            Err(e) => {
                eprintln!("postgres-agent: {e}");
                return ExitCode::from(EXIT_LOCKED);
            }
        }
    };
    let Some(runtime) = crate::command_runtime() else {
        return ExitCode::FAILURE;
    };
    let db = match Db::new(&config.postgres, &config.safety) {
        Ok(db) => db,
        Err(e) => {
            eprintln!("postgres-agent: {e}");
            return ExitCode::FAILURE;
        }
    };
    let settings = CollectSettings::from_config(config);
    let mut collectors = if dry_run {
        Collectors::read_only(&settings)
    } else {
        Collectors::new(&settings)
    };
    let report = runtime.block_on(collectors.run_cycle(&db, &settings));
    db.close();
    if dry_run || config.listener.url.is_none() {
        if let Err(e) = print_batches(&report.batches, format) {
            eprintln!("postgres-agent: cannot write to stdout: {e}");
            return ExitCode::FAILURE;
        }
    } else if !ship(config, &report.batches, &runtime) {
        return ExitCode::FAILURE;
    }
    if report.all_ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// Writes the batches to the outbox and makes one bounded send pass. False when a batch could not
/// be written to the outbox.
fn ship(config: &Config, batches: &[Batch], runtime: &tokio::runtime::Runtime) -> bool {
    let shipper = match Shipper::open(config) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("postgres-agent: {e}");
            return false;
        }
    };
    let mut ok = true;
    for batch in batches {
        if let Err(e) = shipper.enqueue(batch) {
            eprintln!(
                "postgres-agent: batch {} ({}): {e}",
                batch.batch_id, batch.kind
            );
            ok = false;
        }
    }
    let budget = config.listener.timeout * 3;
    let report = runtime.block_on(shipper.drain(budget));
    tracing::info!(sent = report.delivered, waiting = report.remaining, stopped = ?report.stopped, "send pass finished");
    if report.remaining > 0 {
        eprintln!(
            "postgres-agent: {} wait in the outbox ({:?}); the daemon will send them",
            crate::cli::pretty::plural(report.remaining, "batch", "batches"),
            report.stopped
        );
    }
    ok
}

/// Writes each batch as one JSON line, or as a table.
pub fn print_batches(batches: &[Batch], format: Format) -> std::io::Result<()> {
    if format == Format::Pretty {
        let values: Vec<serde_json::Value> = batches
            .iter()
            .filter_map(|b| serde_json::to_string(b).ok())
            .filter_map(|s| serde_json::from_str(&s).ok())
            .collect();
        return pretty::print(&values, format);
    }
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    for batch in batches {
        serde_json::to_writer(&mut out, batch)?;
        out.write_all(b"\n")?;
    }
    out.flush()
}
