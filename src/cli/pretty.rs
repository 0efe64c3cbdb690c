//! The human view of batches: a compact table per batch, the way `pg_activity` or `top` shows a
//! moment of the server, for `once` and `run` on a terminal or with `--pretty`. JSON lines stay the
//! default on pipes (and with `--json`), and stay what is shipped: this is only how stdout shows them.
//!
//! It reads the batch as JSON (the documented wire form, docs/schema/), so it needs no knowledge of the
//! collectors' types, and never fails: a field it does not find is shown as `-`.

use std::fmt::Write as _;
use std::io::{BufRead, IsTerminal, Write};

use serde_json::Value;

mod sampled;

/// How batches are written to stdout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// One JSON object per line (what a pipe gets by default).
    Json,
    /// A table per batch.
    Pretty,
}

impl Format {
    /// `--json` wins, then `--pretty`; otherwise tables on a terminal and JSON elsewhere.
    pub fn choose(pretty: bool, json: bool) -> Format {
        if json {
            Format::Json
        } else if pretty || std::io::stdout().is_terminal() {
            Format::Pretty
        } else {
            Format::Json
        }
    }
}

/// Rows shown per table; the rest is counted.
const MAX_ROWS: usize = 15;

/// The width of the terminal on stdout, else `COLUMNS`, else 120.
pub fn width() -> usize {
    let mut ws = libc::winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCGWINSZ writes one `winsize` into the struct it is given, which outlives the call.
    let ok = unsafe { libc::ioctl(libc::STDOUT_FILENO, libc::TIOCGWINSZ, &mut ws) } == 0;
    if ok && ws.ws_col >= 40 {
        return usize::from(ws.ws_col);
    }
    std::env::var("COLUMNS")
        .ok()
        .and_then(|c| c.parse().ok())
        .filter(|c| *c >= 40)
        .unwrap_or(120)
}

/// Renders one batch (its JSON form) as a header line and a table.
pub fn render(batch: &Value, width: usize) -> String {
    let kind = batch["type"].as_str().unwrap_or("batch");
    let data = batch["data"].as_array().map(Vec::as_slice).unwrap_or(&[]);
    let mut out = String::new();
    let time = batch["collected_at"]
        .as_str()
        .and_then(|t| t.get(11..19))
        .unwrap_or("");
    let server = match (
        batch["server"]["host"].as_str(),
        batch["server"]["port"].as_u64(),
    ) {
        (Some(h), Some(p)) => format!("  {h}:{p}"),
        _ => String::new(),
    };
    let _ = write!(
        out,
        "── {kind}  {time}  {}{server}",
        plural(data.len(), "record", "records")
    );
    match kind {
        "pg_activity" => activity(&mut out, data, width),
        "pg_statements" => statements(&mut out, batch, data, width),
        "locks" => locks(&mut out, data, width),
        "system_metrics" => system(&mut out, data),
        "pg_logs" => logs(&mut out, data, width),
        "spike" => sampled::spike(&mut out, batch, data, width),
        "pg_activity_samples" => sampled::samples(&mut out, batch, data, width),
        // A kind this view does not know: its records' first fields, so no header stands alone.
        _ => generic(&mut out, data, width),
    }
    // Nothing wider than the terminal: a wrapped line breaks the table.
    let mut fitted = String::with_capacity(out.len());
    for line in out.lines() {
        fitted.push_str(&fit(line, width));
        fitted.push('\n');
    }
    fitted
}

/// Writes each batch to stdout in `format`.
pub fn print(batches: &[Value], format: Format) -> std::io::Result<()> {
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let width = width();
    for batch in batches {
        match format {
            Format::Json => {
                serde_json::to_writer(&mut out, batch)?;
                out.write_all(b"\n")?;
            }
            Format::Pretty => out.write_all(render(batch, width).as_bytes())?,
        }
    }
    out.flush()
}

/// Copies `input` to `output`, turning each line that is a batch into its table and passing any other
/// line through; ends at the end of `input`. `run` puts this between the daemon's stdout and the
/// terminal.
pub fn filter(input: impl BufRead, mut output: impl Write, width: usize) -> std::io::Result<()> {
    for line in input.lines() {
        let line = line?;
        match serde_json::from_str::<Value>(&line) {
            Ok(batch) if batch.get("type").is_some() && batch.get("data").is_some() => {
                output.write_all(render(&batch, width).as_bytes())?
            }
            _ => writeln!(output, "{line}")?,
        }
        output.flush()?;
    }
    Ok(())
}

/// A number of things, from `usize` or `u64`.
pub struct Count(u64);

impl From<u64> for Count {
    fn from(n: u64) -> Count {
        Count(n)
    }
}

impl From<usize> for Count {
    fn from(n: usize) -> Count {
        Count(u64::try_from(n).unwrap_or(u64::MAX))
    }
}

/// "1 record", "2 records", "0 records".
pub fn plural(n: impl Into<Count>, one: &str, many: &str) -> String {
    let n = n.into().0;
    if n == 1 {
        format!("1 {one}")
    } else {
        format!("{n} {many}")
    }
}

fn text(v: &Value) -> String {
    match v {
        Value::Null => "-".to_string(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// `v` cut to `max` characters (with `…`), control characters and newlines as spaces.
fn fit(v: &str, max: usize) -> String {
    let clean: String = v
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if clean.chars().count() <= max {
        clean
    } else {
        let mut s: String = clean.chars().take(max.saturating_sub(1)).collect();
        s.push('…');
        s
    }
}

fn ms(v: &Value) -> String {
    match v.as_f64() {
        None => "-".to_string(),
        Some(ms) if ms >= 60_000.0 => format!("{:.1}m", ms / 60_000.0),
        Some(ms) if ms >= 1_000.0 => format!("{:.1}s", ms / 1_000.0),
        Some(ms) => format!("{ms:.0}ms"),
    }
}

fn bytes(v: &Value) -> String {
    let Some(b) = v.as_f64() else {
        return "-".to_string();
    };
    let units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut x = b;
    let mut i = 0;
    while x >= 1024.0 && i < units.len() - 1 {
        x /= 1024.0;
        i += 1;
    }
    format!("{x:.1} {}", units[i])
}

/// The header row and the rows, columns padded to their widest cell; the last column takes what is
/// left of `width`.
fn table(out: &mut String, header: &[&str], rows: Vec<Vec<String>>, width: usize, more: usize) {
    if rows.is_empty() {
        out.push_str("  (none)\n");
        return;
    }
    out.push('\n');
    let n = header.len();
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in &rows {
        for (i, cell) in r.iter().enumerate().take(n - 1) {
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    let used: usize = widths[..n - 1].iter().map(|w| w + 2).sum();
    let last = width.saturating_sub(used).max(20);
    let line = |cells: Vec<String>| {
        let mut l = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == n {
                l.push_str(&fit(c, last));
            } else {
                let _ = write!(l, "{:<w$}  ", fit(c, widths[i]), w = widths[i]);
            }
        }
        l.trim_end().to_string()
    };
    let _ = writeln!(
        out,
        "{}",
        line(header.iter().map(|h| h.to_string()).collect())
    );
    for r in rows {
        let _ = writeln!(out, "{}", line(r));
    }
    if more > 0 {
        let _ = writeln!(out, "… {more} more");
    }
}

/// A session's wait column: `type:event`, or `-` when it waits on nothing.
fn wait(r: &Value) -> String {
    match (r["wait_event_type"].as_str(), r["wait_event"].as_str()) {
        (Some(t), Some(e)) => format!("{t}:{e}"),
        _ => "-".to_string(),
    }
}

/// The first [`MAX_ROWS`] of `data` by `key`, largest first, and how many were left out.
fn top<'a>(data: &'a [Value], key: &str) -> (Vec<&'a Value>, usize) {
    let mut rows = sorted_by(data, key);
    let more = rows.len().saturating_sub(MAX_ROWS);
    rows.truncate(MAX_ROWS);
    (rows, more)
}

fn sorted_by<'a>(data: &'a [Value], key: &str) -> Vec<&'a Value> {
    let mut rows: Vec<&Value> = data.iter().collect();
    rows.sort_by(|a, b| {
        let (a, b) = (
            a[key].as_f64().unwrap_or(f64::MIN),
            b[key].as_f64().unwrap_or(f64::MIN),
        );
        b.total_cmp(&a)
    });
    rows
}

fn activity(out: &mut String, data: &[Value], width: usize) {
    let active = data.iter().filter(|r| r["state"] == "active").count();
    let waiting = data
        .iter()
        .filter(|r| r["blocking_pids"].as_array().is_some_and(|b| !b.is_empty()))
        .count();
    // Sessions, as pg_activity shows them; background processes are only counted.
    let sessions: Vec<Value> = data
        .iter()
        .filter(|r| r["backend_type"] == "client backend" || r["state"].is_string())
        .cloned()
        .collect();
    let _ = write!(
        out,
        "  {active} active, {waiting} blocked, {} background",
        data.len() - sessions.len()
    );
    let (rows, more) = top(&sessions, "query_duration_ms");
    let rows = rows
        .into_iter()
        .map(|r| {
            vec![
                text(&r["pid"]),
                text(&r["usename"]),
                text(&r["datname"]),
                text(&r["state"]),
                wait(r),
                ms(&r["query_duration_ms"]),
                text(&r["query"]),
            ]
        })
        .collect();
    table(
        out,
        &["PID", "USER", "DB", "STATE", "WAIT", "TIME", "QUERY"],
        rows,
        width,
        more,
    );
}

fn statements(out: &mut String, batch: &Value, data: &[Value], width: usize) {
    if batch["baseline"] == "new" {
        let _ = writeln!(
            out,
            "  baseline new: statement deltas start with the next cycle"
        );
        return;
    }
    let (rows, more) = top(data, "total_exec_time_ms");
    let rows = rows
        .into_iter()
        .map(|r| {
            vec![
                text(&r["calls"]),
                ms(&r["total_exec_time_ms"]),
                ms(&r["mean_exec_time_ms"]),
                text(&r["rows"]),
                text(&r["query"]),
            ]
        })
        .collect();
    table(
        out,
        &["CALLS", "TOTAL", "MEAN", "ROWS", "QUERY"],
        rows,
        width,
        more,
    );
}

fn locks(out: &mut String, data: &[Value], width: usize) {
    let (rows, more) = top(data, "waiting_ms");
    let rows = rows
        .into_iter()
        .map(|r| {
            let by: Vec<String> = r["blocked_by"]
                .as_array()
                .map(|b| b.iter().map(|x| text(&x["pid"])).collect())
                .unwrap_or_default();
            vec![
                text(&r["pid"]),
                text(&r["mode"]),
                text(&r["relation_name"]),
                ms(&r["waiting_ms"]),
                if by.is_empty() {
                    "-".to_string()
                } else {
                    by.join(",")
                },
                text(&r["query"]),
            ]
        })
        .collect();
    table(
        out,
        &["PID", "MODE", "RELATION", "WAITING", "BLOCKED BY", "QUERY"],
        rows,
        width,
        more,
    );
}

fn system(out: &mut String, data: &[Value]) {
    let Some(m) = data.first() else {
        out.push_str("  (none)\n");
        return;
    };
    out.push('\n');
    let pct = |v: &Value| v.as_f64().map_or("-".to_string(), |p| format!("{p:.0}%"));
    let cpu = &m["cpu"];
    let _ = writeln!(
        out,
        "cpu  {} user  {} system  {} iowait  {} steal  ({} cores)   load {} {} {}",
        pct(&cpu["user_percent"]),
        pct(&cpu["system_percent"]),
        pct(&cpu["iowait_percent"]),
        pct(&cpu["steal_percent"]),
        text(&cpu["cores"]),
        text(&m["load"]["load1"]),
        text(&m["load"]["load5"]),
        text(&m["load"]["load15"]),
    );
    let mem = &m["memory"];
    let _ = writeln!(
        out,
        "mem  {} used of {}, {} available   swap {} used of {}",
        bytes(&mem["used_bytes"]),
        bytes(&mem["total_bytes"]),
        bytes(&mem["available_bytes"]),
        bytes(&mem["swap_used_bytes"]),
        bytes(&mem["swap_total_bytes"]),
    );
    for fs in m["filesystems"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or(&[])
    {
        let _ = writeln!(
            out,
            "fs   {:<15} {} ({}): {} available of {}",
            text(&fs["role"]),
            text(&fs["path"]),
            text(&fs["mount_point"]),
            bytes(&fs["available_bytes"]),
            bytes(&fs["total_bytes"]),
        );
    }
    for d in m["disks"].as_array().map(Vec::as_slice).unwrap_or(&[]) {
        let _ = writeln!(
            out,
            "disk {:<15} read {}/s  write {}/s  busy {}",
            text(&d["device"]),
            bytes(&d["read_bytes_per_s"]),
            bytes(&d["write_bytes_per_s"]),
            pct(&d["busy_percent"]),
        );
    }
}

fn logs(out: &mut String, data: &[Value], width: usize) {
    let more = data.len().saturating_sub(MAX_ROWS);
    let rows = data
        .iter()
        .take(MAX_ROWS)
        .map(|e| {
            vec![
                text(&e["timestamp"]).get(11..23).unwrap_or("-").to_string(),
                text(&e["error_severity"]),
                text(&e["user"]),
                text(&e["message"]),
            ]
        })
        .collect();
    table(
        out,
        &["TIME", "SEVERITY", "USER", "MESSAGE"],
        rows,
        width,
        more,
    );
}

/// Records of a kind this view has no table for: each one's fields as `key=value`.
fn generic(out: &mut String, data: &[Value], width: usize) {
    let more = data.len().saturating_sub(MAX_ROWS);
    let rows = data
        .iter()
        .take(MAX_ROWS)
        .map(|r| {
            let fields = r
                .as_object()
                .map(|o| {
                    o.iter()
                        .map(|(k, v)| format!("{k}={}", text(v)))
                        .collect::<Vec<_>>()
                        .join(" ")
                })
                .unwrap_or_else(|| text(r));
            vec![fields]
        })
        .collect();
    table(out, &["RECORD"], rows, width, more);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_table_fits_the_width_and_counts_what_it_leaves_out() {
        let data: Vec<Value> = (0..20)
            .map(|i| {
                serde_json::json!({"pid": i, "usename": "app", "datname": "db", "state": "active",
                    "backend_type": "client backend",
                    "query_duration_ms": f64::from(i) * 1000.0, "query": "SELECT ".repeat(50)})
            })
            .collect();
        let batch = serde_json::json!({"type": "pg_activity", "collected_at": "2026-11-28T23:44:58.000Z",
            "server": {"host": "/run/postgresql", "port": 5432}, "data": data});
        let text = render(&batch, 80);
        assert!(text.starts_with("── pg_activity  23:44:58  20 records  /run/postgresql:5432"));
        assert!(text.lines().all(|l| l.chars().count() <= 80), "{text}");
        // Longest first; 15 shown, 5 counted.
        assert!(text.lines().nth(2).unwrap().starts_with("19 "), "{text}");
        assert!(text.contains("… 5 more"), "{text}");
    }

    #[test]
    fn every_kind_shows_rows_under_its_header_and_counts_in_the_singular_for_one() {
        let spike = serde_json::json!({"type": "spike", "trigger": "lock_wait_ms",
            "trigger_value": 1500.0, "trigger_threshold": 1000.0,
            "locks": {"waiting": 1, "waiting_locks": [{"pid": 2}]},
            "data": [{"pid": 7, "state": "active", "query_duration_ms": 1500.0,
                "wait_event_type": "Lock", "wait_event": "relation",
                "correlation": {"id": "0b1e6f5e-6c43-4d7e-9a43-6a1f2c3d4e5f"}, "query": "UPDATE t SET x = $1"}]});
        let text = render(&spike, 160);
        assert!(text.contains("1 record"), "{text}");
        assert!(!text.contains("1 records"), "{text}");
        assert!(text.contains("trigger lock_wait_ms = 1500.0"), "{text}");
        assert!(
            text.contains("1 waiting lock,") || text.contains("1 waiting lock"),
            "{text}"
        );
        assert!(
            text.contains("0b1e6f5e-6c43-4d7e-9a43-6a1f2c3d4e5f"),
            "{text}"
        );
        let samples = serde_json::json!({"type": "pg_activity_samples", "samples": 60,
            "avg_active_sessions": 0.5, "max_active_sessions": 2,
            "data": [{"avg_active_sessions": 0.5, "peak_sessions": 2, "state": "active",
                "query": "SELECT pg_sleep($1)"}]});
        let text = render(&samples, 160);
        assert!(
            text.contains("60 samples taken") && text.contains("SELECT pg_sleep"),
            "{text}"
        );
        let empty = serde_json::json!({"type": "system_metrics", "data": []});
        assert!(render(&empty, 100).contains("0 records  (none)"));
        let unknown = serde_json::json!({"type": "new_kind", "data": [{"a": 1}]});
        assert!(render(&unknown, 100).contains("a=1"));
    }

    #[test]
    fn lines_that_are_not_batches_pass_through_the_filter() {
        let input = "not json\n{\"type\":\"locks\",\"data\":[]}\n";
        let mut out = Vec::new();
        filter(input.as_bytes(), &mut out, 100).unwrap();
        let out = String::from_utf8(out).unwrap();
        assert!(out.starts_with("not json\n── locks"), "{out}");
    }
}
