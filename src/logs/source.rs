//! Where the server log is: a file, or a directory of rotated files in one format; found from
//! `logs.path`, or asked from the server (`data_directory`, `log_directory`, `log_destination`,
//! `log_line_prefix`).
//!
//! In a directory, files of the followed format are ordered by (modification time, name): the
//! logging collector creates a new file before it stops writing the old one, so a newer file means
//! the current one is finished once it has been read to its end.
//!
//! It also says which file is which ([`FileId`], [`fingerprint`]), for the position and the marks
//! that record how far each file was read; it does not persist anything.

use std::fs::{self, File};
use std::io::{self, Read};
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use crate::db::{DbError, Session};
use crate::log_format::LogFormat;

/// The identity of an open file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileId {
    pub dev: u64,
    pub ino: u64,
}

impl FileId {
    pub fn of(meta: &fs::Metadata) -> FileId {
        FileId {
            dev: meta.dev(),
            ino: meta.ino(),
        }
    }
}

/// FNV-1a of the first `max` bytes of the file (fewer when it is shorter), and how many were read.
pub fn fingerprint(path: &Path, max: usize) -> io::Result<(u64, u32)> {
    let mut f = open_regular(path)?;
    let mut buf = vec![0u8; max];
    let mut n = 0;
    while n < max {
        match f.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(fnv(&buf[..n]))
}

/// [`fingerprint`] of a file already open (whatever its path holds now), without moving its
/// offset.
pub fn fingerprint_open(f: &File, max: usize) -> io::Result<(u64, u32)> {
    use std::os::unix::fs::FileExt;
    let mut buf = vec![0u8; max];
    let mut n = 0;
    while n < max {
        match f.read_at(&mut buf[n..], n as u64)? {
            0 => break,
            k => n += k,
        }
    }
    Ok(fnv(&buf[..n]))
}

fn fnv(bytes: &[u8]) -> (u64, u32) {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h = (h ^ *b as u64).wrapping_mul(0x0000_0100_0000_01b3);
    }
    (h, bytes.len() as u32)
}

/// What a file type is, for messages: "a FIFO (named pipe)", "a directory", ...
pub fn describe(ft: fs::FileType) -> &'static str {
    if ft.is_file() {
        "a regular file"
    } else if ft.is_dir() {
        "a directory"
    } else if ft.is_fifo() {
        "a FIFO (named pipe)"
    } else if ft.is_socket() {
        "a socket"
    } else if ft.is_char_device() {
        "a character device"
    } else if ft.is_block_device() {
        "a block device"
    } else {
        "not a regular file"
    }
}

/// Opens a log file for reading, never blocking: only a regular file is opened. The type is
/// checked before opening, the open itself is non-blocking (so a path swapped for a FIFO in between
/// cannot hang the agent, whose runtime is one thread) and the opened file is checked again; then
/// blocking mode is restored for the reads.
pub fn open_regular(path: &Path) -> io::Result<File> {
    let not_regular = |ft: fs::FileType| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{}, not a regular file", describe(ft)),
        )
    };
    let meta = fs::metadata(path)?;
    if !meta.is_file() {
        return Err(not_regular(meta.file_type()));
    }
    let file = fs::OpenOptions::new()
        .read(true)
        .custom_flags(rustix::fs::OFlags::NONBLOCK.bits() as i32)
        .open(path)?;
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(not_regular(meta.file_type()));
    }
    let flags = rustix::fs::fcntl_getfl(&file)?;
    rustix::fs::fcntl_setfl(&file, flags - rustix::fs::OFlags::NONBLOCK)?;
    Ok(file)
}

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
        None => matches!(format, LogFormat::Stderr | LogFormat::Syslog) && !name.starts_with('.'),
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

/// Why the server's logging could not be learned.
#[derive(Debug, thiserror::Error)]
pub enum DiscoverError {
    #[error(transparent)]
    Db(#[from] DbError),
    /// `data_directory` and `log_directory` are shown only to superusers and members of
    /// `pg_read_all_settings` (which `pg_monitor` includes).
    #[error(
        "the server's log location is hidden from role {role}: log_directory and data_directory \
         are shown only to superusers and members of pg_read_all_settings (included in pg_monitor); \
         GRANT pg_read_all_settings TO \"{role}\", or set [logs] path to the server's log directory"
    )]
    Hidden { role: String },
}

/// Asks the server where and how it logs; prefers jsonlog, then csvlog, then stderr. Reads
/// pg_settings, which hides superuser-only settings from other roles instead of raising an error
/// (an error would land in the very log the agent reads, every time it asks).
pub async fn discover(session: &mut Session) -> Result<ServerLogging, DiscoverError> {
    let rows = session
        .query(
            "log_settings",
            "SELECT current_user::text, \
             (SELECT setting FROM pg_settings WHERE name = 'data_directory'), \
             (SELECT setting FROM pg_settings WHERE name = 'log_directory'), \
             (SELECT setting FROM pg_settings WHERE name = 'log_destination'), \
             (SELECT setting FROM pg_settings WHERE name = 'log_line_prefix'), \
             (SELECT setting FROM pg_settings WHERE name = 'logging_collector')",
            &[],
        )
        .await?;
    let get = |i: usize| -> Option<String> {
        rows.first()
            .and_then(|r| r.try_get::<_, Option<String>>(i).ok().flatten())
    };
    let role = get(0).unwrap_or_default();
    let (data_dir, log_dir) = (get(1), get(2));
    let (dest, prefix, collector) = (
        get(3).unwrap_or_default(),
        get(4).unwrap_or_default(),
        get(5).unwrap_or_default(),
    );
    let dests: Vec<String> = dest.split(',').map(|d| d.trim().to_lowercase()).collect();
    let format = if dests.iter().any(|d| d == "jsonlog") {
        LogFormat::Jsonlog
    } else if dests.iter().any(|d| d == "csvlog") {
        LogFormat::Csvlog
    } else {
        LogFormat::Stderr
    };
    let dir = match (log_dir, data_dir) {
        (Some(log), _) if Path::new(&log).is_absolute() => PathBuf::from(log),
        (Some(log), Some(data)) => Path::new(&data).join(log),
        _ => return Err(DiscoverError::Hidden { role }),
    };
    Ok(ServerLogging {
        dir,
        format,
        prefix,
        logging_collector: collector == "on",
    })
}
