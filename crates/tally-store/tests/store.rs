//! Integration tests of `NodeStore`, `LogStore` and `StateTree` beyond openraft's suite:
//! reopening, the flusher's group commit, state-tree batches and scans, corruption detection.

mod common;

use std::path::Path;

use common::{normal_entries, normal_entry, TestConfig};
use openraft::storage::{RaftLogStorage, RaftLogStorageExt};
use openraft::testing::log_id;
use openraft::{EntryPayload, RaftLogReader, Vote};
use tally_store::{
    decode_value, encode_value, wait_until_sled_unlocked, NodeStore, StoreConfig, StoreError,
    FLUSH_STALL_ABORT_MS_MIN,
};

fn payloads(entries: &[openraft::Entry<TestConfig>]) -> Vec<(u64, String)> {
    entries
        .iter()
        .map(|e| match &e.payload {
            EntryPayload::Normal(d) => (e.log_id.index, d.clone()),
            other => panic!("unexpected payload {other:?}"),
        })
        .collect()
}

#[tokio::test]
async fn log_vote_and_state_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let node = NodeStore::open(dir.path()).unwrap();
        let mut log = node.log_store::<TestConfig>(7).unwrap();
        log.blocking_append(normal_entries(1..=10)).await.unwrap();
        log.save_vote(&Vote::new(3, 1)).await.unwrap();
        log.purge(log_id(1, 0, 3)).await.unwrap();
        log.truncate(log_id(1, 0, 9)).await.unwrap();
        log.save_committed(Some(log_id(1, 0, 8))).await.unwrap();
        let sm = node.state_tree(7).unwrap();
        sm.write_batch(vec![(b"k".to_vec(), Some(b"v".to_vec()))]).unwrap();
        // Nothing else to flush explicitly: dropping the last handle runs the final flush.
    }
    let node = NodeStore::open(dir.path()).unwrap();
    let mut log = node.log_store::<TestConfig>(7).unwrap();
    let state = log.get_log_state().await.unwrap();
    assert_eq!(state.last_purged_log_id, Some(log_id(1, 0, 3)));
    assert_eq!(state.last_log_id, Some(log_id(1, 0, 8)));
    assert_eq!(log.read_vote().await.unwrap(), Some(Vote::new(3, 1)));
    assert_eq!(log.read_committed().await.unwrap(), Some(log_id(1, 0, 8)));
    let entries = log.try_get_log_entries(..).await.unwrap();
    assert_eq!(payloads(&entries), (4..=8).map(|i| (i, format!("op-{i}"))).collect::<Vec<_>>());
    assert!(log.try_get_log_entries(0..4).await.unwrap().is_empty());
    assert_eq!(node.state_tree(7).unwrap().get(b"k").unwrap(), Some(b"v".to_vec()));

    // Groups are isolated from each other.
    let mut other = node.log_store::<TestConfig>(8).unwrap();
    let state = other.get_log_state().await.unwrap();
    assert_eq!((state.last_purged_log_id, state.last_log_id), (None, None));
    assert_eq!(other.read_vote().await.unwrap(), None);
    assert!(node.size_on_disk_bytes().unwrap() > 0);
}

#[tokio::test]
async fn durable_writes_survive_reopen_with_explicit_flush() {
    let dir = tempfile::tempdir().unwrap();
    let node = NodeStore::open(dir.path()).unwrap();
    let mut log = node.log_store::<TestConfig>(1).unwrap();
    log.blocking_append(normal_entries(0..=300)).await.unwrap();
    let stats = node.log_write_stats();
    assert!(stats.syncs >= 1 && stats.requests == 1, "{stats:?}");
    drop(log);
    drop(node);

    let node = NodeStore::open(dir.path()).unwrap();
    let mut log = node.log_store::<TestConfig>(1).unwrap();
    // Big-endian keys: ordering holds past 255 entries.
    let entries = log.try_get_log_entries(250..=300).await.unwrap();
    assert_eq!(entries.iter().map(|e| e.log_id.index).collect::<Vec<_>>(), (250..=300).collect::<Vec<_>>());
    assert_eq!(log.get_log_state().await.unwrap().last_log_id, Some(log_id(1, 0, 300)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_log_writer_group_commits_concurrent_appends_across_groups() {
    const GROUPS: u32 = 32;
    const APPENDS: u64 = 25;
    let node = NodeStore::temporary().unwrap();
    let mut tasks = tokio::task::JoinSet::new();
    for group in 0..GROUPS {
        let mut log = node.log_store::<TestConfig>(group).unwrap();
        tasks.spawn(async move {
            for i in 1..=APPENDS {
                // Returns only once the append's LogFlushed callback has fired with Ok.
                log.blocking_append([normal_entry(i)]).await.unwrap();
            }
            log
        });
    }
    while let Some(log) = tasks.join_next().await {
        let mut log = log.unwrap();
        let entries = log.try_get_log_entries(1..=APPENDS).await.unwrap();
        assert_eq!(entries.len() as u64, APPENDS, "group {}", log.group_id());
    }
    let stats = node.log_write_stats();
    let expected = u64::from(GROUPS) * APPENDS;
    assert_eq!(stats.requests, expected, "{stats:?}");
    assert!(stats.syncs < stats.requests, "no group commit observed: {stats:?}");
    println!("group commit: {stats:?}");
}

#[tokio::test]
async fn concurrent_flush_calls_share_flushes() {
    let node = NodeStore::temporary().unwrap();
    let sm = node.state_tree(0).unwrap();
    sm.write_batch(vec![(b"a".to_vec(), Some(b"1".to_vec()))]).unwrap();
    // All 500 requests are queued before the first one can complete (single-threaded runtime:
    // the spawned tasks all send before this task awaits), so far fewer flushes than requests.
    let waits: Vec<_> = (0..500)
        .map(|_| {
            let node = node.clone();
            tokio::spawn(async move { node.flush().await })
        })
        .collect();
    for w in waits {
        w.await.unwrap().unwrap();
    }
    let stats = node.flush_stats();
    assert_eq!(stats.requests, 500);
    assert!(stats.flushes < 500, "{stats:?}");
}

#[test]
fn state_tree_batches_scans_and_replace() {
    let node = NodeStore::temporary().unwrap();
    let tree = node.state_tree(2).unwrap();
    let acct = |i: u32| [b"acct/".as_slice(), &i.to_be_bytes()].concat();

    // Puts and deletes in one batch; a later change to the same key wins.
    tree.write_batch(vec![
        (b"x".to_vec(), Some(b"1".to_vec())),
        (b"y".to_vec(), Some(b"2".to_vec())),
        (b"y".to_vec(), None),
    ])
    .unwrap();
    assert_eq!(tree.get(b"x").unwrap(), Some(b"1".to_vec()));
    assert_eq!(tree.get(b"y").unwrap(), None);
    tree.write_batch(vec![(b"x".to_vec(), None), (b"z".to_vec(), Some(b"3".to_vec()))]).unwrap();
    assert_eq!(tree.get(b"x").unwrap(), None);
    assert_eq!(tree.get(b"z").unwrap(), Some(b"3".to_vec()));

    // 600 keys under "acct/" (big-endian numbers, so past 255), with neighbours on both sides.
    let mut changes: Vec<_> = (0..600u32).map(|i| (acct(i), Some(i.to_be_bytes().to_vec()))).collect();
    changes.push((b"acc".to_vec(), Some(b"before".to_vec())));
    changes.push((b"acct0".to_vec(), Some(b"after".to_vec())));
    tree.write_batch(changes).unwrap();
    let keys = |v: Vec<(Vec<u8>, Vec<u8>)>| v.into_iter().map(|(k, _)| k).collect::<Vec<_>>();

    let all = tree.scan_prefix(b"acct/", None, false, usize::MAX).unwrap();
    assert_eq!(keys(all), (0..600).map(acct).collect::<Vec<_>>());
    let first = tree.scan_prefix(b"acct/", None, false, 3).unwrap();
    assert_eq!(first, (0..3).map(|i: u32| (acct(i), i.to_be_bytes().to_vec())).collect::<Vec<_>>());
    let from = tree.scan_prefix(b"acct/", Some(&acct(255)), false, 3).unwrap();
    assert_eq!(keys(from), vec![acct(255), acct(256), acct(257)]);
    let tail = tree.scan_prefix(b"acct/", Some(&acct(598)), false, 10).unwrap();
    assert_eq!(keys(tail), vec![acct(598), acct(599)]);

    let last = tree.scan_prefix(b"acct/", None, true, 2).unwrap();
    assert_eq!(keys(last), vec![acct(599), acct(598)]);
    let down = tree.scan_prefix(b"acct/", Some(&acct(256)), true, 3).unwrap();
    assert_eq!(keys(down), vec![acct(256), acct(255), acct(254)]);
    let bottom = tree.scan_prefix(b"acct/", Some(&acct(1)), true, 10).unwrap();
    assert_eq!(keys(bottom), vec![acct(1), acct(0)]);
    // A start between keys: inclusive bound, nearest key in the scan direction.
    let between = [b"acct/".as_slice(), &10u32.to_be_bytes(), b"\x00"].concat();
    assert_eq!(keys(tree.scan_prefix(b"acct/", Some(&between), true, 1).unwrap()), vec![acct(10)]);
    assert_eq!(keys(tree.scan_prefix(b"acct/", Some(&between), false, 1).unwrap()), vec![acct(11)]);

    assert!(tree.scan_prefix(b"acct/", None, false, 0).unwrap().is_empty());
    assert!(tree.scan_prefix(b"none/", None, true, 5).unwrap().is_empty());
    assert!(matches!(
        tree.scan_prefix(b"acct/", Some(b"other"), false, 5),
        Err(StoreError::InvalidArgument(_))
    ));
    // A prefix of 0xff bytes has no successor: the scan runs to the end of the tree.
    tree.write_batch(vec![(vec![0xff, 0xff, 1], Some(vec![1])), (vec![0xff, 0xff], Some(vec![0]))]).unwrap();
    assert_eq!(
        keys(tree.scan_prefix(&[0xff, 0xff], None, true, 5).unwrap()),
        vec![vec![0xff, 0xff, 1], vec![0xff, 0xff]]
    );
    // Empty prefix: the whole tree.
    let everything = tree.scan_prefix(b"", None, false, usize::MAX).unwrap();
    assert_eq!(everything.len(), 600 + 2 + 1 + 2);

    // iter_all walks everything in key order.
    let all: Vec<_> = tree.iter_all().collect::<Result<_, _>>().unwrap();
    assert_eq!(all, everything);
    assert!(all.windows(2).all(|w| w[0].0 < w[1].0));

    // replace_all: exactly the new content remains.
    let new = vec![(b"acct/new".to_vec(), b"n".to_vec()), (b"z".to_vec(), b"33".to_vec())];
    tree.replace_all(new.clone()).unwrap();
    let all: Vec<_> = tree.iter_all().collect::<Result<_, _>>().unwrap();
    assert_eq!(all, new);
    tree.replace_all(Vec::new()).unwrap();
    assert_eq!(tree.iter_all().count(), 0);

    // Other groups' trees are untouched.
    assert_eq!(node.state_tree(3).unwrap().iter_all().count(), 0);
}

#[test]
fn flipped_state_value_is_corrupt() {
    let node = NodeStore::temporary().unwrap();
    let tree = node.state_tree(0).unwrap();
    let value = encode_value(&(42u64, "balance".to_string())).unwrap();
    tree.write_batch(vec![(b"acct".to_vec(), Some(value))]).unwrap();
    let decoded: (u64, String) = decode_value(&tree.get(b"acct").unwrap().unwrap(), "acct").unwrap();
    assert_eq!(decoded, (42, "balance".to_string()));

    let mut raw = tree.get(b"acct").unwrap().unwrap();
    let last = raw.len() - 1;
    raw[last] ^= 0x01;
    tree.write_batch(vec![(b"acct".to_vec(), Some(raw.clone()))]).unwrap();
    let err = decode_value::<(u64, String)>(&tree.get(b"acct").unwrap().unwrap(), "account 7").unwrap_err();
    match err {
        StoreError::Corrupt { what } => {
            assert!(what.starts_with("account 7") && what.contains("crc32"), "{what}")
        }
        other => panic!("expected Corrupt, got {other:?}"),
    }
    raw[last] ^= 0x01;
    raw[0] = 2;
    assert!(matches!(decode_value::<(u64, String)>(&raw, "v"), Err(StoreError::Corrupt { .. })));
}

/// A crash in the middle of a raft-engine write leaves a torn record at the end of its active
/// file: the open cuts it off and the group's log is a prefix of what was appended, each entry
/// whole (raft-engine checks every record, the store checks each entry's own crc and index).
#[tokio::test]
async fn a_torn_log_tail_opens_as_a_prefix() {
    let dir = tempfile::tempdir().unwrap();
    {
        let node = NodeStore::open(dir.path()).unwrap();
        let mut log = node.log_store::<TestConfig>(3).unwrap();
        for index in 1..=20 {
            log.blocking_append(normal_entries(index..=index)).await.unwrap();
        }
    }
    let log_folder = dir.path().join(tally_store::RAFT_LOG_FOLDER);
    let active = std::fs::read_dir(&log_folder)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|extension| extension == "raftlog"))
        .max()
        .expect("a raft-engine log file");
    let length = std::fs::metadata(&active).unwrap().len();
    let file = std::fs::OpenOptions::new().write(true).open(&active).unwrap();
    file.set_len(length - 20).unwrap();
    drop(file);

    let node = NodeStore::open(dir.path()).unwrap();
    let mut log = node.log_store::<TestConfig>(3).unwrap();
    let last = log.get_log_state().await.unwrap().last_log_id.expect("a prefix survives").index;
    assert!((1..20).contains(&last), "the torn last append is gone, the rest is kept: {last}");
    let entries = log.try_get_log_entries(1..=last).await.unwrap();
    assert_eq!(payloads(&entries), (1..=last).map(|i| (i, format!("op-{i}"))).collect::<Vec<_>>());
}

#[test]
fn a_second_open_of_the_same_folder_is_refused_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    let _first = tally_store::NodeStore::open(&path).unwrap();
    let error = tally_store::NodeStore::open(&path).unwrap_err();
    assert!(matches!(error, tally_store::StoreError::Locked { .. }), "{error:?}");
    assert!(error.to_string().contains("in use by another process"), "{error}");
}

/// CI once failed `log_vote_and_state_survive_reopen` with `Locked`: sled's background jobs
/// still held its file lock for a moment after the last handle was dropped. An open now waits
/// for that release (up to `LOCK_WAIT_MS`), so a reopen right after a drop must succeed. Each cycle
/// writes enough (several of sled's 8 MiB write buffers) for background writes to be in flight
/// at the drop; without the wait this failed within a few cycles here.
#[tokio::test]
async fn a_closed_store_reopens_at_once_however_much_was_being_written() {
    let dir = tempfile::tempdir().unwrap();
    let value = vec![0x5a_u8; 64 * 1024];
    for cycle in 0..25u64 {
        let node = NodeStore::open(dir.path())
            .unwrap_or_else(|error| panic!("reopen {cycle} right after the drop failed: {error}"));
        let mut log = node.log_store::<TestConfig>(1).unwrap();
        let first = cycle * 10 + 1;
        log.blocking_append(normal_entries(first..=first + 9)).await.unwrap();
        let state = node.state_tree(1).unwrap();
        let batch =
            (0..64u32).map(|index| (format!("c{cycle}-{index}").into_bytes(), Some(value.clone()))).collect();
        state.write_batch(batch).unwrap();
        drop(state);
        drop(log);
        drop(node);
    }
    let node = NodeStore::open(dir.path()).unwrap();
    let state = node.state_tree(1).unwrap();
    assert_eq!(state.get(b"c24-63").unwrap().as_deref(), Some(&value[..]));
    let mut log = node.log_store::<TestConfig>(1).unwrap();
    assert_eq!(log.get_log_state().await.unwrap().last_log_id.map(|id| id.index), Some(250));
}

#[tokio::test]
async fn stored_groups_lists_hosted_groups_until_they_are_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let node = NodeStore::open(dir.path()).unwrap();
    assert_eq!(node.stored_groups(), Vec::<u32>::new());
    for group_id in [3, 0, 12] {
        let mut log = node.log_store::<TestConfig>(group_id).unwrap();
        log.blocking_append(normal_entries(1..=2)).await.unwrap();
        node.state_tree(group_id).unwrap();
    }
    assert_eq!(node.stored_groups(), vec![0, 3, 12]);
    assert!(node.drop_group(3).unwrap());
    assert!(!node.drop_group(3).unwrap(), "nothing left to drop");
    assert_eq!(node.stored_groups(), vec![0, 12]);
}

/// Files of the value log, the home of large state values (see `value_log.rs`).
fn value_files(dir: &Path) -> Vec<std::ffi::OsString> {
    match std::fs::read_dir(dir.join(tally_store::VALUE_LOG_FOLDER)) {
        Ok(entries) => entries.map(|entry| entry.unwrap().file_name()).collect(),
        Err(_) => Vec::new(),
    }
}

/// Large values live in the value log: they read back through every read of the tree and
/// after a reopen; a dropped group's files go after the flush that makes the drop durable, and
/// another group's values are untouched.
#[tokio::test]
async fn large_values_live_in_the_value_log_and_go_with_their_group() {
    let dir = tempfile::tempdir().unwrap();
    let large = |seed: u8| vec![seed; tally_store::SEPARATED_VALUE_BYTES_MIN * 3];
    {
        let node = NodeStore::open(dir.path()).unwrap();
        for group_id in [1, 2] {
            let tree = node.state_tree(group_id).unwrap();
            let seed = group_id as u8;
            tree.write_batch(vec![
                (vec![b'j', 1], Some(large(seed))),
                (vec![b'j', 2], Some(large(seed + 10))),
                (b"small".to_vec(), Some(vec![seed])),
            ])
            .unwrap();
        }
        assert_eq!(value_files(dir.path()).len(), 1, "one stream ('j'), one file so far");
        let tree = node.state_tree(2).unwrap();
        assert_eq!(tree.get(&[b'j', 2]).unwrap(), Some(large(12)));
        let scanned = tree.scan_prefix(b"j", None, false, 10).unwrap();
        assert_eq!(scanned, vec![(vec![b'j', 1], large(2)), (vec![b'j', 2], large(12))]);
        let all: Vec<_> = tree.iter_prefix(b"j").map(|item| item.unwrap().1).collect();
        assert_eq!(all, vec![large(2), large(12)]);
        node.flush().await.unwrap();
    }
    let node = NodeStore::open(dir.path()).unwrap();
    assert_eq!(node.state_tree(1).unwrap().get(&[b'j', 1]).unwrap(), Some(large(1)));
    // The reopened store appends to a new file; group 1's values are in both.
    node.state_tree(1).unwrap().write_batch(vec![(vec![b'j', 3], Some(large(7)))]).unwrap();
    assert_eq!(value_files(dir.path()).len(), 2);
    assert!(node.drop_group(1).unwrap());
    node.flush().await.unwrap();
    assert_eq!(
        value_files(dir.path()).len(),
        2,
        "group 2 still points into the first file; the second takes appends"
    );
    node.state_tree(2).unwrap().write_batch(vec![(vec![b'j', 1], None), (vec![b'j', 2], None)]).unwrap();
    node.flush().await.unwrap();
    assert_eq!(value_files(dir.path()).len(), 1, "nothing points into the first file any more");
    drop(node);
    let node = NodeStore::open(dir.path()).unwrap();
    assert!(value_files(dir.path()).is_empty(), "the open deletes the file nothing points into");
    assert_eq!(node.state_tree(2).unwrap().get(b"small").unwrap(), Some(vec![2]));
}

/// Copies sled's own files (not the vote files nor the flush mark) from `from` to `to`.
fn copy_sled_files(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        if entry.file_name() == "tally-votes" || entry.file_name() == "tally-flush-mark" {
            continue;
        }
        if entry.file_type().unwrap().is_dir() {
            copy_sled_files(&entry.path(), &to.join(entry.file_name()));
        } else {
            std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
        }
    }
}

/// Goal: `open_with` refuses a flush stall bound below the minimum before touching the folder,
/// and a store opened with a valid bound flushes with the watchdog quiet. Method: open with a
/// bound one below the minimum, then with the minimum, append and flush, read the stats.
#[tokio::test]
async fn open_with_checks_the_flush_stall_bound_and_the_watchdog_stays_quiet() {
    let dir = tempfile::tempdir().unwrap();
    let too_short =
        StoreConfig { flush_stall_abort_ms: FLUSH_STALL_ABORT_MS_MIN - 1, ..StoreConfig::default() };
    let error = NodeStore::open_with(&dir.path().join("db"), &too_short).unwrap_err();
    assert!(matches!(error, StoreError::InvalidArgument(ref text) if text.contains("flush_stall_abort_ms")));
    assert!(!dir.path().join("db").exists(), "nothing was created");

    let config = StoreConfig { flush_stall_abort_ms: FLUSH_STALL_ABORT_MS_MIN, ..StoreConfig::default() };
    let node = NodeStore::open_with(&dir.path().join("db"), &config).unwrap();
    let mut log = node.log_store::<TestConfig>(1).unwrap();
    log.blocking_append(normal_entries(1..=50)).await.unwrap();
    node.flush().await.unwrap();
    let stats = node.flush_stats();
    assert!(stats.flushes >= 1, "{stats:?}");
    assert_eq!((stats.stalls, stats.flush_in_progress_ns), (0, 0), "{stats:?}");
}

/// CI once saw a node panic at start on a `db` file with one flipped byte: sled 0.34 panicked
/// ("cannot find pid 9 in view_for_key") while `open` read every tree, and the process died
/// with a panic instead of an error that names its folder. Looking closer showed worse: most
/// flipped bytes made sled open without complaint holding *older* data (it recovers the prefix
/// of its log before the damage), the whole database gone for a flip near the start, and the
/// node would have started without log entries it had acknowledged. Goal: one flipped byte
/// anywhere in `db` gives either a store that holds every flushed write, or `Damaged` naming
/// the folder; never a panic out of `open`, never a silent loss. Method: fill a store with logs
/// and state of three groups, then for `POSITIONS` offsets spread over the whole file flip one
/// byte in a fresh copy, open it, and compare what it holds with what was flushed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flipped_byte_anywhere_in_the_database_opens_whole_or_is_refused() {
    const POSITIONS: u64 = 400;
    const ROUNDS: u64 = 8;
    const ENTRIES_PER_ROUND: u64 = 150;
    const ACCOUNTS: u64 = 300;
    let original = tempfile::tempdir().unwrap();
    {
        // Like a node's life: rounds of appends, state rewrites and log purges, so that the
        // file holds several segments, rewritten pages and garbage, as the CI node's did.
        let node = NodeStore::open(original.path()).unwrap();
        let padding = "x".repeat(400);
        for round in 0..ROUNDS {
            for group in [1, 2, 3] {
                let mut log = node.log_store::<TestConfig>(group).unwrap();
                let first = round * ENTRIES_PER_ROUND + 1;
                let entries = (first..first + ENTRIES_PER_ROUND)
                    .map(|index| {
                        let mut entry = normal_entry(index);
                        entry.payload = EntryPayload::Normal(format!("op-{index}-{padding}"));
                        entry
                    })
                    .collect::<Vec<_>>();
                log.blocking_append(entries).await.unwrap();
                log.save_vote(&Vote::new(round + 1, 1)).await.unwrap();
                if round > 0 {
                    log.purge(log_id(1, 0, first - 20)).await.unwrap();
                }
                let writes = (0..ACCOUNTS)
                    .map(|account| {
                        (
                            account.to_be_bytes().to_vec(),
                            Some(encode_value(&(account, round, group)).unwrap()),
                        )
                    })
                    .collect();
                node.state_tree(group).unwrap().write_batch(writes).unwrap();
            }
            node.flush().await.unwrap();
        }
    }
    assert!(wait_until_sled_unlocked(original.path(), 10_000));
    let size_bytes = std::fs::metadata(original.path().join("db")).unwrap().len();
    let last_index = ROUNDS * ENTRIES_PER_ROUND;
    let (mut opened, mut refused) = (0, Vec::new());
    for position in 0..POSITIONS {
        // Off the 4 KiB grid, where sled's headers and zero padding line up.
        let offset = size_bytes * position / POSITIONS + 7;
        let copy = tempfile::tempdir().unwrap();
        copy_sled_files(original.path(), copy.path());
        std::fs::copy(original.path().join("tally-flush-mark"), copy.path().join("tally-flush-mark"))
            .unwrap();
        let file = copy.path().join("db");
        let mut bytes = std::fs::read(&file).unwrap();
        bytes[offset as usize] ^= 0x5a;
        std::fs::write(&file, bytes).unwrap();
        match NodeStore::open(copy.path()) {
            Ok(node) => {
                opened += 1;
                for group in [1, 2, 3] {
                    let mut log = node.log_store::<TestConfig>(group).unwrap();
                    let state = log.get_log_state().await.unwrap();
                    assert_eq!(
                        state.last_log_id.map(|id| id.index),
                        Some(last_index),
                        "offset {offset} of {size_bytes}: group {group} opened without its last entries"
                    );
                    let held: (u64, u64, u32) = decode_value(
                        &node.state_tree(group).unwrap().get(&0u64.to_be_bytes()).unwrap().unwrap(),
                        "account 0",
                    )
                    .unwrap();
                    assert_eq!(
                        held,
                        (0, ROUNDS - 1, group),
                        "offset {offset}: group {group} opened with old state"
                    );
                }
            }
            Err(StoreError::Damaged { path, detail }) => {
                assert_eq!(path, copy.path().display().to_string());
                // A refused open counts no flush: the next open must see the same loss.
                assert_eq!(
                    std::fs::read(copy.path().join("tally-flush-mark")).unwrap(),
                    std::fs::read(original.path().join("tally-flush-mark")).unwrap(),
                    "offset {offset}: the refused open rewrote the flush mark"
                );
                refused.push(detail);
            }
            Err(other) => panic!("offset {offset} of {size_bytes}: neither opened nor Damaged: {other:?}"),
        }
    }
    let lost_writes =
        refused.iter().filter(|detail| detail.contains("lost writes it had made durable")).count();
    println!(
        "{size_bytes}-byte db, {POSITIONS} flipped bytes: {opened} opened whole; {} refused, {lost_writes} of them \
         for lost flushed writes; first refusals: {:#?}",
        refused.len(),
        refused.iter().take(3).collect::<Vec<_>>()
    );
    assert!(
        lost_writes > 0,
        "no flip made sled lose flushed writes: the test no longer damages what it should"
    );
}
