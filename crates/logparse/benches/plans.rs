//! Parse speed on an auto_explain-heavy log: the real PostgreSQL 15 capture of
//! `tests/fixtures/auto_explain` (every entry a plan, in text, JSON, YAML and XML, analyze on and
//! off) repeated to about 32 MB, framed, built and classified (which parses each plan into its tree
//! and hashes its `plan_id`) as the agent does before its privacy step. Prints MB/s and entries/s
//! per destination, and the plan parser alone in plans/s.
//! Run: `cargo bench -p pga-logparse --bench plans`.

use std::hint::black_box;
use std::time::Instant;

use pga_logparse::classify::classify;
use pga_logparse::log_format::LogFormat;
use pga_logparse::parse::{End, Frame, Parser};

const TARGET: usize = 32 << 20;

fn corpus(file: &str) -> Vec<u8> {
    let path = format!(
        "{}/tests/fixtures/auto_explain/{file}",
        env!("CARGO_MANIFEST_DIR")
    );
    let one = std::fs::read(&path).expect("fixture");
    let mut out = Vec::with_capacity(TARGET + one.len());
    while out.len() < TARGET {
        out.extend_from_slice(&one);
    }
    out
}

/// Frames, builds and classifies every entry of `buf`; returns (entries, plans with a plan_id).
fn run(format: LogFormat, buf: &[u8]) -> (usize, usize) {
    let mut parser = Parser::new(format, "%m [%p] %q%u@%d %Q ", 1 << 20);
    let (mut at, mut entries, mut plans) = (0, 0, 0);
    while at < buf.len() {
        match parser.frame(&buf[at..], End::Eof) {
            Frame::Entry(n) => {
                let mut e = parser.build(&buf[at..at + n]);
                classify(&mut e);
                entries += 1;
                if e.extracted
                    .as_ref()
                    .is_some_and(|x| x.contains_key("plan_id"))
                {
                    plans += 1;
                }
                black_box(&e);
                at += n.max(1);
            }
            Frame::Skip(n) | Frame::Absorb(n) => at += n.max(1),
            Frame::NeedMore => break,
        }
    }
    (entries, plans)
}

fn main() {
    for (file, format) in [
        ("pg15.log", LogFormat::Stderr),
        ("pg15.csv", LogFormat::Csvlog),
        ("pg15.json", LogFormat::Jsonlog),
    ] {
        let buf = corpus(file);
        run(format, &buf[..buf.len() / 8]); // warm-up
        let started = Instant::now();
        let (entries, plans) = run(format, &buf);
        let s = started.elapsed().as_secs_f64();
        println!(
            "{format:?}: {:.1} MB in {s:.2} s = {:.1} MB/s, {:.0} entries/s ({entries} entries, {plans} plans parsed into trees)",
            buf.len() as f64 / 1e6,
            buf.len() as f64 / 1e6 / s,
            entries as f64 / s,
        );
    }
    // The plan parser alone, on the text-format plans of the jsonlog capture.
    let text = std::fs::read_to_string(format!(
        "{}/tests/fixtures/auto_explain/pg15.json",
        env!("CARGO_MANIFEST_DIR")
    ))
    .expect("fixture");
    let plans: Vec<String> = text
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| {
            Some(
                v["message"]
                    .as_str()?
                    .split_once("  plan:\n")?
                    .1
                    .to_string(),
            )
        })
        .filter(|p| p.starts_with("Query Text: ") && !p.starts_with("Query Text: \""))
        .collect();
    let rounds = 20_000 / plans.len().max(1);
    let started = Instant::now();
    let mut n = 0;
    for _ in 0..rounds {
        for p in &plans {
            let tree = pga_logparse::plan::parse(p);
            black_box(tree.as_ref().and_then(pga_logparse::plan::plan_id));
            n += 1;
        }
    }
    let s = started.elapsed().as_secs_f64();
    println!(
        "text plans: {:.0} plans/s parsed and hashed ({n} plans)",
        n as f64 / s
    );
}
