//! A node started again from its data folder reports its log as stored, from its first status
//! call on: the start-up safety check (`tally node` refuses to rejoin when a leader recorded
//! more entries as stored here than the log holds) reads that status right after the start.

use std::time::Duration;

use tally_node::{Node, NodeConfig, StatusDetail};

fn config(data_dir: &std::path::Path) -> NodeConfig {
    NodeConfig {
        data_dir: data_dir.to_path_buf(),
        listen_addr: "127.0.0.1:0".parse().expect("address"),
        advertise_addr: Some("127.0.0.1:1".into()),
        metrics_addr: None,
        shard_count: 2,
        ..NodeConfig::default()
    }
}

/// Each group's id and last log index, as the node's status reports them.
async fn log_ends(node: &Node) -> Vec<(tally_raft::GroupId, u64)> {
    node.status(StatusDetail::Raft).await.iter().map(|view| (view.group_id, view.last_log_index)).collect()
}

// A current-thread runtime: the groups' Raft cores get no turn between `Node::start` returning
// and the first status call unless the status call itself waits for them.
#[tokio::test(flavor = "current_thread")]
async fn the_first_status_after_a_restart_reports_the_stored_log() {
    let folder = tempfile::tempdir().expect("temporary folder");
    let node = Node::start(config(folder.path())).await.expect("first start");
    node.initialize_alone().await.expect("initialized alone");
    assert!(node.wait_until_ready(Duration::from_secs(30)).await, "every group elects its leader");
    let before = log_ends(&node).await;
    assert!(
        before.iter().all(|(_, last)| *last > 0),
        "every group logged its initial membership: {before:?}"
    );
    node.shutdown().await;
    drop(node);

    let node = Node::start(config(folder.path())).await.expect("second start");
    let after = log_ends(&node).await;
    assert_eq!(after, before, "the log ends where it ended before the stop");
    node.shutdown().await;
}
