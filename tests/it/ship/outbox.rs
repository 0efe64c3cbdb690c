//! The outbox as a durable store: eviction exactly at the cap and the on-disk bound, recovery from
//! corrupt files, a model-based check of random operation sequences (in the spirit of Vector's disk
//! buffer model tests), no loss across `kill -9` of a real process, stdout mode, and `status`.

use crate::support;

use std::collections::VecDeque;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use postgres_agent::batch::BatchKind;
use postgres_agent::ship::outbox::{self, budget, charge, NewBatch, Outbox, MAX_DEAD_LETTERS};
use postgres_agent::ship::{DrainStop, Shipper};
use proptest::prelude::*;
use support::fault_listener::{ship_config, test_batch, Behavior, Listener};
use uuid::Uuid;

const MIB: u64 = 1024 * 1024;

/// A body of `len` pseudo-random (incompressible) bytes.
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn new_batch(kind: BatchKind, len: usize, seed: u64) -> NewBatch {
    NewBatch {
        batch_id: Uuid::now_v7(),
        kind,
        collected_at: "2026-11-27T00:00:00.000Z".into(),
        body: noise(len, seed),
        protocol: postgres_agent::config::Protocol::Batch,
    }
}

#[test]
fn eviction_happens_exactly_at_the_cap_oldest_first() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(outbox::FILE_NAME);
    let mut ob = Outbox::open(&path, MIB).unwrap();
    let len = 100_000;
    let fit = (budget(MIB) / charge(len)) as usize;
    assert_eq!(
        fit,
        8,
        "1 MiB cap: budget {} / charge {}",
        budget(MIB),
        charge(len)
    );
    let mut pushed = Vec::new();
    for i in 0..fit {
        let b = new_batch(BatchKind::ALL[i % 5], len, i as u64);
        let r = ob.push(&b).unwrap();
        assert!(r.evicted.is_empty() && r.stored, "push {i} fits");
        pushed.push((b.kind, b.batch_id));
    }
    assert_eq!(ob.charged_bytes(), fit as u64 * charge(len));
    let b = new_batch(BatchKind::PgLogs, len, 99);
    let r = ob.push(&b).unwrap();
    assert_eq!(r.evicted, vec![pushed[0]], "exactly the oldest one goes");
    pushed.remove(0);
    pushed.push((b.kind, b.batch_id));
    assert_eq!(ob.queued().unwrap(), pushed);
    let stats = ob.stats().unwrap();
    assert_eq!(stats.evicted, 1);
    assert_eq!(
        stats.kinds[0].evicted, 1,
        "counted under its type (pg_activity)"
    );

    // A batch that alone exceeds the budget is itself what the cap evicts, and counted.
    let huge = new_batch(BatchKind::Locks, budget(MIB) as usize, 5);
    let r = ob.push(&huge).unwrap();
    assert!(!r.stored);
    assert_eq!(r.evicted, vec![(BatchKind::Locks, huge.batch_id)]);
    assert_eq!(ob.queued().unwrap(), pushed, "nothing else was touched");
    assert_eq!(ob.stats().unwrap().kinds[2].evicted, 1);

    // Lowering the cap evicts at once.
    let r = ob.set_max_size(MIB / 2).unwrap();
    assert_eq!(budget(MIB / 2) / charge(len), 4);
    assert_eq!(r.evicted, pushed[..4]);
    assert_eq!(ob.queued().unwrap(), pushed[4..]);
}

#[test]
fn files_on_disk_stay_under_the_cap_under_churn() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(outbox::FILE_NAME);
    let cap = 2 * MIB;
    let mut ob = Outbox::open(&path, cap).unwrap();
    let mut max_seen = 0;
    for i in 0..300u64 {
        let len = 20_000 + (i as usize * 7919) % 60_000;
        ob.push(&new_batch(BatchKind::ALL[i as usize % 5], len, i))
            .unwrap();
        if i % 3 == 0 {
            if let Some(b) = ob.oldest().unwrap() {
                ob.ack(b.seq, b.kind).unwrap();
            }
        }
        max_seen = max_seen.max(outbox::schema::file_bytes(&path));
    }
    assert!(
        max_seen <= cap,
        "database + WAL reached {max_seen} bytes, cap {cap}"
    );
    assert!(
        ob.stats().unwrap().evicted > 0,
        "the test must actually hit the cap"
    );
}

fn corrupt_then_reopen(damage: impl FnOnce(&Path)) {
    support::rt().block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let listener = Listener::start().await;
        let config = ship_config(dir.path(), Some(&listener.url()), "");
        let path = dir.path().join(outbox::FILE_NAME);
        {
            let shipper = Shipper::open(&config).unwrap();
            for i in 0..40 {
                shipper
                    .enqueue(&test_batch(BatchKind::PgLogs, 50, i))
                    .unwrap();
            }
        }
        damage(&path);
        let shipper = Shipper::open(&config).expect("a corrupt outbox must not stop the agent");
        let stats = shipper.stats().unwrap().outbox.unwrap();
        assert_eq!((stats.recreated, stats.depth), (1, 0));
        let moved: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("outbox.db.corrupt-"))
            .collect();
        assert!(!moved.is_empty(), "the damaged file is kept aside");
        // The fresh outbox works end to end.
        let b = test_batch(BatchKind::Locks, 1, 1);
        shipper.enqueue(&b).unwrap();
        assert_eq!(shipper.drain(Duration::from_secs(10)).await.delivered, 1);
        assert_eq!(listener.accepted()[0].batch_id(), b.batch_id.to_string());
    });
}

#[test]
fn recovers_from_a_file_of_garbage() {
    corrupt_then_reopen(|path| std::fs::write(path, noise(64 * 1024, 3)).unwrap());
}

#[test]
fn recovers_from_a_truncated_file() {
    corrupt_then_reopen(|path| {
        let len = std::fs::metadata(path).unwrap().len();
        assert!(len >= 16 * 4096, "test data must span many pages ({len})");
        let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
        f.set_len(len / 2 + 1000).unwrap();
    });
}

#[test]
fn recovers_from_scribbled_pages() {
    corrupt_then_reopen(|path| {
        let mut bytes = std::fs::read(path).unwrap();
        let n = bytes.len();
        for (i, b) in noise(n - 8192, 11).into_iter().enumerate() {
            bytes[4096 + i] = b;
        }
        std::fs::write(path, bytes).unwrap();
    });
}

/// Operations of the model test.
#[derive(Debug, Clone)]
enum Op {
    Push(usize, usize),
    Ack,
    Fail,
    Reject,
    Reopen,
    SetCapKib(u64),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0..5usize, 0..40_000usize).prop_map(|(k, len)| Op::Push(k, len)),
        3 => Just(Op::Ack),
        1 => Just(Op::Fail),
        2 => Just(Op::Reject),
        1 => Just(Op::Reopen),
        1 => (200..600u64).prop_map(Op::SetCapKib),
    ]
}

/// The outbox as a plain in-memory queue.
#[derive(Default)]
struct Model {
    queue: VecDeque<(BatchKind, Uuid, u64)>,
    dead: VecDeque<(BatchKind, Uuid, u64)>,
    evicted: [u64; BatchKind::ALL.len()],
    dead_lettered: [u64; BatchKind::ALL.len()],
    delivered: [u64; BatchKind::ALL.len()],
    dead_dropped: u64,
    cap: u64,
}

impl Model {
    fn charged(&self) -> u64 {
        self.queue.iter().chain(&self.dead).map(|e| e.2).sum()
    }

    fn make_room(&mut self, cost: u64) {
        while self.charged() + cost > budget(self.cap) {
            if self.dead.pop_front().is_some() {
                self.dead_dropped += 1;
            } else if let Some((k, _, _)) = self.queue.pop_front() {
                self.evicted[k as usize] += 1;
            } else {
                break;
            }
        }
    }
}

fn kind_index(k: BatchKind) -> usize {
    BatchKind::ALL.iter().position(|x| *x == k).unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, .. ProptestConfig::default() })]
    #[test]
    fn outbox_matches_a_simple_model(ops in proptest::collection::vec(op(), 1..60)) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(outbox::FILE_NAME);
        let mut m = Model { cap: 300 * 1024, ..Model::default() };
        let mut ob = Outbox::open(&path, m.cap).unwrap();
        for (step, op) in ops.iter().enumerate() {
            match op {
                Op::Push(k, len) => {
                    let b = new_batch(BatchKind::ALL[*k], *len, step as u64);
                    let cost = charge(*len);
                    if cost > budget(m.cap) {
                        m.evicted[*k] += 1;
                    } else {
                        m.make_room(cost);
                        m.queue.push_back((b.kind, b.batch_id, cost));
                    }
                    ob.push(&b).unwrap();
                }
                Op::Ack => {
                    let got = ob.oldest().unwrap();
                    prop_assert_eq!(got.as_ref().map(|b| b.batch_id), m.queue.front().map(|e| e.1));
                    if let Some(b) = got {
                        prop_assert!(ob.ack(b.seq, b.kind).unwrap());
                        m.queue.pop_front();
                        m.delivered[kind_index(b.kind)] += 1;
                    }
                }
                Op::Fail => {
                    if let Some(b) = ob.oldest().unwrap() {
                        ob.record_failure(b.seq, "HTTP 503").unwrap();
                        let again = ob.oldest().unwrap().unwrap();
                        prop_assert_eq!((again.seq, again.attempts), (b.seq, b.attempts + 1));
                    }
                }
                Op::Reject => {
                    if let Some(b) = ob.oldest().unwrap() {
                        ob.dead_letter(b.seq, Some(400), "bad").unwrap();
                        let e = m.queue.pop_front().unwrap();
                        m.dead_lettered[kind_index(e.0)] += 1;
                        m.dead.push_back(e);
                        while m.dead.len() as u64 > MAX_DEAD_LETTERS {
                            m.dead.pop_front();
                            m.dead_dropped += 1;
                        }
                    }
                }
                Op::Reopen => {
                    drop(ob);
                    ob = Outbox::open(&path, m.cap).unwrap();
                }
                Op::SetCapKib(kib) => {
                    m.cap = kib * 1024;
                    m.make_room(0);
                    ob.set_max_size(m.cap).unwrap();
                }
            }
            let want: Vec<_> = m.queue.iter().map(|e| (e.0, e.1)).collect();
            prop_assert_eq!(ob.queued().unwrap(), want, "queue after step {} {:?}", step, op);
            let want: Vec<_> = m.dead.iter().map(|e| (e.0, e.1)).collect();
            prop_assert_eq!(ob.dead_letters().unwrap(), want);
            prop_assert_eq!(ob.charged_bytes(), m.charged());
            prop_assert!(ob.charged_bytes() <= budget(m.cap));
            let s = ob.stats().unwrap();
            for (i, k) in s.kinds.iter().enumerate() {
                prop_assert_eq!(k.evicted, m.evicted[i], "evicted {}", k.kind);
                prop_assert_eq!(k.dead_lettered, m.dead_lettered[i]);
                prop_assert_eq!(k.delivered, m.delivered[i]);
                prop_assert_eq!(k.depth, m.queue.iter().filter(|e| kind_index(e.0) == i).count() as u64);
            }
            prop_assert_eq!(s.dead_letters_dropped, m.dead_dropped);
        }
    }
}

const CHILD_ENV: &str = "POSTGRES_AGENT_TEST_CHILD_DIR";
const CHILD_URL: &str = "POSTGRES_AGENT_TEST_CHILD_URL";

/// Runs one `#[ignore]`d test of this binary as a child process with the given environment.
fn child(test: &str, env: &[(&str, String)]) -> Command {
    let mut cmd = support::test_child(module_path!(), test);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd
}

/// Child side of the kill -9 test: enqueue and drain forever, printing each batch id once its
/// enqueue returned.
#[test]
#[ignore = "run as a child process by kill_9_between_enqueue_and_delete_loses_nothing"]
fn child_enqueue_and_drain_forever() {
    let dir = std::env::var(CHILD_ENV).expect("run by the parent test");
    let url = std::env::var(CHILD_URL).unwrap();
    support::rt().block_on(async {
        let shipper = Shipper::open(&ship_config(Path::new(&dir), Some(&url), "")).unwrap();
        for i in 0.. {
            let b = test_batch(BatchKind::ALL[i % 5], 30, i as u64);
            shipper.enqueue(&b).unwrap();
            println!("ENQUEUED {}", b.batch_id);
            shipper.drain(Duration::from_millis(20)).await;
        }
    });
}

#[test]
fn kill_9_between_enqueue_and_delete_loses_nothing() {
    support::rt().block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let listener = Listener::start().await;
        // Slow answers keep the child mid-request most of the time, so the kill lands between
        // "sent" and "deleted" as well as between enqueues.
        listener.set(Behavior::Stall(Duration::from_millis(15)));
        let mut proc = child(
            "child_enqueue_and_drain_forever",
            &[
                (CHILD_ENV, dir.path().display().to_string()),
                (CHILD_URL, listener.url()),
            ],
        )
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
        let stdout = proc.stdout.take().unwrap();
        let enqueued = tokio::task::spawn_blocking(move || {
            let mut ids = Vec::new();
            for line in BufReader::new(stdout).lines() {
                if let Some(id) = line.unwrap().strip_prefix("ENQUEUED ") {
                    ids.push(id.to_string());
                    if ids.len() == 60 {
                        break;
                    }
                }
            }
            ids
        });
        let enqueued = enqueued.await.unwrap();
        proc.kill().unwrap(); // SIGKILL
        proc.wait().unwrap();
        assert_eq!(enqueued.len(), 60, "the child must have run");
        let seen = listener.received().len();
        assert!(seen > 0, "the child must have been sending");

        // Everything the child enqueued is either queued or was received by the listener.
        let path = dir.path().join(outbox::FILE_NAME);
        let queued: Vec<String> = Outbox::open(&path, 100 * MIB)
            .unwrap()
            .queued()
            .unwrap()
            .iter()
            .map(|(_, id)| id.to_string())
            .collect();
        let received: Vec<String> = listener.received().iter().map(|r| r.batch_id()).collect();
        for id in &enqueued {
            assert!(
                queued.contains(id) || received.contains(id),
                "batch {id} was lost"
            );
        }
        // And a restarted shipper delivers the rest.
        listener.set(Behavior::Accept);
        let shipper = Shipper::open(&ship_config(dir.path(), Some(&listener.url()), "")).unwrap();
        assert_eq!(
            shipper.drain(Duration::from_secs(30)).await.stopped,
            DrainStop::Empty
        );
        let received: Vec<String> = listener.received().iter().map(|r| r.batch_id()).collect();
        for id in &enqueued {
            assert!(
                received.contains(id),
                "batch {id} never reached the listener"
            );
        }
    });
}

/// Child side of the stdout test.
#[test]
#[ignore = "run as a child process by without_a_listener_batches_are_json_lines_on_stdout"]
fn child_stdout_mode() {
    let dir = std::env::var(CHILD_ENV).expect("run by the parent test");
    let shipper = Shipper::open(&ship_config(Path::new(&dir), None, "")).unwrap();
    for i in 0..3 {
        let r = shipper
            .enqueue(&test_batch(BatchKind::ALL[i], 2, 100 + i as u64))
            .unwrap();
        assert!(r.stdout);
    }
    assert_eq!(shipper.stats().unwrap().process.stdout_lines, 3);
}

#[test]
fn without_a_listener_batches_are_json_lines_on_stdout() {
    let dir = tempfile::tempdir().unwrap();
    let out = child(
        "child_stdout_mode",
        &[(CHILD_ENV, dir.path().display().to_string())],
    )
    .output()
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let batches: Vec<serde_json::Value> = text
        .lines()
        // libtest prints "test child_stdout_mode ... " before the first line.
        .filter_map(|l| l.find('{').map(|i| &l[i..]))
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(batches.len(), 3, "{text}");
    for (i, b) in batches.iter().enumerate() {
        assert_eq!(b["type"], BatchKind::ALL[i].as_str());
        assert_eq!(b["data"][0]["seed"], 100 + i as u64);
    }
    assert!(
        !dir.path().join(outbox::FILE_NAME).exists(),
        "the outbox is unused without a listener"
    );
}

#[test]
fn status_command_reads_the_outbox_while_it_is_open() {
    support::rt().block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let mut listener = Listener::start().await;
        let config = ship_config(
            dir.path(),
            Some(&listener.url()),
            "[circuit_breaker]\nfailure_threshold = 1\n",
        );
        let ini = dir.path().join("agent.ini");
        let ini = ini.to_str().unwrap();

        let out = support::agent(&["status", ini], &[]);
        assert!(out.status.success());
        assert!(String::from_utf8_lossy(&out.stdout).contains("does not exist yet"));

        // The shipper stays open (as the daemon would) while status runs.
        let shipper = Shipper::open(&config).unwrap();
        shipper
            .enqueue(&test_batch(BatchKind::PgActivity, 5, 1))
            .unwrap();
        assert_eq!(shipper.drain(Duration::from_secs(5)).await.delivered, 1);
        listener.set(Behavior::Status(400, None));
        shipper
            .enqueue(&test_batch(BatchKind::PgLogs, 5, 2))
            .unwrap();
        shipper.drain(Duration::from_secs(5)).await;
        listener.stop().await;
        for i in 0..3 {
            shipper
                .enqueue(&test_batch(BatchKind::Locks, 5, 10 + i))
                .unwrap();
        }
        assert_eq!(
            shipper.drain(Duration::from_secs(5)).await.stopped,
            DrainStop::Failed
        );

        let out = support::agent(&["status", ini], &[]);
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(text.contains("circuit:       open"), "{text}");
        assert!(text.contains("queued:        3 batches"), "{text}");
        assert!(text.contains("dead letters:  1 kept"), "{text}");
        assert!(text.contains("HTTP 400"), "{text}");
        assert!(text.contains("last send:     20"), "{text}");

        // `--config` after the subcommand works too (it used to be shadowed by the positional).
        let out = support::agent(&["status", "--json", "--config", ini], &[]);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let o = &v["outbox"];
        assert_eq!(o["depth"], 3);
        assert_eq!(o["kinds"][2]["kind"], "locks");
        assert_eq!(o["kinds"][2]["depth"], 3);
        assert_eq!(o["kinds"][0]["delivered"], 1);
        assert_eq!(o["dead_letters"], 1);
        assert_eq!(o["breaker"]["state"], "open");
        assert!(o["oldest_enqueued_ms"].as_i64().unwrap() > 0);
        drop(shipper);
    });
}

/// Child side of the proxy test: ship one batch to an address only the proxy can reach.
#[test]
#[ignore = "run as a child process by http_proxy_from_the_environment_is_used"]
fn child_ship_through_proxy() {
    let dir = std::env::var(CHILD_ENV).expect("run by the parent test");
    support::rt().block_on(async {
        // 192.0.2.0/24 is TEST-NET-1: never routed, so only a proxy can deliver this.
        let url = "http://192.0.2.1:9/ingest";
        let config = ship_config(Path::new(&dir), Some(url), "[listener]\ntimeout_s = 3\n");
        let shipper = Shipper::open(&config).unwrap();
        shipper
            .enqueue(&test_batch(BatchKind::Locks, 1, 77))
            .unwrap();
        let r = shipper.drain(Duration::from_secs(10)).await;
        println!("DRAIN {:?} {}", r.stopped, r.delivered);
    });
}

#[test]
fn http_proxy_from_the_environment_is_used() {
    support::rt().block_on(async {
        let dir = tempfile::tempdir().unwrap();
        // The test listener answers absolute-form proxy requests too (axum routes on the path).
        let proxy = Listener::start().await;
        let mut cmd = child(
            "child_ship_through_proxy",
            &[
                (CHILD_ENV, dir.path().display().to_string()),
                ("HTTP_PROXY", format!("http://{}", proxy.addr)),
            ],
        );
        cmd.env_remove("NO_PROXY").env_remove("no_proxy");
        let out = tokio::task::spawn_blocking(move || cmd.output().unwrap())
            .await
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            stdout.contains("DRAIN Empty 1"),
            "{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let got = proxy.accepted();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].body["data"][0]["seed"], 77);
    });
}
