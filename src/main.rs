//! The `postgres-agent` binary: everything is in [`postgres_agent::cli`].

fn main() -> std::process::ExitCode {
    postgres_agent::cli::main()
}
