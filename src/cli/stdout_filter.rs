//! `run --pretty` (or `run` on a terminal) with no listener: the daemon writes its batches to stdout
//! as JSON lines, as always; this puts a pipe between the daemon's stdout and the terminal and a
//! thread that turns each batch line into its table ([`super::pretty::filter`]). The daemon and the
//! shipper are not told: the view is only a view.

use std::fs::File;
use std::io::BufReader;
use std::os::fd::{FromRawFd, RawFd};
use std::thread::JoinHandle;

/// The filter in place; [`StdoutFilter::finish`] restores stdout and waits for the last table.
pub struct StdoutFilter {
    thread: Option<JoinHandle<()>>,
    /// A copy of the original stdout, put back at the end.
    original: RawFd,
}

fn check(rc: libc::c_int) -> std::io::Result<libc::c_int> {
    if rc < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

impl StdoutFilter {
    /// Redirects stdout (fd 1) into a pipe read by the filter thread, which writes to the original.
    pub fn start() -> std::io::Result<StdoutFilter> {
        let width = super::pretty::width();
        let mut fds = [0 as libc::c_int; 2];
        // SAFETY: pipe2, dup and dup2 only create or replace descriptors; each one created here is
        // owned by exactly one File (or kept in `original` and closed in `finish`).
        unsafe {
            check(libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC))?;
            let terminal = check(libc::fcntl(1, libc::F_DUPFD_CLOEXEC, 3))?;
            let original = check(libc::fcntl(1, libc::F_DUPFD_CLOEXEC, 3))?;
            check(libc::dup2(fds[1], 1))?;
            libc::close(fds[1]);
            let reader = BufReader::new(File::from_raw_fd(fds[0]));
            let terminal = File::from_raw_fd(terminal);
            let thread = std::thread::Builder::new()
                .name("pretty-stdout".into())
                .spawn(move || {
                    if let Err(e) = super::pretty::filter(reader, terminal, width) {
                        eprintln!("postgres-agent: the table view stopped: {e}");
                    }
                })?;
            Ok(StdoutFilter {
                thread: Some(thread),
                original,
            })
        }
    }

    /// Puts the original stdout back (closing the pipe) and waits until the filter has written
    /// everything the daemon printed.
    pub fn finish(mut self) {
        use std::io::Write;
        let _ = std::io::stdout().flush();
        // SAFETY: fd 1 is replaced by the copy of the original; the copy is then closed once.
        unsafe {
            libc::dup2(self.original, 1);
            libc::close(self.original);
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
