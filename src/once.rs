//! `postgres-agent once [--dry-run]`: one collection cycle, each batch printed as one JSON line on
//! stdout. Exit status 0 when every collector succeeded, 1 when any failed (the batches of the others
//! are still printed; each failure is logged on stderr).
//!
//! The statement baseline under `agent.state_dir` is read and updated, so two runs report the
//! statement activity between them. Until delivery to a listener is built (issue 5), a run without
//! `--dry-run` prints batches the same way, as the no-listener default does.

use std::io::Write;
use std::process::ExitCode;

use crate::collect::Collectors;
use crate::config::Config;
use crate::db::Db;
use crate::ship::batch::Batch;

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
    if !dry_run && config.listener.url.is_some() {
        tracing::warn!(
            "delivery to listener.url is not in this build yet; printing batches to stdout"
        );
    }
    let mut collectors = Collectors::new(config);
    let report = runtime.block_on(collectors.run_cycle(&db, config));
    db.close();
    if let Err(e) = print_batches(&report.batches) {
        eprintln!("postgres-agent: cannot write to stdout: {e}");
        return ExitCode::FAILURE;
    }
    if report.all_ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
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
