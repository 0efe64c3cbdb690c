//! Requests held in memory while the outbox cannot take them (a full disk, a read-only or
//! unwritable state directory), and requests already settled (delivered or rejected) whose removal
//! from the outbox failed.
//!
//! Held requests are bounded by bytes ([`HELD_BYTES`]); beyond it the oldest are dropped and
//! counted. They are sent (after anything older in the outbox) while the listener answers, and
//! written to the outbox, in order, as soon as it takes writes again. A settled request is never
//! sent again: the drain skips it until its removal succeeds.

use std::collections::{BTreeMap, VecDeque};

use super::outbox::NewBatch;
use crate::batch::BatchKind;

/// Most bytes (stored, compressed) held in memory.
pub const HELD_BYTES: usize = 16 * 1024 * 1024;

/// Requests waiting in memory, oldest first.
#[derive(Debug, Default)]
pub struct Held {
    rows: VecDeque<NewBatch>,
    bytes: usize,
}

impl Held {
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    pub fn len(&self) -> usize {
        self.rows.len()
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Appends `rows`; returns the oldest requests dropped to stay within [`HELD_BYTES`].
    pub fn push(&mut self, rows: Vec<NewBatch>) -> Vec<(BatchKind, uuid::Uuid)> {
        for r in rows {
            self.bytes += r.body.len();
            self.rows.push_back(r);
        }
        let mut dropped = Vec::new();
        while self.bytes > HELD_BYTES && self.rows.len() > 1 {
            if let Some(r) = self.rows.pop_front() {
                self.bytes -= r.body.len();
                dropped.push((r.kind, r.batch_id));
            }
        }
        dropped
    }

    pub fn front(&self) -> Option<&NewBatch> {
        self.rows.front()
    }

    pub fn pop_front(&mut self) -> Option<NewBatch> {
        let r = self.rows.pop_front()?;
        self.bytes -= r.body.len();
        Some(r)
    }

    /// Removes the oldest request if it is `batch_id` (the one just sent); false when it is no
    /// longer there (dropped at the bound meanwhile).
    pub fn pop_if_front(&mut self, batch_id: uuid::Uuid) -> bool {
        match self.rows.front() {
            Some(r) if r.batch_id == batch_id => self.pop_front().is_some(),
            _ => false,
        }
    }

    /// Removes the request `batch_id` wherever it is (one sent from the newest end); false when it
    /// is no longer there.
    pub fn remove(&mut self, batch_id: uuid::Uuid) -> bool {
        match self.rows.iter().position(|r| r.batch_id == batch_id) {
            Some(i) => match self.rows.remove(i) {
                Some(r) => {
                    self.bytes -= r.body.len();
                    true
                }
                None => false,
            },
            None => false,
        }
    }

    /// Every held request, oldest first (to write them to the outbox).
    pub fn rows(&self) -> &VecDeque<NewBatch> {
        &self.rows
    }

    pub fn clear(&mut self) {
        self.rows.clear();
        self.bytes = 0;
    }
}

/// How a request that could not be removed from the outbox was settled.
#[derive(Debug, Clone, PartialEq)]
pub enum Settled {
    Delivered(BatchKind),
    /// Rejected for good: it moves to the dead letters when the outbox takes writes again.
    Rejected {
        status: Option<u16>,
        reason: String,
    },
}

/// Outbox rows settled but not yet removed, by sequence number. The drain skips them (they can be
/// anywhere in the queue: a pass also sends from the newest end).
#[derive(Debug, Default)]
pub struct Unremoved(BTreeMap<i64, Settled>);

impl Unremoved {
    pub fn insert(&mut self, seq: i64, how: Settled) {
        self.0.insert(seq, how);
    }

    pub fn contains(&self, seq: i64) -> bool {
        self.0.contains_key(&seq)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn take(&mut self) -> BTreeMap<i64, Settled> {
        std::mem::take(&mut self.0)
    }
}
