//! Shared harness of the integration tests: a real PostgreSQL per test, the agent's config for it, and
//! helpers to drive the real binary.

#![allow(dead_code)]

pub mod bitville;
pub mod child;
pub mod collect;
pub mod fault_listener;
pub mod listener;
pub mod logs;
pub mod pg;
pub mod python;

use std::path::Path;
use std::process::{Command, Output};

#[allow(unused_imports)]
pub use pg::{PgOptions, PgServer};
use postgres_agent::config::Config;

/// The agent configuration for a test server, with extra INI text appended.
pub fn agent_config(server: &PgServer, state_dir: &Path, extra: &str) -> Config {
    let ini = server.agent_ini(state_dir, extra);
    let path = state_dir.join("agent.ini");
    std::fs::create_dir_all(state_dir).expect("state dir");
    std::fs::write(&path, ini).expect("write ini");
    Config::load_with(Some(&path), Vec::<(String, String)>::new()).expect("valid test config")
}

/// Runs the real binary with `args` and a clean environment (no BITVILLE_PG_* or PG* leaking in).
pub fn agent(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_postgres-agent"));
    cmd.args(args);
    for (k, _) in std::env::vars() {
        if k.starts_with("BITVILLE_PG_") || k.starts_with("PG") || k == "RUST_LOG" {
            cmd.env_remove(k);
        }
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run postgres-agent")
}

/// A current-thread tokio runtime for async test bodies.
pub fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}
