//! Where the server log is: a file, or a directory of rotated files in one format; found from
//! `logs.path`, or asked from the server (`data_directory`, `log_directory`, `log_destination`,
//! `log_line_prefix`).
//!
//! In a directory, files of the followed format are ordered by (modification time, name): the
//! logging collector creates a new file before it stops writing the old one, so a newer file means
//! the current one is finished once it has been read to its end.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use super::parse::LogFormat;
use super::position::FileId;
use crate::db::{DbError, Session};

/// What to follow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogSource {
    /// One file, reopened by path when it is replaced (logrotate's create mode).
    File(PathBuf),
    /// Every file of `format` in a directory.
    Dir { dir: PathBuf, format: LogFormat },
}

/// One log file seen in a directory listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogFile {
    pub path: PathBuf,
    pub id: FileId,
    pub modified: SystemTime,
    pub size: u64,
}

impl LogFile {
    pub fn order_key(&self) -> (SystemTime, &Path) {
        (self.modified, &self.path)
    }
}

/// True when a file named `name` holds `format`: `.csv` csvlog, `.json` jsonlog, anything else stderr.
pub fn holds(format: LogFormat, name: &str) -> bool {
    match LogFormat::from_file_name(name) {
        Some(f) => f == format,
        None => format == LogFormat::Stderr && !name.starts_with('.'),
    }
}

impl LogSource {
    /// The files to consider, oldest first.
    pub fn files(&self) -> std::io::Result<Vec<LogFile>> {
        let mut out = Vec::new();
        let mut add = |path: PathBuf| {
            if let Ok(meta) = fs::metadata(&path) {
                if meta.is_file() {
                    out.push(LogFile {
                        id: FileId::of(&meta),
                        modified: meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
                        size: meta.len(),
                        path,
                    });
                }
            }
        };
        match self {
            LogSource::File(p) => add(p.clone()),
            LogSource::Dir { dir, format } => {
                for e in fs::read_dir(dir)? {
                    let e = e?;
                    let name = e.file_name();
                    if holds(*format, &name.to_string_lossy()) {
                        add(e.path());
                    }
                }
            }
        }
        out.sort_by(|a, b| a.order_key().cmp(&b.order_key()));
        Ok(out)
    }
}

/// What the server says about its logging.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerLogging {
    pub dir: PathBuf,
    pub format: LogFormat,
    pub prefix: String,
    pub logging_collector: bool,
}

/// Asks the server where and how it logs; prefers jsonlog, then csvlog, then stderr.
pub async fn discover(session: &mut Session) -> Result<ServerLogging, DbError> {
    let rows = session
        .query(
            "log_settings",
            "SELECT current_setting('data_directory'), current_setting('log_directory'), \
             current_setting('log_destination'), current_setting('log_line_prefix'), \
             current_setting('logging_collector')",
            &[],
        )
        .await?;
    let get = |i: usize| -> String {
        rows.first()
            .and_then(|r| r.try_get::<_, String>(i).ok())
            .unwrap_or_default()
    };
    let (data_dir, log_dir, dest, prefix, collector) = (get(0), get(1), get(2), get(3), get(4));
    let dests: Vec<String> = dest.split(',').map(|d| d.trim().to_lowercase()).collect();
    let format = if dests.iter().any(|d| d == "jsonlog") {
        LogFormat::Jsonlog
    } else if dests.iter().any(|d| d == "csvlog") {
        LogFormat::Csvlog
    } else {
        LogFormat::Stderr
    };
    let log_dir = Path::new(&log_dir);
    let dir = if log_dir.is_absolute() {
        log_dir.to_path_buf()
    } else {
        Path::new(&data_dir).join(log_dir)
    };
    Ok(ServerLogging {
        dir,
        format,
        prefix,
        logging_collector: collector == "on",
    })
}
