//! Group commit for one shard: commands that arrive together become one Raft entry.
//!
//! openraft 0.9 makes one log entry per `client_write` and waits for its flush, so a shard
//! that proposed each command alone would be capped at about one command per fsync. The
//! proposer takes everything queued (up to [`BATCH_COMMANDS_MAX`] commands), stamps the log
//! time, proposes one entry, and fans the outcomes back out. While entries are in flight new
//! commands queue up, so batches grow with load by themselves. Both the queue and the number
//! of entries in flight are bounded, because openraft's own API queue is not.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use openraft::error::{ClientWriteError as OpenraftClientWriteError, RaftError as OpenraftRaftError};
use tally_ledger::limits::BATCH_COMMANDS_MAX;
use tally_ledger::{BatchHeader, Command, CommandOutcome, ShardBatch};
use tokio::sync::{mpsc, oneshot, Semaphore};

use crate::types::{GroupId, GroupRequest, GroupResponse, NodeId, Raft, TallyNode};

/// How many times the proposer steps back behind the runnable tasks before it drains its
/// queue (each lets the requests already received reach the queue).
const RUNNABLE_YIELDS: usize = 2;

/// Why a proposal did not produce outcomes. Every variant is retryable with the same keys.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProposeError {
    #[error("this node is not the leader of group {group_id}")]
    NotLeader { group_id: GroupId, leader_id: Option<NodeId>, leader: Option<TallyNode> },
    #[error("group {group_id} already has {queued_proposals_max} proposals queued; back off")]
    Overloaded { group_id: GroupId, queued_proposals_max: usize },
    /// The shard retains as many idempotency keys as its budget allows: new keys wait until
    /// old ones expire. Retries of retained keys still get their answers.
    #[error(
        "group {group_id} retains {retained_keys} idempotency keys, its budget (retained_keys_per_shard_max \
         = {retained_keys_max}); writes with new keys are refused until older keys expire"
    )]
    RetentionFull { group_id: GroupId, retained_keys: usize, retained_keys_max: usize },
    #[error("group {group_id} is unavailable: {reason}")]
    Unavailable { group_id: GroupId, reason: String },
    /// An operator's request that the group's current state does not allow (a membership change
    /// while another is in progress, a learner that does not exist); not retryable as is.
    #[error("group {group_id} refused: {reason}")]
    Refused { group_id: GroupId, reason: String },
}

#[derive(Clone, Copy, Debug)]
pub struct ProposerConfig {
    /// Proposals (each one or more commands) waiting for a batch.
    pub queued_proposals_max: usize,
    /// Entries proposed and not yet applied. Two let the next batch be appended while the
    /// previous one is replicated and applied; one makes every batch wait for the previous
    /// entry's whole round (measured in docs/benchmarks.md: 1.2x in the 3-node cluster, even
    /// or better on one node).
    pub inflight_entries_max: usize,
    /// Idempotency retention stamped into every batch.
    pub idempotency_retention_ms: u64,
}

impl Default for ProposerConfig {
    fn default() -> Self {
        Self {
            queued_proposals_max: 16_384,
            inflight_entries_max: 2,
            idempotency_retention_ms: tally_ledger::limits::IDEMPOTENCY_RETENTION_MS_DEFAULT,
        }
    }
}

struct Proposal {
    commands: Vec<Command>,
    reply: oneshot::Sender<Result<Vec<CommandOutcome>, ProposeError>>,
}

/// Handle to a shard's proposer task; cheap to clone.
#[derive(Clone)]
pub struct Proposer {
    group_id: GroupId,
    queue: mpsc::Sender<Proposal>,
    queued_proposals_max: usize,
    paused: Arc<tokio::sync::watch::Sender<bool>>,
}

impl Proposer {
    pub fn start(group_id: GroupId, raft: Raft, config: ProposerConfig) -> Self {
        let (queue, receiver) = mpsc::channel(config.queued_proposals_max);
        let (paused, paused_receiver) = tokio::sync::watch::channel(false);
        tokio::spawn(run(group_id, raft, config, receiver, paused_receiver));
        Self { group_id, queue, queued_proposals_max: config.queued_proposals_max, paused: Arc::new(paused) }
    }

    /// While paused, proposals wait in the queue (callers keep waiting, within their own
    /// deadlines); on resume they are proposed, and answered not-leader if leadership moved.
    /// Used while a shard's leadership is moved, so that the target's log is complete and no
    /// append renews the followers' leases.
    pub fn set_paused(&self, paused: bool) {
        self.paused.send_replace(paused);
    }

    /// Proposes the commands (in one entry, possibly with others') and waits for their outcomes.
    pub async fn propose(&self, commands: Vec<Command>) -> Result<Vec<CommandOutcome>, ProposeError> {
        assert!(!commands.is_empty(), "an empty proposal is a caller bug");
        assert!(commands.len() <= BATCH_COMMANDS_MAX, "callers split proposals at BATCH_COMMANDS_MAX");
        let (reply, answer) = oneshot::channel();
        self.queue.try_send(Proposal { commands, reply }).map_err(|error| match error {
            mpsc::error::TrySendError::Full(_) => ProposeError::Overloaded {
                group_id: self.group_id,
                queued_proposals_max: self.queued_proposals_max,
            },
            mpsc::error::TrySendError::Closed(_) => self.stopped(),
        })?;
        answer.await.map_err(|_| self.stopped())?
    }

    /// Proposes an entry without commands: it carries the leader's log time, so applying it
    /// releases every hold that has expired by then (expiry happens only through the log).
    pub async fn propose_clock_tick(&self) -> Result<(), ProposeError> {
        let (reply, answer) = oneshot::channel();
        self.queue.send(Proposal { commands: Vec::new(), reply }).await.map_err(|_| self.stopped())?;
        answer.await.map_err(|_| self.stopped())?.map(|_| ())
    }

    fn stopped(&self) -> ProposeError {
        ProposeError::Unavailable { group_id: self.group_id, reason: "the group is shutting down".into() }
    }
}

async fn run(
    group_id: GroupId,
    raft: Raft,
    config: ProposerConfig,
    mut receiver: mpsc::Receiver<Proposal>,
    mut paused: tokio::sync::watch::Receiver<bool>,
) {
    let inflight = Arc::new(Semaphore::new(config.inflight_entries_max));
    let mut carried: Option<Proposal> = None;
    loop {
        let first = match carried.take() {
            Some(proposal) => proposal,
            None => match receiver.recv().await {
                Some(proposal) => proposal,
                None => return,
            },
        };
        if paused.wait_for(|paused| !*paused).await.is_err() {
            return;
        }
        // Wait for room before draining, so that everything arriving meanwhile joins this batch.
        let permit = inflight.clone().acquire_owned().await.expect("semaphore is never closed");
        // Then let the tasks already runnable go first: when an entry's answers go out, every
        // caller sends its next request at once, and without this the first arrival left alone
        // in the next entry while the others waited a whole entry behind it (22 commands per
        // entry with 64 callers). It adds no wait when nothing else is runnable.
        for _ in 0..RUNNABLE_YIELDS {
            tokio::task::yield_now().await;
        }
        let mut batch = vec![first];
        let mut command_count = batch[0].commands.len();
        while let Ok(next) = receiver.try_recv() {
            if command_count + next.commands.len() > BATCH_COMMANDS_MAX {
                carried = Some(next);
                break;
            }
            command_count += next.commands.len();
            batch.push(next);
        }
        let raft = raft.clone();
        let retention_ms = config.idempotency_retention_ms;
        tokio::spawn(async move {
            propose_batch(group_id, &raft, batch, command_count, retention_ms).await;
            drop(permit);
        });
    }
}

async fn propose_batch(
    group_id: GroupId,
    raft: &Raft,
    proposals: Vec<Proposal>,
    command_count: usize,
    retention_ms: u64,
) {
    let mut commands = Vec::with_capacity(command_count);
    let mut replies = Vec::with_capacity(proposals.len());
    for proposal in proposals {
        replies.push((proposal.commands.len(), proposal.reply));
        commands.extend(proposal.commands);
    }
    // The leader stamps the log time; apply never reads a clock.
    let header = BatchHeader { log_time_ms: wall_clock_ms(), idempotency_retention_ms: retention_ms };
    metrics::histogram!("tally_proposal_batch_commands").record(command_count as f64);
    let started = std::time::Instant::now();
    let result = raft.client_write(GroupRequest::Shard(ShardBatch { header, commands })).await;
    metrics::histogram!("tally_proposal_duration_seconds").record(started.elapsed().as_secs_f64());
    let outcomes = match result {
        Ok(response) => match response.data {
            GroupResponse::Shard(outcomes) => Ok(outcomes),
            other => {
                Err(ProposeError::Unavailable { group_id, reason: format!("unexpected response {other:?}") })
            }
        },
        Err(error) => Err(propose_error(group_id, error)),
    };
    match outcomes {
        Ok(outcomes) => {
            assert_eq!(outcomes.len(), command_count, "apply returns one outcome per command");
            let mut outcomes = outcomes.into_iter();
            for (count, reply) in replies {
                let _ = reply.send(Ok(outcomes.by_ref().take(count).collect()));
            }
        }
        Err(error) => {
            for (_, reply) in replies {
                let _ = reply.send(Err(error.clone()));
            }
        }
    }
}

pub fn propose_error(
    group_id: GroupId,
    error: OpenraftRaftError<NodeId, OpenraftClientWriteError<NodeId, TallyNode>>,
) -> ProposeError {
    match error {
        OpenraftRaftError::APIError(OpenraftClientWriteError::ForwardToLeader(forward)) => {
            ProposeError::NotLeader { group_id, leader_id: forward.leader_id, leader: forward.leader_node }
        }
        OpenraftRaftError::APIError(OpenraftClientWriteError::ChangeMembershipError(error)) => {
            ProposeError::Refused { group_id, reason: error.to_string() }
        }
        OpenraftRaftError::Fatal(fatal) => ProposeError::Unavailable { group_id, reason: fatal.to_string() },
    }
}

/// Milliseconds since the Unix epoch on this node's clock (only the leader stamps entries).
pub fn wall_clock_ms() -> u64 {
    let since_epoch = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO);
    u64::try_from(since_epoch.as_millis()).unwrap_or(u64::MAX)
}
