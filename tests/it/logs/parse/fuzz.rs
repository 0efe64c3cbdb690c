//! Property tests: the parsers never panic on arbitrary bytes, read in arbitrary chunk sizes, and
//! account for every input byte (as an entry or as counted skipped bytes of a cut entry).

use std::io::Read;

use postgres_agent::log_format::LogFormat;
use postgres_agent::logs::parse::prefix::Prefix;
use postgres_agent::logs::parse::Parser;
use postgres_agent::logs::reader::EntryReader;
use postgres_agent::logs::{finish_entry, Finisher};
use proptest::prelude::*;

/// A reader that returns the input in the given chunk sizes.
struct Chunky {
    data: Vec<u8>,
    pos: usize,
    sizes: Vec<usize>,
    i: usize,
}

impl Read for Chunky {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let want = self
            .sizes
            .get(self.i % self.sizes.len().max(1))
            .copied()
            .unwrap_or(7)
            .max(1);
        self.i += 1;
        let n = want.min(buf.len()).min(self.data.len() - self.pos);
        buf[..n].copy_from_slice(&self.data[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// Fragments that steer random input toward the parsers' interesting paths.
fn fragment() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..40),
        Just(b"2026-11-27 03:05:14.907 UTC".to_vec()),
        Just(b"2026-11-27 03:05:14 CEST".to_vec()),
        Just(b"1732676700.123".to_vec()),
        Just(b" [123] ".to_vec()),
        Just(b"LOG:  ".to_vec()),
        Just(b"ERROR:  42601: ".to_vec()),
        Just(b"DETAIL:  ".to_vec()),
        Just(b"STATEMENT:  ".to_vec()),
        Just(b" at character 12".to_vec()),
        Just(b"\n\t".to_vec()),
        Just(b"\n".to_vec()),
        Just(b"\"".to_vec()),
        Just(b"\"\"".to_vec()),
        Just(b",".to_vec()),
        Just(b",,,,,,,,,,,,,,,,,,,,,,,,".to_vec()),
        Just(b"{\"timestamp\":\"2026-11-27 03:05:14.907 UTC\",\"message\":\"".to_vec()),
        Just(b"}\n".to_vec()),
        Just("é✓😀".as_bytes().to_vec()),
        Just(b"duration: 1.5 ms  statement: /* traceparent='00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01' */".to_vec()),
        Just(b"duration: 3 ms  plan:\n{\"Query Text\": ".to_vec()),
        Just(b"\nNov 28 23:59:01 host postgres[77]: [5-1] ".to_vec()),
        Just(b"\nNov 28 23:59:01 host postgres[77]: [5-2] #011".to_vec()),
        Just(b"\nNov  8 23:59:01 host postgres[78]: [1-1] user=u,db=d,app=a,client=::1 ".to_vec()),
    ]
}

fn input() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(fragment(), 0..60).prop_map(|v| v.concat())
}

const PREFIXES: &[&str] = &[
    "%m [%p] %q%u@%d ",
    "%t [%p]: [%l-1] user=%u,db=%d,app=%a,client=%h ",
    "%n|%-10u|%-12d|%5p|%c|%e|%x|%-6v|%q%a|%r|%i|%Q|%b ",
    "",
    "%u%d%a%i",
];

fn run(format: LogFormat, prefix: &str, max_entry: usize, data: Vec<u8>, sizes: Vec<usize>) {
    let total = data.len() as u64;
    let src = Chunky {
        data,
        pos: 0,
        sizes,
        i: 0,
    };
    let finisher = Finisher {
        correlation_keys: vec!["traceparent".into()],
        // These tests are about parsing; the privacy policy is tested in tests/it/privacy.rs.
        privacy: postgres_agent::privacy::Privacy::PASS_THROUGH,
    };
    let mut reader = EntryReader::new(src, Parser::new(format, prefix, max_entry), 0);
    let mut last = 0;
    while let Some((mut e, offset)) = reader.next_entry().expect("in-memory read") {
        assert!(offset > last, "an entry must consume bytes");
        last = offset;
        finish_entry(&mut e, &finisher);
        let mut direct = Vec::new();
        e.write_json(&mut direct).expect("writes");
        assert_eq!(
            String::from_utf8(direct).expect("utf8"),
            serde_json::to_string(&e).expect("serialises")
        );
        assert!(e.message.len() <= max_entry.max(64));
    }
    assert_eq!(reader.offset(), total, "every byte is accounted for");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    #[test]
    fn parsers_never_panic(
        data in input(),
        sizes in prop::collection::vec(1usize..300, 1..8),
        max_entry in 64usize..600,
        which in 0usize..PREFIXES.len(),
    ) {
        for format in [LogFormat::Stderr, LogFormat::Csvlog, LogFormat::Jsonlog, LogFormat::Syslog] {
            run(format, PREFIXES[which], max_entry, data.clone(), sizes.clone());
        }
    }

    #[test]
    fn raw_bytes_never_panic(data in prop::collection::vec(any::<u8>(), 0..3000), max_entry in 64usize..400) {
        for format in [LogFormat::Stderr, LogFormat::Csvlog, LogFormat::Jsonlog, LogFormat::Syslog] {
            run(format, "%m [%p] ", max_entry, data.clone(), vec![13, 1, 200]);
        }
    }

    #[test]
    fn any_prefix_compiles_and_matches_without_panic(
        prefix in "[%a-zA-Z0-9 \\-\\[\\]@:|]{0,30}",
        line in prop::collection::vec(any::<u8>(), 0..200),
    ) {
        let p = Prefix::compile(&prefix);
        let _ = p.matches(&line, &|rest: &[u8]| rest.starts_with(b"LOG:  "));
    }
}
