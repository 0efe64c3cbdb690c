//! Throughput of obfuscation, fingerprinting and log redaction on realistic query texts, printed as
//! MB/s and texts/s. Run: `cargo bench -p pga-privacy --bench obfuscate`.
//!
//! Corpora (generated deterministically, no data files):
//! - pgbench: the five statements of pgbench's built-in tpcb-like script with its variables
//!   substituted, exactly as pgbench sends them in simple-protocol mode and pg_stat_activity shows them.
//! - orm: ORM-style queries (Rails/Django/Hibernate shapes) with sqlcommenter/Marginalia comments,
//!   quoted identifiers, IN lists, JSON, timestamps, E'' and dollar-quoted strings, 200 B to 4 KB.
//! - normalized: pg_stat_statements-style texts with `$n` only (the no-literal fast path).

use std::hint::black_box;
use std::time::Instant;

use pga_privacy::{fingerprint, obfuscate, obfuscate_cow, LogFields, Privacy};

/// xorshift64*: a fixed, dependency-free generator so every run measures the same corpus.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn word(&mut self, len: usize) -> String {
        (0..len)
            .map(|_| (b'a' + self.below(26) as u8) as char)
            .collect()
    }
}

fn pgbench(rng: &mut Rng, n: usize) -> Vec<String> {
    (0..n)
        .map(|i| {
            let aid = 1 + rng.below(100_000);
            let bid = 1 + rng.below(1);
            let tid = 1 + rng.below(10);
            let delta = rng.below(10_001) as i64 - 5000;
            match i % 5 {
                0 => format!("UPDATE pgbench_accounts SET abalance = abalance + {delta} WHERE aid = {aid};"),
                1 => format!("SELECT abalance FROM pgbench_accounts WHERE aid = {aid};"),
                2 => format!("UPDATE pgbench_tellers SET tbalance = tbalance + {delta} WHERE tid = {tid};"),
                3 => format!("UPDATE pgbench_branches SET bbalance = bbalance + {delta} WHERE bid = {bid};"),
                _ => format!("INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES ({tid}, {bid}, {aid}, {delta}, CURRENT_TIMESTAMP);"),
            }
        })
        .collect()
}

fn orm(rng: &mut Rng, n: usize) -> Vec<String> {
    (0..n)
        .map(|i| {
            let comment = format!(
                "/*action='{}',controller='{}',framework='django%3A4.2',traceparent='00-{:016x}{:016x}-{:016x}-01'*/",
                rng.word(6),
                rng.word(8),
                rng.next(),
                rng.next(),
                rng.next()
            );
            let email = format!("{}@{}.example.com", rng.word(8), rng.word(5));
            let ids: Vec<String> = (0..1 + rng.below(60)).map(|_| rng.below(1_000_000).to_string()).collect();
            match i % 6 {
                0 => format!(
                    "SELECT \"users\".\"id\", \"users\".\"email\", \"users\".\"created_at\" FROM \"users\" WHERE \"users\".\"email\" = '{email}' AND \"users\".\"deleted_at\" IS NULL LIMIT 1 {comment}"
                ),
                1 => format!(
                    "{comment} SELECT \"orders\".* FROM \"orders\" WHERE \"orders\".\"customer_id\" IN ({}) AND \"orders\".\"status\" = 'paid' ORDER BY \"orders\".\"created_at\" DESC LIMIT 50 OFFSET 100",
                    ids.join(", ")
                ),
                2 => format!(
                    "INSERT INTO \"events\" (\"kind\", \"payload\", \"occurred_at\") VALUES ('signup', '{{\"email\": \"{email}\", \"plan\": \"pro\", \"seats\": {}}}'::jsonb, '2026-11-27 03:{:02}:00.123456+00') RETURNING \"id\" -- app:web,controller:signup",
                    rng.below(500),
                    rng.below(60)
                ),
                3 => format!(
                    "select sessions0_.id as id1_4_, sessions0_.token as token2_4_ from sessions sessions0_ where sessions0_.token=E'{}\\'{}' and sessions0_.expires_at>'2026-12-01 00:00:00' and sessions0_.user_id={}",
                    rng.word(24),
                    rng.word(8),
                    rng.below(100_000)
                ),
                4 => format!(
                    "UPDATE \"accounts\" SET \"balance\" = \"balance\" - {}.{:02}, \"note\" = $n${} {}$n$, \"updated_at\" = now() WHERE \"accounts\".\"id\" = {} /* request_id={:x} */",
                    rng.below(1000),
                    rng.below(100),
                    rng.word(30),
                    rng.word(40),
                    rng.below(1_000_000),
                    rng.next()
                ),
                _ => format!(
                    "{comment}\nWITH recent AS (\n  SELECT o.customer_id, sum(o.total) AS spent\n  FROM orders o\n  WHERE o.created_at > now() - interval '30 days' AND o.region = ANY('{{eu,us}}')\n  GROUP BY 1\n)\nSELECT c.id, c.name, r.spent FROM customers c JOIN recent r ON r.customer_id = c.id\nWHERE c.email LIKE '%{}%' AND r.spent > {} ORDER BY r.spent DESC LIMIT 20",
                    rng.word(5),
                    rng.below(10_000)
                ),
            }
        })
        .collect()
}

fn normalized(corpus: &[String]) -> Vec<String> {
    // The same shapes with every literal replaced by $n, as pg_stat_statements stores them.
    corpus
        .iter()
        .map(|q| {
            let masked = obfuscate(q);
            let mut out = String::with_capacity(masked.len());
            for (n, part) in masked.split('?').enumerate() {
                if n > 0 {
                    out.push_str(&format!("${n}"));
                }
                out.push_str(part);
            }
            out
        })
        .collect()
}

/// Runs `f` over the corpus until at least `min_secs` elapsed; prints MB/s and texts/s.
fn measure(name: &str, corpus: &[String], min_secs: f64, mut f: impl FnMut(&str) -> usize) {
    let bytes: usize = corpus.iter().map(String::len).sum();
    let mut rounds = 0u64;
    let mut sink = 0usize;
    let start = Instant::now();
    while start.elapsed().as_secs_f64() < min_secs {
        for q in corpus {
            sink = sink.wrapping_add(f(black_box(q)));
        }
        rounds += 1;
    }
    let secs = start.elapsed().as_secs_f64();
    let total = bytes as f64 * rounds as f64;
    let texts = corpus.len() as f64 * rounds as f64;
    black_box(sink);
    println!(
        "{name:<34} {:>8.1} MB/s {:>11.0} texts/s   (avg {:>4} B/text, {rounds} rounds)",
        total / secs / 1e6,
        texts / secs,
        bytes / corpus.len()
    );
}

fn main() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let pgbench = pgbench(&mut rng, 5_000);
    let orm = orm(&mut rng, 5_000);
    let normalized = normalized(&orm);
    let secs = 1.5;
    println!("privacy benchmark (single thread, release build)");
    measure("obfuscate pgbench", &pgbench, secs, |q| obfuscate(q).len());
    measure("obfuscate orm+comments", &orm, secs, |q| obfuscate(q).len());
    measure(
        "obfuscate_cow normalized ($n only)",
        &normalized,
        secs,
        |q| obfuscate_cow(q).len(),
    );
    measure("fingerprint pgbench", &pgbench, secs, |q| {
        fingerprint(q).len()
    });
    measure("fingerprint orm+comments", &orm, secs, |q| {
        fingerprint(q).len()
    });

    let privacy = Privacy::default();
    let entries: Vec<String> = orm
        .iter()
        .map(|q| format!("duration: 1.234 ms  statement: {q}"))
        .collect();
    measure("log entry (defaults: redact+mask)", &entries, secs, |m| {
        let mut message = Some(m.to_string());
        let mut detail = Some("parameters: $1 = 'ann@example.com', $2 = '42'".to_string());
        let [mut hint, mut context, mut statement, mut query]: [Option<String>; 4] =
            Default::default();
        privacy.apply_to_log(LogFields {
            sqlstate: Some("00000"),
            message: &mut message,
            detail: &mut detail,
            hint: &mut hint,
            context: &mut context,
            statement: &mut statement,
            query: &mut query,
        });
        message.map_or(0, |m| m.len())
    });
}
