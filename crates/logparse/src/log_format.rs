//! The server log formats by name: `[logs] format`, `parse-log --format`, and what a log file's
//! extension says. A pure leaf shared by the agent's config (which holds the configured format as a
//! value) and [`crate::parse`] (which has one parser per format); it owns the names and nothing of
//! the parsing.

/// A server log format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Stderr,
    Csvlog,
    Jsonlog,
    /// `log_destination = syslog`, as rsyslog writes it to a file.
    Syslog,
}

impl LogFormat {
    /// Parses `stderr`, `csvlog` or `jsonlog`.
    pub fn from_name(name: &str) -> Option<LogFormat> {
        match name {
            "stderr" => Some(LogFormat::Stderr),
            "csvlog" | "csv" => Some(LogFormat::Csvlog),
            "jsonlog" | "json" => Some(LogFormat::Jsonlog),
            "syslog" => Some(LogFormat::Syslog),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            LogFormat::Stderr => "stderr",
            LogFormat::Csvlog => "csvlog",
            LogFormat::Jsonlog => "jsonlog",
            LogFormat::Syslog => "syslog",
        }
    }

    /// The format PostgreSQL writes to a file with this name's extension, if it says.
    pub fn from_file_name(name: &str) -> Option<LogFormat> {
        if name.ends_with(".json") {
            Some(LogFormat::Jsonlog)
        } else if name.ends_with(".csv") {
            Some(LogFormat::Csvlog)
        } else {
            None
        }
    }
}
