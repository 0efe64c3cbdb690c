//! A plain HTTP GET on the agent's telemetry port (`/health`, `/metrics`), with a read deadline, so a
//! test can tell an answer from a hang.

use std::io::{Read, Write};
use std::time::Duration;

/// GET `path` on 127.0.0.1:`port`: (status, body), or None when nothing answered within `deadline`.
pub fn get(port: u16, path: &str, deadline: Duration) -> Option<(u16, String)> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(deadline)).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    let status = out.split_whitespace().nth(1)?.parse().ok()?;
    Some((
        status,
        out.split("\r\n\r\n").nth(1).unwrap_or("").to_string(),
    ))
}
