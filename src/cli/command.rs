//! The `postgres-agent` command line: parses arguments, loads the configuration, and calls the
//! command. Exit status: 0 success, 1 runtime failure, 2 usage error, 75 another agent holds the
//! state directory, 78 configuration error.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;

use crate::cli::pretty::Format;
use crate::cli::stdout_filter::StdoutFilter;
use crate::config::{Config, ConfigError, Origin};
use crate::telemetry::logging::LogControl;
use clap::{CommandFactory, Parser, Subcommand};

/// sysexits.h EX_CONFIG.
const EXIT_CONFIG: u8 = 78;
/// A usage error, as clap exits.
const EXIT_USAGE: u8 = 2;

/// A low-overhead PostgreSQL monitoring agent.
///
/// Config file: the CONFIG argument or --config, else $BITVILLE_PG_CONFIG_PATH, else
/// /etc/bitville/postgres-agent.ini if it exists, else built-in defaults. Any key can be overridden
/// with BITVILLE_PG_<SECTION>_<KEY>; the connection also honours PGHOST, PGPORT, PGUSER, PGDATABASE,
/// PGPASSWORD and PGSSLMODE. The Python agent's INI keys and BITVILLE_PG_* variables are read too.
///
/// `postgres-agent CONFIG` (a path and no command, how the Python agent was started) is the same as
/// `postgres-agent run CONFIG`.
#[derive(Parser, Debug)]
#[command(
    name = "postgres-agent",
    version,
    about,
    long_about,
    override_usage = "postgres-agent [OPTIONS] <COMMAND>\n       postgres-agent CONFIG   (the same as `run CONFIG`)"
)]
struct Cli {
    /// Path of the INI config file.
    #[arg(long, global = true, value_name = "PATH")]
    config: Option<PathBuf>,
    /// The agent's own log lines on stderr: text on a terminal and JSON lines elsewhere (auto),
    /// or always json, or always text. Overrides [logging] format.
    #[arg(long, global = true, value_name = "FORMAT", value_parser = ["auto", "json", "text"])]
    log_format: Option<String>,
    #[command(subcommand)]
    command: Command,
}

/// How `run` and `once` print batches on stdout.
#[derive(clap::Args, Debug)]
struct OutputArgs {
    /// Show each printed batch as a table (the default on a terminal).
    #[arg(long, conflicts_with = "json")]
    pretty: bool,
    /// Print each batch as one JSON line (the default on a pipe).
    #[arg(long)]
    json: bool,
}

impl OutputArgs {
    fn format(&self) -> Format {
        Format::choose(self.pretty, self.json)
    }
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the daemon: collect every interval and ship batches until SIGTERM.
    /// Batches go to stdout only with no listener.
    Run {
        #[command(flatten)]
        output: OutputArgs,
        /// Path of the INI config file.
        #[arg(id = "config_path", value_name = "CONFIG")]
        config: Option<PathBuf>,
    },
    /// Run one collection cycle and exit.
    Once {
        /// Print each batch on stdout and send nothing; read the saved statement baseline but
        /// never write it.
        #[arg(long)]
        dry_run: bool,
        #[command(flatten)]
        output: OutputArgs,
        /// Path of the INI config file.
        #[arg(id = "config_path", value_name = "CONFIG")]
        config: Option<PathBuf>,
    },
    /// Check config, database access and privileges, extensions, log access and the listener.
    Check {
        /// Only validate the configuration (file, environment, `*_file` secrets readable); touch
        /// neither the network, the database nor the disk. Exit 0, or 78 with the error. For systemd
        /// `ExecStartPre`, where an outage of the database or listener must not stop the service.
        #[arg(long)]
        config_only: bool,
        /// Path of the INI config file.
        #[arg(id = "config_path", value_name = "CONFIG")]
        config: Option<PathBuf>,
    },
    /// Parse PostgreSQL log files (or stdin) offline and print one JSON entry per line.
    ParseLog {
        /// Log format; auto detects it from the content. syslog reads a file rsyslog wrote.
        #[arg(long, default_value = "auto", value_parser = ["auto", "stderr", "csvlog", "jsonlog", "syslog"])]
        format: String,
        /// log_line_prefix of stderr and syslog logs; inferred from the file when not given.
        #[arg(long, value_name = "P")]
        prefix: Option<String>,
        /// Files to parse; stdin when none.
        files: Vec<PathBuf>,
    },
    /// See the agent work: a throwaway PostgreSQL of its own, a workload, and the agent running
    /// against it. Ctrl-C stops and removes everything.
    ///
    /// Needs the PostgreSQL server binaries (initdb, pg_ctl, postgres): from --pg-bin, else PATH,
    /// else the newest /usr/lib/postgresql/*/bin. Installs nothing; the server lives in a temporary
    /// directory with its own socket and 127.0.0.1 port. As root, the server runs as user postgres
    /// (or nobody).
    Demo {
        /// Directory of the PostgreSQL server binaries.
        #[arg(long, value_name = "DIR")]
        pg_bin: Option<PathBuf>,
        #[command(flatten)]
        output: OutputArgs,
    },
    /// Show outbox depth and age, circuit state, last successful cycle and send.
    ///
    /// Reads the outbox database read-only, so it is safe while the daemon runs.
    Status {
        /// Print the figures as one JSON object instead of text.
        #[arg(long)]
        json: bool,
        /// Path of the INI config file.
        #[arg(id = "config_path", value_name = "CONFIG")]
        config: Option<PathBuf>,
    },
}

pub fn main() -> ExitCode {
    let args = match implicit_run(std::env::args_os().collect()) {
        Ok(args) => args,
        Err(message) => {
            eprintln!("postgres-agent: {message}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let cli = Cli::parse_from(args);
    if let Some(message) = config_given_twice(&cli) {
        eprintln!("postgres-agent: {message}");
        return ExitCode::from(EXIT_USAGE);
    }
    let explicit = |positional: &Option<PathBuf>| positional.clone().or_else(|| cli.config.clone());
    match &cli.command {
        Command::Run { config, output } => {
            with_config_and_log(explicit(config), cli.log_format.clone(), |config, log| {
                // Batches reach stdout only without a listener.
                let filter = (config.listener.url.is_none() && output.format() == Format::Pretty)
                    .then(StdoutFilter::start)
                    .and_then(|f| {
                        f.map_err(|e| eprintln!("postgres-agent: no table view: {e}"))
                            .ok()
                    });
                let code = crate::daemon::run(config.file.clone(), config, log);
                if let Some(f) = filter {
                    f.finish();
                }
                code
            })
        }
        Command::Once {
            config,
            dry_run,
            output,
        } => with_config(explicit(config), cli.log_format.clone(), |config| {
            crate::cli::once::run(&config, *dry_run, output.format())
        }),
        Command::Check {
            config,
            config_only,
        } => with_config(explicit(config), cli.log_format.clone(), |config| {
            if *config_only {
                crate::cli::check::config_only(&config)
            } else {
                crate::cli::check::run(&config)
            }
        }),
        Command::ParseLog {
            format,
            prefix,
            files,
        } => parse_log(cli.config.clone(), format, prefix, files),
        Command::Demo { pg_bin, output } => crate::cli::demo::run(
            pg_bin.clone(),
            output.format() == Format::Pretty,
            cli.log_format.clone(),
        ),
        Command::Status { config, json } => {
            with_config(explicit(config), cli.log_format.clone(), |config| {
                status(&config, *json)
            })
        }
    }
}

/// The Python agent's form `postgres-agent /path/to/config.ini`: a first argument that is neither a
/// subcommand nor a flag is the config path of `run`. A word that is no existing file and looks like
/// no path (no `/`, no `.`) is a mistyped command: an error naming the closest command.
fn implicit_run(mut args: Vec<OsString>) -> Result<Vec<OsString>, String> {
    let Some(first) = args.get(1) else {
        return Ok(args);
    };
    let commands: Vec<String> = Cli::command()
        .get_subcommands()
        .flat_map(|c| {
            std::iter::once(c.get_name().to_string()).chain(c.get_all_aliases().map(str::to_string))
        })
        .chain(std::iter::once("help".to_string()))
        .collect();
    let word = first.to_string_lossy();
    if commands.iter().any(|c| *c == word) || word.starts_with('-') {
        return Ok(args);
    }
    let path_like =
        word.contains('/') || word.contains('.') || std::path::Path::new(first).exists();
    if !path_like {
        return Err(unknown_command(&word, &commands));
    }
    args.insert(1, OsString::from("run"));
    Ok(args)
}

/// "unknown command" with the closest command names.
fn unknown_command(word: &str, commands: &[String]) -> String {
    let mut close: Vec<(f64, &String)> = commands
        .iter()
        .map(|c| (strsim::jaro_winkler(word, c), c))
        .filter(|(score, _)| *score > 0.8)
        .collect();
    close.sort_by(|a, b| b.0.total_cmp(&a.0));
    let hint = match close.first() {
        Some((_, c)) => format!("; did you mean '{c}'?"),
        None => String::new(),
    };
    format!(
        "unknown command '{word}'{hint} (commands: {}; a config file path runs the daemon: \
         postgres-agent run CONFIG). See postgres-agent --help",
        commands
            .iter()
            .filter(|c| c.as_str() != "help")
            .cloned()
            .collect::<Vec<_>>()
            .join(", ")
    )
}

/// `--config A` and a CONFIG argument B: an error unless they name the same file.
fn config_given_twice(cli: &Cli) -> Option<String> {
    let positional = match &cli.command {
        Command::Run { config, .. }
        | Command::Once { config, .. }
        | Command::Check { config, .. }
        | Command::Status { config, .. } => config.as_ref(),
        Command::ParseLog { .. } | Command::Demo { .. } => None,
    };
    let (flag, positional) = (cli.config.as_ref()?, positional?);
    let same = match (flag.canonicalize(), positional.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => flag == positional,
    };
    (!same).then(|| {
        format!(
            "the config file is given twice, differently: --config {} and CONFIG {}; give one",
            flag.display(),
            positional.display()
        )
    })
}

fn with_config(
    path: Option<PathBuf>,
    log_format: Option<String>,
    f: impl FnOnce(Config) -> ExitCode,
) -> ExitCode {
    with_config_and_log(path, log_format, |config, _| f(config))
}

/// Loads the configuration and starts logging; the closure also gets the handle that changes the
/// log level on reload.
fn with_config_and_log(
    path: Option<PathBuf>,
    log_format: Option<String>,
    f: impl FnOnce(Config, LogControl) -> ExitCode,
) -> ExitCode {
    match Config::load(path.as_deref()) {
        Ok(mut config) => {
            if let Some(format) = log_format {
                config.logging.format = format;
            }
            let log =
                crate::telemetry::logging::init(&config.logging.level, &config.logging.format);
            config.log_notices();
            f(config, log)
        }
        Err(e) => {
            eprintln!(
                "postgres-agent: configuration error: {}",
                config_message(&e)
            );
            ExitCode::from(EXIT_CONFIG)
        }
    }
}

/// A required key left unset reads as what it is, not as the built-in default's empty value.
fn config_message(e: &ConfigError) -> String {
    match e {
        ConfigError::BadValue {
            origin: Origin::Default,
            section,
            key,
            value,
            reason,
        } if value == "\"\"" => format!(
            "[{section}] {key} is not set, and it is required: {reason}. Set it in the config file \
             ([{section}] {key} = ...) or with BITVILLE_PG_{}_{}",
            section.to_uppercase(),
            key.to_uppercase()
        ),
        e => e.to_string(),
    }
}

fn status(config: &Config, json: bool) -> ExitCode {
    match crate::cli::status::read(config) {
        Ok(report) if json => match serde_json::to_string_pretty(&report) {
            Ok(text) => {
                println!("{text}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("postgres-agent: status: {e}");
                ExitCode::from(1)
            }
        },
        Ok(report) => {
            print!("{}", report.to_text());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("postgres-agent: status: {e}");
            ExitCode::from(1)
        }
    }
}

/// `parse-log` needs no config, but uses `correlation.keys` from one when given or found.
fn parse_log(
    config: Option<PathBuf>,
    format: &str,
    prefix: &Option<String>,
    files: &[PathBuf],
) -> ExitCode {
    use super::parse_log as cli;
    let finisher = match Config::load(config.as_deref()) {
        Ok(c) => crate::logs::settings::finisher(&c),
        Err(e) => {
            eprintln!("postgres-agent: configuration error: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let opts = cli::ParseLogOptions {
        format: format.to_string(),
        prefix: prefix.clone(),
        files: files.to_vec(),
        finisher,
    };
    match cli::run(&opts, std::io::stdout().lock()) {
        Ok(met) => {
            eprintln!("{}", cli::summary(&met));
            ExitCode::SUCCESS
        }
        Err(cli::ParseLogError::Write(e)) if e.kind() == std::io::ErrorKind::BrokenPipe => {
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("postgres-agent: parse-log: {e}");
            ExitCode::FAILURE
        }
    }
}
