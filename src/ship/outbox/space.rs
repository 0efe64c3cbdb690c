//! Disk space beyond the size cap: a reserve file kept beside the outbox, given back when the disk is
//! full so SQLite can write the deletions that make room (docs/shipping.md, "Full disk").

use std::path::{Path, PathBuf};

use super::evict::make_room;
use super::{EvictionReport, Outbox, OutboxError, RESERVE_BYTES};

impl Outbox {
    /// Path of the reserve file: space kept aside so that, when the disk fills up, deleting it lets
    /// SQLite write the deletions that make room.
    pub fn reserve_path(&self) -> PathBuf {
        let mut p = self.path.as_os_str().to_owned();
        p.push(".reserve");
        PathBuf::from(p)
    }

    /// Creates the reserve file if it is missing, sized to the file system ([`reserve_bytes`]); a
    /// disk too full for it is not an error (the reserve comes back when there is room). Returns why
    /// there is no reserve, if there is none (the caller says so once).
    pub fn ensure_reserve(&self) -> Option<String> {
        let path = self.reserve_path();
        if path.exists() {
            return None;
        }
        let size = reserve_bytes(&path);
        let result = std::fs::File::create(&path).and_then(|mut f| {
            use std::io::Write;
            f.write_all(&vec![0u8; size as usize])?;
            f.sync_all()
        });
        match result {
            Ok(()) => None,
            Err(e) => {
                let _ = std::fs::remove_file(&path);
                Some(format!(
                    "cannot write the {size}-byte reserve {}: {e}",
                    path.display()
                ))
            }
        }
    }

    /// On a full disk: gives the reserve back to the file system, evicts the oldest requests
    /// (counted per type) until `need` bytes of them are gone (no more: a small request never
    /// empties the outbox), and checkpoints so the freed pages can be reused. Returns what was
    /// evicted.
    pub fn make_space(&mut self, need: u64) -> Result<EvictionReport, OutboxError> {
        let _ = std::fs::remove_file(self.reserve_path());
        let path = self.path.clone();
        let err = |source| OutboxError::Sqlite {
            path: path.clone(),
            source,
        };
        let tx = self.conn.transaction().map_err(err)?;
        let target = self.charged.saturating_sub(need);
        let (report, charged) = make_room(&tx, self.charged, 0, target).map_err(err)?;
        tx.commit().map_err(err)?;
        self.charged = charged;
        self.checkpoint();
        Ok(report)
    }
}

/// The reserve for the file system holding `path`: [`RESERVE_BYTES`] (2 MiB), at most 1% of the file
/// system (a small one would otherwise never have room for it), at least 64 KiB.
pub fn reserve_bytes(path: &Path) -> u64 {
    let dir = path.parent().unwrap_or(Path::new("."));
    match rustix::fs::statvfs(dir) {
        Ok(fs) => (fs.f_blocks.saturating_mul(fs.f_frsize) / 100).clamp(64 * 1024, RESERVE_BYTES),
        Err(_) => RESERVE_BYTES,
    }
}

#[cfg(test)]
mod tests {
    use super::super::{charge, NewBatch};
    use super::*;
    use crate::batch::BatchKind;
    use crate::config::Protocol;

    fn row(i: usize) -> NewBatch {
        NewBatch {
            batch_id: uuid::Uuid::now_v7(),
            kind: BatchKind::SystemMetrics,
            collected_at: format!("2026-12-06T00:00:{:02}.000Z", i % 60),
            body: vec![b'x'; 600],
            protocol: Protocol::Batch,
        }
    }

    #[test]
    fn making_space_for_one_small_request_evicts_only_what_it_needs() {
        let dir = tempfile::tempdir().unwrap();
        let mut ob = Outbox::open(&dir.path().join("outbox.db"), 100 << 20).unwrap();
        for i in 0..20 {
            ob.push(&row(i)).unwrap();
        }
        // Twenty rows are far under the 2 MiB reserve: room for one more evicts one, not all.
        let report = ob.make_space(charge(600)).unwrap();
        assert_eq!(report.evicted.len(), 1, "{report:?}");
        assert_eq!(ob.stats().unwrap().depth, 19);
    }

    #[test]
    fn the_reserve_is_at_most_2_mib_and_1_percent_of_the_file_system() {
        let dir = tempfile::tempdir().unwrap();
        let size = reserve_bytes(&dir.path().join("outbox.db"));
        assert!((64 * 1024..=RESERVE_BYTES).contains(&size), "{size}");
        let ob = Outbox::open(&dir.path().join("outbox.db"), 100 << 20).unwrap();
        assert_eq!(ob.ensure_reserve(), None);
        let len = std::fs::metadata(ob.reserve_path()).unwrap().len();
        assert!(len <= RESERVE_BYTES);
    }
}
