//! `log_line_prefix` inference: when neither the configuration nor the server says which prefix a
//! stderr log was written with, each prefix people commonly run is tried on a sample of the log and
//! the one that explains the most lines wins.
//!
//! Scoring, per candidate, over the sample's lines that are not continuation lines: first the
//! number of lines that start an entry or are prefixed auxiliary lines (`DETAIL:`, `STATEMENT:`);
//! on a tie, the number of prefix fields those lines give values to (a prefix that explains more of
//! each line is more likely the one the server used); on a tie again, the prefix with fewer escapes
//! (Debian's `%m [%p] %q%u@%d ` also fits a log written with `%m [%p] `, through `%q`, without
//! finding a user on any line, so the simpler prefix is the one that was used).

use super::stderr::StderrParser;
use super::MAX_ENTRY_BYTES;

/// Prefixes tried when none is given, each with where it comes from (docs/logs.md cites them).
pub const COMMON_PREFIXES: &[&str] = &[
    // PostgreSQL's default since 10, and the PGDG/RHEL packages' (they keep upstream's).
    "%m [%p] ",
    // Debian and Ubuntu (postgresql-common's createcluster.conf).
    "%m [%p] %q%u@%d ",
    // Amazon RDS and Aurora PostgreSQL.
    "%t:%r:%u@%d:[%p]:",
    // Azure Database for PostgreSQL flexible server.
    "%t-%c-",
    // pgBadger's documentation: the full and the minimal stderr prefix, and their variants.
    "%t [%p]: [%l-1] user=%u,db=%d,app=%a,client=%h ",
    "%t [%p]: [%l-1] db=%d,user=%u,app=%a,client=%h ",
    "%t [%p]: user=%u,db=%d,app=%a,client=%h ",
    "%t [%p]: [%l-1] ",
    "%t [%p]: ",
    // PostgreSQL's documentation (the `%q` example) and other common shapes.
    "%m [%p] %q%u@%d/%a ",
    "%m [%p] %q[user=%u,db=%d,app=%a] ",
    "%m [%p] %c %x %q%u@%d/%a ",
    "%m [%p] %Q %q%u@%d ",
    "%t [%p-%l] %q%u@%d ",
    "%m %u %d [%p] ",
    "%t [%p] ",
    "%m:%r:%u@%d:[%p]:",
    // pgBadger's documentation for syslog (syslog supplies the time and the pid).
    "user=%u,db=%d,app=%a,client=%h ",
    "db=%d,user=%u,app=%a,client=%h ",
    "%t ",
    "%m ",
    "",
];

/// Lines of the sample looked at (a 64 KiB sample holds a few hundred).
const SAMPLE_LINES: usize = 2000;

/// The prefix inference chose, and how well it fits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inferred {
    pub prefix: &'static str,
    /// Lines of the sample that fit it (entry starts and prefixed auxiliary lines).
    pub matched: usize,
    /// Lines of the sample that are not continuation lines.
    pub lines: usize,
}

impl std::fmt::Display for Inferred {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "log_line_prefix '{}' ({} of {} lines of the sample fit it)",
            self.prefix, self.matched, self.lines
        )
    }
}

/// Picks the common prefix that best explains the sample's lines (see the module comment).
pub fn infer_prefix(sample: &[u8]) -> Inferred {
    let lines: Vec<&[u8]> = sample
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty() && l.first() != Some(&b'\t'))
        .take(SAMPLE_LINES)
        .collect();
    let mut best: Option<(usize, usize, std::cmp::Reverse<usize>, &'static str)> = None;
    for candidate in COMMON_PREFIXES {
        let p = StderrParser::new(candidate, MAX_ENTRY_BYTES);
        let (mut hits, mut fields) = (0, 0);
        for l in &lines {
            if let Some(n) = p.fit(l) {
                hits += 1;
                fields += n;
            }
        }
        let score = (
            hits,
            fields,
            std::cmp::Reverse(p.prefix_escapes()),
            *candidate,
        );
        if best
            .as_ref()
            .is_none_or(|b| (score.0, score.1, score.2) > (b.0, b.1, b.2))
        {
            best = Some(score);
        }
    }
    let (matched, _, _, prefix) = best.unwrap_or((0, 0, std::cmp::Reverse(0), "%m [%p] "));
    let prefix = if matched == 0 { "%m [%p] " } else { prefix };
    Inferred {
        prefix,
        matched,
        lines: lines.len(),
    }
}

/// [`infer_prefix`]'s choice.
pub fn detect_prefix(sample: &[u8]) -> &'static str {
    infer_prefix(sample).prefix
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefers_the_simpler_prefix_when_both_fit_equally() {
        let log = b"2026-11-27 03:05:14.889 UTC [11300] LOG:  starting\n\
2026-11-27 03:05:14.990 UTC [11309] LOG:  connection authorized: user=postgres\n";
        assert_eq!(detect_prefix(log), "%m [%p] ");
        let log = b"2026-11-27 03:05:14.889 UTC [11300] LOG:  starting\n\
2026-11-27 03:05:14.990 UTC [11309] postgres@db LOG:  connection authorized: user=postgres\n";
        assert_eq!(detect_prefix(log), "%m [%p] %q%u@%d ");
        let log = b"2026-11-27 03:05:14 UTC [11300] LOG:  starting\n";
        assert_eq!(detect_prefix(log), "%t [%p] ");
        let log = b"2026-11-27 03:05:14 UTC LOG:  starting\n";
        assert_eq!(detect_prefix(log), "%t ");
        let log = b"2026-11-27 00:18:57 UTC::@:[6831]:LOG:  checkpoint starting: time\n";
        let got = infer_prefix(log);
        assert_eq!(got.prefix, "%t:%r:%u@%d:[%p]:");
        assert_eq!((got.matched, got.lines), (1, 1));
    }
}
