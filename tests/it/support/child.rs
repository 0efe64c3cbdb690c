//! The real binary as a child process: its stdout lines collected in the background, signals sent to
//! it, its exit awaited with a deadline.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub struct AgentChild {
    pub child: Child,
    pub stdout: Arc<Mutex<Vec<String>>>,
    pub stderr: Arc<Mutex<Vec<String>>>,
    /// The threads reading stdout and stderr: joined once the process has exited, so that
    /// everything it wrote is collected before a test reads it.
    readers: Vec<std::thread::JoinHandle<()>>,
}

impl AgentChild {
    /// Starts `postgres-agent ARGS` with a clean environment plus `env`.
    pub fn spawn(args: &[&str], env: &[(&str, &str)]) -> AgentChild {
        AgentChild::spawn_wrapped(&[], args, env)
    }

    /// [`AgentChild::spawn`] under a wrapper command, e.g. `["prlimit", "--fsize=65536", "--"]`.
    pub fn spawn_wrapped(wrapper: &[&str], args: &[&str], env: &[(&str, &str)]) -> AgentChild {
        let agent = env!("CARGO_BIN_EXE_postgres-agent");
        let mut cmd = match wrapper.split_first() {
            Some((program, rest)) => {
                let mut c = Command::new(program);
                c.args(rest).arg(agent);
                c
            }
            None => Command::new(agent),
        };
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, _) in std::env::vars() {
            if k.starts_with("BITVILLE_PG_")
                || k.starts_with("PG")
                || k == "RUST_LOG"
                || k == "NOTIFY_SOCKET"
                || k.starts_with("WATCHDOG_")
            {
                cmd.env_remove(k);
            }
        }
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn postgres-agent");
        let stdout = Arc::new(Mutex::new(Vec::new()));
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let out = child.stdout.take().expect("stdout");
        let err = child.stderr.take().expect("stderr");
        let mut readers = Vec::new();
        for (pipe, sink) in [
            (
                Box::new(out) as Box<dyn std::io::Read + Send>,
                stdout.clone(),
            ),
            (Box::new(err), stderr.clone()),
        ] {
            readers.push(std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                    sink.lock().unwrap().push(line);
                }
            }));
        }
        AgentChild {
            child,
            stdout,
            stderr,
            readers,
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn signal(&self, sig: &str) {
        let status = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.pid().to_string())
            .status()
            .unwrap();
        assert!(status.success(), "kill -{sig}");
    }

    /// SIGTERM, then asserts a clean exit (status 0) within `limit`; returns how long it took.
    pub fn terminate_within(&mut self, limit: Duration) -> Duration {
        self.signal("TERM");
        let (status, took) = self.wait_exit(Duration::from_secs(10));
        assert_eq!(status.code(), Some(0), "{}", self.stderr_text());
        assert!(took < limit, "SIGTERM to exit took {took:?}");
        took
    }

    /// Waits until a stdout or stderr line satisfies `pred`, or panics after `timeout`.
    pub fn wait_for_line(
        &self,
        timeout: Duration,
        what: &str,
        pred: impl Fn(&str) -> bool,
    ) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            for sink in [&self.stdout, &self.stderr] {
                if let Some(l) = sink.lock().unwrap().iter().find(|l| pred(l)) {
                    return l.clone();
                }
            }
            if Instant::now() > deadline {
                panic!(
                    "timed out waiting for {what}; stderr:\n{}",
                    self.stderr.lock().unwrap().join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits for exit up to `timeout`; returns the status and how long it took.
    pub fn wait_exit(&mut self, timeout: Duration) -> (ExitStatus, Duration) {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                let took = start.elapsed();
                self.collect_output();
                return (status, took);
            }
            if start.elapsed() > timeout {
                let _ = self.child.kill();
                panic!(
                    "agent did not exit within {timeout:?}; stderr:\n{}",
                    self.stderr.lock().unwrap().join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Waits (up to 10 s) for the reader threads to reach the end of the exited process's output.
    fn collect_output(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.readers.iter().any(|r| !r.is_finished()) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        for r in std::mem::take(&mut self.readers) {
            if r.is_finished() {
                let _ = r.join();
            }
        }
    }

    pub fn stdout_lines(&self) -> Vec<String> {
        self.stdout.lock().unwrap().clone()
    }

    pub fn stderr_text(&self) -> String {
        self.stderr.lock().unwrap().join("\n")
    }
}

impl Drop for AgentChild {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
