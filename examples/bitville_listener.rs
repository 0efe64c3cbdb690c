//! The Bitville listener contract (`tests/it/support/bitville.rs`, the one the integration tests
//! run in-process) as a process of its own, for benchmarks that run an agent as a separate process
//! (`bench/side_by_side.sh`). It accepts `POST /ingest/postgres` exactly as the tests' listener does
//! and answers the real listener's correlation API, `GET /api/correlation?correlation_id=ID`.
//!
//!   cargo run --example bitville_listener -- [--port N] [--key KEY] [--project NAME] [--limit N]
//!
//! Defaults: a free port, key `bench-key` for project `bench`, 100 requests per minute per client
//! IP (the real listener's limit). It prints `listening on http://127.0.0.1:PORT` on stdout once it
//! accepts connections, then serves until it is killed.

#[allow(dead_code)]
#[path = "../tests/it/support"]
mod support {
    pub mod bitville;
    pub mod serve;
}

use std::io::Write;

fn main() -> anyhow::Result<()> {
    let mut port: u16 = 0;
    let mut key = "bench-key".to_string();
    let mut project = "bench".to_string();
    let mut limit: u32 = 100;
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args
            .next()
            .ok_or_else(|| anyhow::anyhow!("{flag} needs a value"))?;
        match flag.as_str() {
            "--port" => port = value.parse()?,
            "--key" => key = value,
            "--project" => project = value,
            "--limit" => limit = value.parse()?,
            other => anyhow::bail!("unknown option {other} (--port, --key, --project, --limit)"),
        }
    }
    let listener = support::bitville::BitvilleListener::start_on(
        &[(key.as_str(), project.as_str())],
        limit,
        port,
    );
    let mut out = std::io::stdout();
    writeln!(out, "listening on http://{}", listener.addr)?;
    out.flush()?;
    loop {
        std::thread::park();
    }
}
