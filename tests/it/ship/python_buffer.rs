//! Importing the Python agent's persist-queue buffer, on databases written by the real persist-queue
//! 1.1.0 (tests/fixtures/python_buffer/make_fixture.py): order, `pg_locks` conversion, NaN, the file
//! left byte-identical, the marker (no second push, resume after a failed push, a replaced file),
//! corrupt items, a buffer left with a write-ahead log, and absent buffers.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use postgres_agent::ship::python_buffer::{
    self, import, ImportReport, LegacyPayload, PythonBufferError, MARKER_EVERY,
};
use rusqlite::Connection;
use serde_json::{json, Value};

/// The payloads' timestamps in make_fixture.py are T0 + i.
const T0: f64 = 1764300000.25;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/python_buffer")
        .join(name)
}

/// A temp dir with a copy of fixture `name` as `buffer/` and an empty `state/`.
fn setup(name: &str) -> (tempfile::TempDir, PathBuf, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let buffer = tmp.path().join("buffer");
    fs::create_dir(&buffer).unwrap();
    for entry in fs::read_dir(fixture(name)).unwrap() {
        let entry = entry.unwrap();
        fs::copy(entry.path(), buffer.join(entry.file_name())).unwrap();
    }
    let state = tmp.path().join("state");
    (tmp, buffer, state)
}

/// Every file in `dir` with its bytes.
fn snapshot(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (
                e.file_name().to_string_lossy().into_owned(),
                fs::read(e.path()).unwrap(),
            )
        })
        .collect()
}

fn collect(buffer: &Path, state: &Path) -> (ImportReport, Vec<LegacyPayload>) {
    let mut got = Vec::new();
    let report = import(buffer, state, |p| {
        got.push(p);
        Ok::<_, String>(())
    })
    .unwrap();
    (report, got)
}

fn body(p: &LegacyPayload) -> Value {
    serde_json::from_str(&p.json).unwrap()
}

#[test]
fn every_unsent_item_is_pushed_in_order_and_the_file_is_untouched() {
    let (_tmp, buffer, state) = setup("buffer");
    let before = snapshot(&buffer);
    let (report, got) = collect(&buffer, &state);

    assert_eq!(
        report,
        ImportReport {
            found: 6,
            pushed: 6,
            skipped: 0,
            already_imported: 0,
            db_path: Some(buffer.join("data.db")),
        }
    );
    // Item 1 was taken by the Python agent's flush before it stopped.
    let ids: Vec<i64> = got.iter().map(|p| p.id).collect();
    assert_eq!(ids, [2, 3, 4, 5, 6, 7]);
    let sources: Vec<&str> = got.iter().map(|p| p.source.as_str()).collect();
    assert_eq!(
        sources,
        [
            "pg_stat_activity",
            "pg_stat_statements",
            "pg_log",
            "pg_stat_activity", // was pg_locks
            "system_metrics",
            "pg_stat_activity", // the pickled dict
        ]
    );
    for (i, p) in got.iter().enumerate() {
        assert_eq!(p.timestamp, T0 + (i + 1) as f64);
        let v = body(p);
        assert_eq!(v["source"], p.source);
        assert_eq!(v["timestamp"], p.timestamp);
        assert_eq!(v["project"], "shop-eu");
    }

    assert_eq!(
        body(&got[0])["data"]["queries"][0]["query"],
        "SELECT 1 /* café */"
    );
    assert_eq!(body(&got[1])["data"]["statements"][0]["queryid"], -42);
    assert_eq!(body(&got[2])["correlation_id"], "req-7f3a");
    assert_eq!(body(&got[0])["correlation_id"], "");
    assert_eq!(
        body(&got[3])["data"],
        json!({
            "locks": [{"pid": 4242, "mode": "AccessExclusiveLock", "granted": false}],
            "count": 1,
            "has_blocking": true,
            "converted_from": "pg_locks",
        })
    );
    assert_eq!(
        body(&got[4])["data"],
        json!({"cpu_percent": null, "disk_free": null, "swap": null})
    );
    assert_eq!(body(&got[5])["data"], json!({"count": 0, "queries": []}));

    assert_eq!(
        snapshot(&buffer),
        before,
        "the buffer directory is byte-identical, with no file added"
    );
    let marker = python_buffer::marker(&state).unwrap().unwrap();
    assert_eq!((marker.last_id, marker.pushed, marker.skipped), (7, 6, 0));
    assert!(marker.complete);
}

#[test]
fn a_second_import_pushes_nothing() {
    let (_tmp, buffer, state) = setup("buffer");
    collect(&buffer, &state);
    let marker = fs::read(state.join(python_buffer::MARKER_FILE_NAME)).unwrap();
    let (report, got) = collect(&buffer, &state);
    assert!(got.is_empty());
    assert_eq!(
        (report.found, report.already_imported, report.pushed),
        (6, 6, 0)
    );
    assert_eq!(
        fs::read(state.join(python_buffer::MARKER_FILE_NAME)).unwrap(),
        marker,
        "nothing to record"
    );
}

#[test]
fn after_a_failed_push_the_retry_pushes_the_rest_exactly_once() {
    let (_tmp, buffer, state) = setup("buffer");
    let mut first = Vec::new();
    let err = import(&buffer, &state, |p: LegacyPayload| {
        if p.id == 4 {
            return Err("outbox full");
        }
        first.push(p.id);
        Ok(())
    })
    .unwrap_err();
    assert!(
        matches!(&err, PythonBufferError::Push { id: 4, message, .. } if message == "outbox full"),
        "{err}"
    );
    assert!(err.to_string().contains("data.db"), "{err}");
    assert_eq!(first, [2, 3]);
    assert_eq!(python_buffer::marker(&state).unwrap().unwrap().last_id, 3);

    let (report, got) = collect(&buffer, &state);
    let retried: Vec<i64> = got.iter().map(|p| p.id).collect();
    assert_eq!(retried, [4, 5, 6, 7]);
    assert_eq!((report.already_imported, report.pushed), (2, 4));
}

#[test]
fn corrupt_items_are_skipped_and_counted_not_fatal() {
    let (_tmp, buffer, state) = setup("buffer");
    {
        let conn = Connection::open(buffer.join("data.db")).unwrap();
        conn.execute(
            "UPDATE queue_default SET data = x'8004950a00000000' WHERE _id = 3",
            [],
        )
        .unwrap();
        conn.execute(
            "INSERT INTO queue_default (data, timestamp) VALUES (NULL, 0), ('not a pickle', 0)",
            [],
        )
        .unwrap();
    }
    let (report, got) = collect(&buffer, &state);
    let ids: Vec<i64> = got.iter().map(|p| p.id).collect();
    assert_eq!(ids, [2, 4, 5, 6, 7]);
    assert_eq!((report.found, report.pushed, report.skipped), (8, 5, 3));
    let marker = python_buffer::marker(&state).unwrap().unwrap();
    assert_eq!((marker.last_id, marker.skipped), (9, 3));

    let (again, got) = collect(&buffer, &state);
    assert!(got.is_empty(), "skipped items are not retried");
    assert_eq!((again.skipped, again.already_imported), (0, 8));
}

#[test]
fn a_new_file_at_the_same_path_is_imported_from_its_beginning() {
    let (_tmp, buffer, state) = setup("buffer");
    collect(&buffer, &state);
    // A new inode: written beside, then renamed over the old one.
    let fresh = buffer.join("data.db.new");
    fs::copy(fixture("buffer").join("data.db"), &fresh).unwrap();
    fs::rename(&fresh, buffer.join("data.db")).unwrap();
    let (report, got) = collect(&buffer, &state);
    assert_eq!((report.pushed, report.already_imported), (6, 0));
    assert_eq!(got.first().map(|p| p.id), Some(2));
}

#[test]
fn a_buffer_left_with_a_write_ahead_log_is_read_through_it_without_changing_it() {
    let (_tmp, buffer, state) = setup("buffer-unclean");
    let files = ["data.db", "data.db-wal"].map(|f| fs::read(buffer.join(f)).unwrap());
    let (report, got) = collect(&buffer, &state);
    assert_eq!((report.found, report.pushed), (2, 2));
    let sources: Vec<&str> = got.iter().map(|p| p.source.as_str()).collect();
    assert_eq!(sources, ["pg_log", "pg_stat_activity"]);
    assert_eq!(body(&got[1])["data"]["converted_from"], "pg_locks");
    assert_eq!(
        ["data.db", "data.db-wal"].map(|f| fs::read(buffer.join(f)).unwrap()),
        files,
        "neither the database nor its log is written"
    );
}

/// Appends `n` valid items to the buffer's table, as the Python agent's `put(json.dumps(p))`.
fn append_items(buffer: &Path, n: usize) {
    let conn = Connection::open(buffer.join("data.db")).unwrap();
    let text = r#"{"correlation_id": "", "project": "p", "timestamp": 1.0, "source": "pg_log", "data": {}}"#;
    let blob = serde_pickle::value_to_vec(
        &serde_pickle::Value::String(text.into()),
        serde_pickle::SerOptions::new(),
    )
    .unwrap();
    for _ in 0..n {
        conn.execute(
            "INSERT INTO queue_default (data, timestamp) VALUES (?1, 0)",
            [&blob],
        )
        .unwrap();
    }
}

#[test]
fn the_marker_is_saved_every_marker_every_items() {
    let (_tmp, buffer, state) = setup("buffer");
    append_items(&buffer, 250);
    let mut pushed = 0;
    let report = import(&buffer, &state, |p: LegacyPayload| {
        let saved = python_buffer::marker(&state)
            .unwrap()
            .map_or(0, |m| m.last_id);
        assert!(
            p.id - saved <= MARKER_EVERY as i64 + 1,
            "item {} with the marker at {saved}",
            p.id
        );
        pushed += 1;
        Ok::<_, String>(())
    })
    .unwrap();
    assert_eq!((report.pushed, pushed), (256, 256));
}

#[test]
fn a_crash_mid_import_repeats_at_most_marker_every_pushes() {
    let (_tmp, buffer, state) = setup("buffer");
    append_items(&buffer, 250);
    let mut seen = Vec::new();
    // A panic inside `push` stands in for the process dying: nothing after it runs.
    let crashed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        import(&buffer, &state, |p: LegacyPayload| {
            if seen.len() == 180 {
                panic!("crash");
            }
            seen.push(p.id);
            Ok::<_, String>(())
        })
    }));
    assert!(crashed.is_err());
    let (_, rest) = collect(&buffer, &state);
    let repeated = rest.iter().filter(|p| seen.contains(&p.id)).count();
    assert!(repeated as u64 <= MARKER_EVERY, "{repeated} pushed twice");
    seen.extend(rest.iter().map(|p| p.id));
    seen.sort();
    seen.dedup();
    assert_eq!(seen, (2..=257).collect::<Vec<i64>>(), "nothing lost");
}

#[test]
fn a_missing_directory_or_database_is_a_no_op() {
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("state");
    let mut calls = 0;
    let mut push = |_: LegacyPayload| {
        calls += 1;
        Ok::<_, String>(())
    };
    let none = ImportReport::default();
    assert_eq!(
        import(&tmp.path().join("absent"), &state, &mut push).unwrap(),
        none
    );
    assert_eq!(import(tmp.path(), &state, &mut push).unwrap(), none);
    assert_eq!(calls, 0);
    assert!(!state.exists(), "no marker, not even the state directory");
}

#[test]
fn a_database_that_is_not_a_persist_queue_is_an_error_naming_it() {
    let tmp = tempfile::tempdir().unwrap();
    Connection::open(tmp.path().join("data.db"))
        .unwrap()
        .execute("CREATE TABLE other (x)", [])
        .unwrap();
    let err = import(tmp.path(), &tmp.path().join("state"), |_| {
        Ok::<_, String>(())
    })
    .unwrap_err();
    assert!(matches!(err, PythonBufferError::NotAQueue { .. }), "{err}");
    assert!(err.to_string().contains("data.db"), "{err}");
}

#[test]
fn a_marker_beyond_the_files_highest_id_means_another_file() {
    // Same inode but a marker past any `_id` this file ever issued: the file was replaced and its
    // inode number reused, so it is imported from its beginning.
    let (_tmp, buffer, state) = setup("buffer");
    collect(&buffer, &state);
    let path = state.join(python_buffer::MARKER_FILE_NAME);
    let mut marker: Value = serde_json::from_slice(&fs::read(&path).unwrap()).unwrap();
    marker["last_id"] = json!(1000);
    fs::write(&path, serde_json::to_vec(&marker).unwrap()).unwrap();
    let (report, got) = collect(&buffer, &state);
    assert_eq!((report.pushed, report.already_imported), (6, 0));
    assert_eq!(got.len(), 6);
}

#[test]
fn the_log_is_read_even_when_the_shm_index_cannot_be_used() {
    let (_tmp, buffer, state) = setup("buffer-unclean");
    // SQLite cannot map its -shm index when a directory stands in its place, as when the
    // directory is not writable for this agent and the Python agent left none.
    fs::remove_file(buffer.join("data.db-shm")).unwrap();
    fs::create_dir(buffer.join("data.db-shm")).unwrap();
    let files = ["data.db", "data.db-wal"].map(|f| fs::read(buffer.join(f)).unwrap());
    let (report, _) = collect(&buffer, &state);
    assert_eq!(report.pushed, 2);
    assert_eq!(
        ["data.db", "data.db-wal"].map(|f| fs::read(buffer.join(f)).unwrap()),
        files
    );
}

#[test]
fn a_file_that_is_not_a_database_is_an_error_naming_it() {
    let tmp = tempfile::tempdir().unwrap();
    fs::write(tmp.path().join("data.db"), vec![0x5a; 8192]).unwrap();
    let state = tmp.path().join("state");
    let err = import(tmp.path(), &state, |_| Ok::<_, String>(())).unwrap_err();
    assert!(matches!(err, PythonBufferError::Open { .. }), "{err}");
    assert!(err.to_string().contains("data.db"), "{err}");
    assert!(!state.exists(), "no marker");
}

#[test]
fn a_damaged_page_stops_the_import_with_its_progress_recorded() {
    let (_tmp, buffer, state) = setup("buffer");
    append_items(&buffer, 250);
    let db = buffer.join("data.db");
    Connection::open(&db)
        .unwrap()
        .execute_batch("PRAGMA wal_checkpoint(TRUNCATE)")
        .unwrap();
    // Scribble over the last page: a leaf holding the newest rows.
    let mut bytes = fs::read(&db).unwrap();
    let len = bytes.len();
    bytes[len - 4096..].fill(0xa5);
    fs::write(&db, bytes).unwrap();

    let mut first = Vec::new();
    let err = import(&buffer, &state, |p: LegacyPayload| {
        first.push(p.id);
        Ok::<_, String>(())
    })
    .unwrap_err();
    assert!(matches!(err, PythonBufferError::Read { .. }), "{err}");
    assert!(err.to_string().contains("data.db"), "{err}");
    assert!(
        !first.is_empty() && first.len() < 256,
        "{} pushed",
        first.len()
    );
    let marker = python_buffer::marker(&state).unwrap().unwrap();
    assert_eq!(Some(&marker.last_id), first.last());

    let mut second = Vec::new();
    let _ = import(&buffer, &state, |p: LegacyPayload| {
        second.push(p.id);
        Ok::<_, String>(())
    });
    assert!(second.is_empty(), "nothing pushed twice: {second:?}");
}
