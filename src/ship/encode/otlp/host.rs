//! Host metrics of the `otlp` protocol: one `system_metrics` record under the `system.*` names and
//! attributes of the OpenTelemetry system semantic conventions (docs/otlp.md, "Host metrics");
//! rates measured over the interval become the interval's counts (delta sums); with them the
//! agent's own counters.

use serde_json::{Map, Value};

use super::metrics::{point, Builder, Kind, Num};
use super::proto::{kv_str, KeyValue, Metric};
use super::resource::{attr, collected_nanos};
use super::Context;
use crate::batch::Batch;

/// The host metrics of a system_metrics batch under `system.*` names, and the agent's own
/// counters as cumulative sums `postgres_agent.<name>`.
pub fn system(batch: &Batch, ctx: &Context<'_>) -> Vec<Metric> {
    let time = collected_nanos(batch);
    let mut b = Builder::default();
    for record in &batch.data {
        let Ok(Value::Object(m)) = record.to_value() else {
            continue;
        };
        let secs = m
            .get("interval_s")
            .and_then(Value::as_f64)
            .unwrap_or(batch.interval_s as f64);
        let start = time.saturating_sub((secs * 1e9) as u64);
        host(&mut b, &m, start, time, secs);
    }
    if let Some(counters) = ctx.counters {
        for (name, value) in counters {
            b.add(
                &format!("postgres_agent.{name}"),
                "1",
                "The agent's own counter (docs/operations.md)",
                Kind::CumulativeSum,
                point(
                    Vec::new(),
                    ctx.process_start_ns,
                    time,
                    Num::Int(*value as i64),
                ),
            );
        }
    }
    b.finish()
}

fn obj<'a>(m: &'a Map<String, Value>, key: &str) -> Option<&'a Map<String, Value>> {
    m.get(key).and_then(Value::as_object)
}

fn f(m: &Map<String, Value>, key: &str) -> Option<f64> {
    m.get(key).and_then(Value::as_f64)
}

fn host(b: &mut Builder, m: &Map<String, Value>, start: u64, time: u64, secs: f64) {
    let gauge = |b: &mut Builder, name, unit, attrs: Vec<KeyValue>, n| {
        b.add(name, unit, "", Kind::Gauge, point(attrs, start, time, n));
    };
    let delta = |b: &mut Builder, name, unit, attrs: Vec<KeyValue>, n| {
        b.add(name, unit, "", Kind::DeltaSum, point(attrs, start, time, n));
    };
    if let Some(cpu) = obj(m, "cpu") {
        for mode in ["user", "system", "iowait", "steal", "idle"] {
            if let Some(p) = f(cpu, &format!("{mode}_percent")) {
                let a = vec![kv_str("cpu.mode", mode)];
                gauge(b, "system.cpu.utilization", "1", a, Num::Double(p / 100.0));
            }
        }
        if let Some(n) = cpu.get("cores").and_then(Value::as_i64) {
            gauge(b, "system.cpu.logical.count", "{cpu}", vec![], Num::Int(n));
        }
    }
    if let Some(load) = obj(m, "load") {
        for (key, name) in [
            ("load1", "system.cpu.load_average.1m"),
            ("load5", "system.cpu.load_average.5m"),
            ("load15", "system.cpu.load_average.15m"),
        ] {
            if let Some(v) = f(load, key) {
                gauge(b, name, "{thread}", vec![], Num::Double(v));
            }
        }
    }
    if let Some(mem) = obj(m, "memory") {
        let i = |k: &str| mem.get(k).and_then(Value::as_i64);
        if let Some(t) = i("total_bytes") {
            gauge(b, "system.memory.limit", "By", vec![], Num::Int(t));
        }
        for (key, state) in [
            ("used_bytes", "used"),
            ("available_bytes", "free"),
            ("buffers_bytes", "buffers"),
            ("cached_bytes", "cached"),
        ] {
            if let Some(v) = i(key) {
                let a = vec![kv_str("system.memory.state", state)];
                gauge(b, "system.memory.usage", "By", a, Num::Int(v));
            }
        }
        if let (Some(t), Some(u)) = (i("swap_total_bytes"), i("swap_used_bytes")) {
            for (state, v) in [("used", u), ("free", t.saturating_sub(u))] {
                let a = vec![kv_str("system.paging.state", state)];
                gauge(b, "system.paging.usage", "By", a, Num::Int(v));
            }
        }
    }
    for fs in m
        .get("filesystems")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let Some(fs) = fs.as_object() else { continue };
        let base: Vec<KeyValue> = [
            attr("system.device", fs.get("device")),
            attr("system.filesystem.mountpoint", fs.get("mount_point")),
            attr("system.filesystem.type", fs.get("fs_type")),
            attr("postgres_agent.filesystem.role", fs.get("role")),
        ]
        .into_iter()
        .flatten()
        .collect();
        let i = |k: &str| fs.get(k).and_then(Value::as_i64);
        if let (Some(total), Some(free), Some(avail)) =
            (i("total_bytes"), i("free_bytes"), i("available_bytes"))
        {
            for (state, v) in [
                ("used", total - free),
                ("free", avail),
                ("reserved", free - avail),
            ] {
                let mut a = base.clone();
                a.push(kv_str("system.filesystem.state", state));
                gauge(b, "system.filesystem.usage", "By", a, Num::Int(v));
            }
        }
        if let (Some(total), Some(free)) = (i("inodes_total"), i("inodes_free")) {
            for (state, v) in [("used", total - free), ("free", free)] {
                let mut a = base.clone();
                a.push(kv_str("system.filesystem.state", state));
                gauge(
                    b,
                    "system.filesystem.inodes.usage",
                    "{inode}",
                    a,
                    Num::Int(v),
                );
            }
        }
    }
    // Rates over the interval become the interval's counts (delta sums).
    let count = |rate: f64| Num::Int((rate * secs).round() as i64);
    for d in m
        .get("disks")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let Some(d) = d.as_object() else { continue };
        let dev = || attr("system.device", d.get("device")).into_iter();
        for (key, name, unit, dir) in [
            (
                "reads_per_s",
                "system.disk.operations",
                "{operation}",
                "read",
            ),
            (
                "writes_per_s",
                "system.disk.operations",
                "{operation}",
                "write",
            ),
            ("read_bytes_per_s", "system.disk.io", "By", "read"),
            ("write_bytes_per_s", "system.disk.io", "By", "write"),
        ] {
            if let Some(r) = f(d, key) {
                let a = dev().chain([kv_str("disk.io.direction", dir)]).collect();
                delta(b, name, unit, a, count(r));
            }
        }
        if let Some(p) = f(d, "busy_percent") {
            let a = dev().collect();
            delta(
                b,
                "system.disk.io_time",
                "s",
                a,
                Num::Double(p / 100.0 * secs),
            );
        }
    }
    for n in m
        .get("network")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let Some(n) = n.as_object() else { continue };
        let ifc = || attr("network.interface.name", n.get("interface")).into_iter();
        for (key, name, unit, dir, rate) in [
            ("rx_bytes_per_s", "system.network.io", "By", "receive", true),
            (
                "tx_bytes_per_s",
                "system.network.io",
                "By",
                "transmit",
                true,
            ),
            (
                "rx_packets_per_s",
                "system.network.packets",
                "{packet}",
                "receive",
                true,
            ),
            (
                "tx_packets_per_s",
                "system.network.packets",
                "{packet}",
                "transmit",
                true,
            ),
            (
                "rx_errors",
                "system.network.errors",
                "{error}",
                "receive",
                false,
            ),
            (
                "tx_errors",
                "system.network.errors",
                "{error}",
                "transmit",
                false,
            ),
            (
                "rx_dropped",
                "system.network.dropped",
                "{packet}",
                "receive",
                false,
            ),
            (
                "tx_dropped",
                "system.network.dropped",
                "{packet}",
                "transmit",
                false,
            ),
        ] {
            if let Some(v) = f(n, key) {
                let a = ifc().chain([kv_str("network.io.direction", dir)]).collect();
                let v = if rate { count(v) } else { Num::Int(v as i64) };
                delta(b, name, unit, a, v);
            }
        }
    }
    if let Some(p) = obj(m, "postgres_processes") {
        if let Some(c) = p.get("count").and_then(Value::as_i64) {
            gauge(
                b,
                "postgresql.processes.count",
                "{process}",
                vec![],
                Num::Int(c),
            );
        }
        if let Some(r) = p.get("rss_bytes").and_then(Value::as_i64) {
            gauge(
                b,
                "postgresql.processes.memory.rss",
                "By",
                vec![],
                Num::Int(r),
            );
        }
    }
}
