//! `postgres-agent once [--dry-run]`: one collection cycle, each batch printed as one JSON line on
//! stdout. Exit status 0 when every collector succeeded, 1 when any failed (the batches of the others
//! are still printed; each failure is logged on stderr).
//!
//! The statement baseline under `agent.state_dir` is read and updated, so two runs report the
//! statement activity between them. Without `--dry-run` and with `listener.url` set, the batches go
//! through the outbox and one drain pass (docs/shipping.md); exit status 1 also when they could not
//! all be delivered (they stay queued for the next run or the daemon).

use std::io::Write;
use std::process::ExitCode;

use crate::collect::Collectors;
use crate::config::Config;
use crate::db::Db;
use crate::ship::batch::Batch;
use crate::ship::{DrainStop, Shipper};

/// Runs one cycle and prints its batches.
pub fn run(config: &Config, dry_run: bool) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("postgres-agent: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let db = match Db::new(&config.postgres, &config.safety) {
        Ok(db) => db,
        Err(e) => {
            eprintln!("postgres-agent: {e}");
            return ExitCode::FAILURE;
        }
    };
    let shipper = match (dry_run, &config.listener.url) {
        (false, Some(_)) => match Shipper::open(config) {
            Ok(s) => Some(s),
            Err(e) => {
                eprintln!("postgres-agent: {e}");
                return ExitCode::FAILURE;
            }
        },
        _ => None,
    };
    let mut collectors = Collectors::new(config);
    let report = runtime.block_on(collectors.run_cycle(&db, config));
    db.close();
    let delivered = match &shipper {
        Some(shipper) => runtime.block_on(ship(shipper, &report.batches, config)),
        None => match print_batches(&report.batches) {
            Ok(()) => true,
            Err(e) => {
                eprintln!("postgres-agent: cannot write to stdout: {e}");
                return ExitCode::FAILURE;
            }
        },
    };
    if report.all_ok() && delivered {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// Enqueues the batches and runs one drain pass; true when the outbox ended empty.
async fn ship(shipper: &Shipper, batches: &[Batch], config: &Config) -> bool {
    for batch in batches {
        if let Err(e) = shipper.enqueue(batch) {
            eprintln!(
                "postgres-agent: batch {} ({}): {e}",
                batch.batch_id, batch.kind
            );
        }
    }
    // Enough for every batch of one cycle plus a slow answer; a backlog left by earlier runs may
    // need more than one run.
    let report = shipper.drain(config.listener.timeout * 2).await;
    if report.stopped != DrainStop::Empty {
        eprintln!(
            "postgres-agent: {} batch(es) delivered, {} still queued in the outbox ({:?}); see `postgres-agent status`",
            report.delivered, report.remaining, report.stopped
        );
    }
    report.stopped == DrainStop::Empty
}

/// Writes each batch as one JSON line.
pub fn print_batches(batches: &[Batch]) -> std::io::Result<()> {
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    for batch in batches {
        serde_json::to_writer(&mut out, batch)?;
        out.write_all(b"\n")?;
    }
    out.flush()
}
