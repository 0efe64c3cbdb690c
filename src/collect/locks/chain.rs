//! Blocker chains: from one waiting backend, who blocks it, who blocks them, and so on, with cycles
//! (deadlocks the server has not broken yet) detected rather than followed. Pure: works on what the
//! locks collector read, so it is tested without a server.

use std::collections::{HashMap, HashSet};

use serde::Serialize;

use crate::correlation::Correlation;

/// Deepest blocker level followed.
pub const MAX_DEPTH: usize = 16;
/// Most blockers listed for one waiting lock.
pub const MAX_ENTRIES: usize = 64;

/// What the collector knows about a backend that appears in a chain.
#[derive(Debug, Clone, Default)]
pub struct Proc {
    pub state: Option<String>,
    pub query: Option<String>,
    pub query_truncated: bool,
    pub xact_age_ms: Option<f64>,
    pub correlation: Option<Correlation>,
    /// Granted locks on contended objects: (lock tag, mode).
    pub held: Vec<(String, String)>,
}

/// A backend waiting for a lock.
#[derive(Debug, Clone)]
pub struct Wait {
    /// The lock tag it waits for.
    pub tag: String,
    /// pg_blocking_pids of it.
    pub blockers: Vec<i32>,
}

/// One link of a chain.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Blocker {
    pub pid: i32,
    /// The backend this one blocks (the waiting lock's pid at depth 1).
    pub blocks_pid: i32,
    /// 1 for a direct blocker, 2 for a blocker of a blocker, ...
    pub depth: usize,
    /// Modes it holds on the object `blocks_pid` waits for; empty when it blocks by waiting ahead in
    /// the queue for a conflicting mode.
    pub modes_held: Vec<String>,
    /// It is itself waiting for a lock.
    pub waiting: bool,
    /// It closes a cycle: it already appears earlier on this path (a deadlock).
    pub cycle: bool,
    pub state: Option<String>,
    pub query: Option<String>,
    pub query_truncated: bool,
    pub xact_age_ms: Option<f64>,
    pub correlation: Option<Correlation>,
}

/// A chain, and whether it contains a cycle or was cut at a bound.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Chain {
    pub blockers: Vec<Blocker>,
    pub cycle: bool,
    pub truncated: bool,
}

/// Builds the chain of blockers of `pid`, depth first (each blocker followed by its own blockers).
pub fn build(pid: i32, waits: &HashMap<i32, Wait>, procs: &HashMap<i32, Proc>) -> Chain {
    let mut chain = Chain::default();
    let mut path = vec![pid];
    let mut expanded = HashSet::from([pid]);
    walk(pid, 1, waits, procs, &mut path, &mut expanded, &mut chain);
    chain
}

fn walk(
    pid: i32,
    depth: usize,
    waits: &HashMap<i32, Wait>,
    procs: &HashMap<i32, Proc>,
    path: &mut Vec<i32>,
    expanded: &mut HashSet<i32>,
    chain: &mut Chain,
) {
    let Some(wait) = waits.get(&pid) else {
        return;
    };
    for &b in &wait.blockers {
        if chain.blockers.len() >= MAX_ENTRIES {
            chain.truncated = true;
            return;
        }
        let proc = procs.get(&b).cloned().unwrap_or_default();
        let cycle = path.contains(&b);
        chain.cycle |= cycle;
        chain.blockers.push(Blocker {
            pid: b,
            blocks_pid: pid,
            depth,
            modes_held: proc
                .held
                .iter()
                .filter(|(tag, _)| *tag == wait.tag)
                .map(|(_, mode)| mode.clone())
                .collect(),
            waiting: waits.contains_key(&b),
            cycle,
            state: proc.state,
            query: proc.query,
            query_truncated: proc.query_truncated,
            xact_age_ms: proc.xact_age_ms,
            correlation: proc.correlation,
        });
        // A blocker reached twice (two paths to it) is listed each time but followed once.
        if cycle || !expanded.insert(b) {
            continue;
        }
        if depth >= MAX_DEPTH {
            chain.truncated |= waits.contains_key(&b);
            continue;
        }
        path.push(b);
        walk(b, depth + 1, waits, procs, path, expanded, chain);
        path.pop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn waits(edges: &[(i32, &str, &[i32])]) -> HashMap<i32, Wait> {
        edges
            .iter()
            .map(|(p, tag, b)| {
                (
                    *p,
                    Wait {
                        tag: tag.to_string(),
                        blockers: b.to_vec(),
                    },
                )
            })
            .collect()
    }

    #[test]
    fn a_chain_of_three_lists_each_level_with_the_mode_held_on_the_contended_object() {
        let w = waits(&[(3, "rel:1", &[2]), (2, "rel:1", &[1])]);
        let mut procs = HashMap::new();
        procs.insert(
            1,
            Proc {
                state: Some("idle in transaction".into()),
                held: vec![
                    ("rel:1".into(), "AccessExclusiveLock".into()),
                    ("rel:9".into(), "RowExclusiveLock".into()),
                ],
                ..Proc::default()
            },
        );
        let c = build(3, &w, &procs);
        assert!(!c.cycle && !c.truncated);
        let got: Vec<_> = c
            .blockers
            .iter()
            .map(|b| {
                (
                    b.pid,
                    b.blocks_pid,
                    b.depth,
                    b.waiting,
                    b.modes_held.clone(),
                )
            })
            .collect();
        assert_eq!(
            got,
            vec![
                (2, 3, 1, true, vec![]),
                (1, 2, 2, false, vec!["AccessExclusiveLock".to_string()])
            ]
        );
    }

    #[test]
    fn cycles_are_flagged_and_not_followed() {
        let w = waits(&[(1, "tx:5", &[2]), (2, "tx:6", &[3]), (3, "tx:7", &[1])]);
        let c = build(1, &w, &HashMap::new());
        assert!(c.cycle);
        assert_eq!(
            c.blockers
                .iter()
                .map(|b| (b.pid, b.cycle))
                .collect::<Vec<_>>(),
            vec![(2, false), (3, false), (1, true)]
        );
    }

    #[test]
    fn long_and_wide_chains_are_cut_and_flagged() {
        let edges: Vec<(i32, String, Vec<i32>)> = (0..100)
            .map(|p| (p, "t".to_string(), vec![p + 1]))
            .collect();
        let w: HashMap<i32, Wait> = edges
            .iter()
            .map(|(p, t, b)| {
                (
                    *p,
                    Wait {
                        tag: t.clone(),
                        blockers: b.clone(),
                    },
                )
            })
            .collect();
        let c = build(0, &w, &HashMap::new());
        assert!(c.truncated);
        assert_eq!(c.blockers.len(), MAX_DEPTH);
        let wide = waits(&[(0, "t", &(1..200).collect::<Vec<_>>())]);
        let c = build(0, &wide, &HashMap::new());
        assert!(c.truncated);
        assert_eq!(c.blockers.len(), MAX_ENTRIES);
    }
}
