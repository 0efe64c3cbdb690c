//! Memory of the plan store (`collect::plans::store::PlanStore`) at 10,000 statements x 3 plans, the
//! size of its state file, and the time to add, save and load it. Memory is counted by a global
//! allocator wrapper (bytes live after building minus before), so it does not depend on the build
//! profile. Run: `cargo bench --bench plan_store` (or `--profile dev`, quicker to build).

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};
use std::time::Instant;

use postgres_agent::collect::plans::store::{PlanStore, Seen, Source};

struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

// SAFETY: forwards to the system allocator unchanged; only counts the bytes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: the caller's contract is passed on as is.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: as above.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

const STATEMENTS: u64 = 10_000;
const PLANS: u64 = 3;

fn main() {
    let before = LIVE.load(Ordering::Relaxed);
    let started = Instant::now();
    let mut store = PlanStore::default();
    let mut changes = 0;
    // Each statement seen 4 times per plan, plans alternating: changes as well as repeats.
    for round in 0..4 {
        for plan in 0..PLANS {
            for s in 0..STATEMENTS {
                let added = store.add(Seen {
                    fingerprint: s.wrapping_mul(0x9e37_79b9_7f4a_7c15),
                    queryid: Some(s as i64 * 7919),
                    plan_id: (s << 8) | plan,
                    at_ms: 1_765_000_000_000 + (round * PLANS + plan) as i64 * 1000,
                    duration_ms: Some(1.0 + plan as f64),
                    source: Source::AutoExplain,
                });
                changes += u64::from(added.change.is_some());
            }
        }
    }
    let add_s = started.elapsed().as_secs_f64();
    let bytes = LIVE.load(Ordering::Relaxed) - before;
    let sightings = 4 * PLANS * STATEMENTS;
    println!(
        "plan store: {STATEMENTS} statements x {PLANS} plans = {:.2} MB live ({} bytes per plan); \
         {sightings} sightings added in {add_s:.3} s ({changes} changes)",
        bytes as f64 / 1e6,
        bytes / (STATEMENTS * PLANS) as isize
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let path = PlanStore::path(dir.path());
    let started = Instant::now();
    store.save(&path).expect("save");
    let save_s = started.elapsed().as_secs_f64();
    let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
    let started = Instant::now();
    let loaded = PlanStore::load(&path).expect("load").expect("saved");
    let load_s = started.elapsed().as_secs_f64();
    assert_eq!(loaded.len(), store.len());
    println!(
        "plans.json: {:.2} MB, saved (fsync) in {save_s:.3} s, loaded in {load_s:.3} s",
        size as f64 / 1e6
    );
}
