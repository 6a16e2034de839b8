//! The simulated network between nodes: openraft's `RaftNetworkFactory` over direct calls to
//! the target replica's `Raft`, after the faults.
//!
//! Messages still go through the real wire encoding (`encode_wire`/`decode_wire`), so the
//! simulation exercises the same bytes a tonic transport would carry. Per message, the
//! network draws one fate from its seeded generator:
//!
//! - **drop**: not delivered, answered `Unreachable` at once, or (half of the drops) never
//!   answered: the caller waits for its own RPC deadline (`hard_ttl`) and then gets
//!   `Unreachable`;
//! - **lost reply**: delivered and applied by the target, but the answer is lost
//!   (`Unreachable` to the caller; counted as a drop);
//! - **delay**: delivered after a random delay;
//! - **duplicate**: delivered, and a second copy is delivered later on its own;
//! - **reorder**: the caller is told `Unreachable` now, and the message is delivered later,
//!   after messages the caller sends meanwhile (independent random delays);
//! - a **partition** blocks every message between the two sides; a message to or from a
//!   crashed node is `Unreachable`.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use openraft::error::{InstallSnapshotError, RemoteError, Unreachable};
use openraft::network::{Backoff, RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tally_raft::network::{decode_wire, encode_wire};
use tally_raft::{GroupId, NodeId, Raft, RaftError, RpcError, TallyNode, TallyRaft};

use crate::stats::FaultCounters;

/// Message fault rates of one run, drawn from its seed. Rates are per mille of messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LinkFaults {
    pub drop_per_mille: u32,
    pub lost_reply_per_mille: u32,
    pub delay_per_mille: u32,
    pub delay_max_ms: u64,
    pub duplicate_per_mille: u32,
    pub reorder_per_mille: u32,
    pub reorder_delay_max_ms: u64,
}

impl LinkFaults {
    pub const NONE: LinkFaults = LinkFaults {
        drop_per_mille: 0,
        lost_reply_per_mille: 0,
        delay_per_mille: 0,
        delay_max_ms: 0,
        duplicate_per_mille: 0,
        reorder_per_mille: 0,
        reorder_delay_max_ms: 0,
    };

    pub fn from_rng(rng: &mut StdRng) -> Self {
        LinkFaults {
            drop_per_mille: rng.gen_range(10..=60),
            lost_reply_per_mille: rng.gen_range(5..=30),
            delay_per_mille: rng.gen_range(100..=400),
            delay_max_ms: rng.gen_range(2..=20),
            duplicate_per_mille: rng.gen_range(10..=50),
            reorder_per_mille: rng.gen_range(10..=40),
            reorder_delay_max_ms: rng.gen_range(20..=150),
        }
    }
}

/// What happens to one message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fate {
    /// Partitioned or the target is down.
    Blocked,
    Dropped {
        answer_now: bool,
    },
    Deliver {
        delay_ms: u64,
        duplicate_after_ms: Option<u64>,
        lose_reply: bool,
    },
    /// Delivered after `after_ms`; the caller is answered `Unreachable` now.
    Late {
        after_ms: u64,
    },
}

struct NetState {
    faults: LinkFaults,
    /// One side of the current partition (the rest is the other side).
    partition: Option<BTreeSet<NodeId>>,
    rng: StdRng,
}

/// The whole simulated network: which replicas are reachable, the partition, the fault rates.
pub struct SimNet {
    rafts: Mutex<BTreeMap<(NodeId, GroupId), Raft>>,
    state: Mutex<NetState>,
    pub counters: Arc<FaultCounters>,
}

type Delivery<Resp, E> = Pin<Box<dyn Future<Output = Result<Resp, RaftError<E>>> + Send>>;

impl SimNet {
    pub fn new(seed: u64, counters: Arc<FaultCounters>) -> Arc<Self> {
        Arc::new(SimNet {
            rafts: Mutex::new(BTreeMap::new()),
            state: Mutex::new(NetState {
                faults: LinkFaults::NONE,
                partition: None,
                rng: StdRng::seed_from_u64(seed ^ 0x6e65_7477_6f72_6b00),
            }),
            counters,
        })
    }

    pub fn register(&self, node_id: NodeId, group_id: GroupId, raft: Raft) {
        self.rafts.lock().expect("net lock").insert((node_id, group_id), raft);
    }

    /// A crashed node: nothing reaches it any more and nothing it still sends gets out.
    pub fn unregister_node(&self, node_id: NodeId) {
        self.rafts.lock().expect("net lock").retain(|(node, _), _| *node != node_id);
    }

    fn raft(&self, node_id: NodeId, group_id: GroupId) -> Option<Raft> {
        self.rafts.lock().expect("net lock").get(&(node_id, group_id)).cloned()
    }

    fn is_up(&self, node_id: NodeId) -> bool {
        self.rafts.lock().expect("net lock").keys().any(|(node, _)| *node == node_id)
    }

    pub fn set_faults(&self, faults: LinkFaults) {
        self.state.lock().expect("net lock").faults = faults;
    }

    pub fn partition(&self, side: BTreeSet<NodeId>) {
        self.state.lock().expect("net lock").partition = Some(side);
    }

    pub fn heal(&self) {
        self.state.lock().expect("net lock").partition = None;
    }

    pub fn partitioned_any(&self) -> bool {
        self.state.lock().expect("net lock").partition.is_some()
    }

    pub fn partitioned(&self, a: NodeId, b: NodeId) -> bool {
        let state = self.state.lock().expect("net lock");
        state.partition.as_ref().is_some_and(|side| side.contains(&a) != side.contains(&b))
    }

    /// A draw from the network's generator in `0..1000`, for the client link's faults.
    pub fn per_mille(&self) -> u32 {
        self.state.lock().expect("net lock").rng.gen_range(0..1000)
    }

    pub fn faults(&self) -> LinkFaults {
        self.state.lock().expect("net lock").faults
    }

    fn fate(&self, from: NodeId, to: NodeId) -> Fate {
        if self.partitioned(from, to) || !self.is_up(to) || !self.is_up(from) {
            return Fate::Blocked;
        }
        let mut state = self.state.lock().expect("net lock");
        let faults = state.faults;
        let rng = &mut state.rng;
        let roll = rng.gen_range(0..1000);
        let counters = &self.counters;
        if roll < faults.drop_per_mille {
            counters.add(&counters.drops);
            return Fate::Dropped { answer_now: rng.gen_bool(0.5) };
        }
        if roll < faults.drop_per_mille + faults.reorder_per_mille {
            counters.add(&counters.reorders);
            return Fate::Late { after_ms: rng.gen_range(1..=faults.reorder_delay_max_ms.max(1)) };
        }
        let delay_ms = if rng.gen_range(0..1000) < faults.delay_per_mille {
            counters.add(&counters.delays);
            rng.gen_range(1..=faults.delay_max_ms.max(1))
        } else {
            0
        };
        let duplicate_after_ms = (rng.gen_range(0..1000) < faults.duplicate_per_mille).then(|| {
            counters.add(&counters.duplicates);
            rng.gen_range(0..=faults.reorder_delay_max_ms)
        });
        let lose_reply = rng.gen_range(0..1000) < faults.lost_reply_per_mille;
        if lose_reply {
            counters.add(&counters.drops);
        }
        Fate::Deliver { delay_ms, duplicate_after_ms, lose_reply }
    }

    /// Sends one message from `from` to `(to, group_id)` through the faults.
    async fn send<Req, Resp, E>(
        self: &Arc<Self>,
        from: NodeId,
        to: NodeId,
        group_id: GroupId,
        request: &Req,
        option: &RPCOption,
        call: fn(Raft, Req) -> Delivery<Resp, E>,
    ) -> Result<Resp, RpcError<E>>
    where
        Req: Serialize + DeserializeOwned + Send + 'static,
        Resp: Serialize + DeserializeOwned + Send + 'static,
        E: std::error::Error + Serialize + DeserializeOwned + Send + 'static,
    {
        let unreachable = |why: &str| RpcError::Unreachable(Unreachable::new(&SimError(why.to_string())));
        let bytes = encode_wire(request);
        match self.fate(from, to) {
            Fate::Blocked => Err(unreachable("partitioned or down")),
            Fate::Dropped { answer_now: true } => Err(unreachable("dropped")),
            Fate::Dropped { answer_now: false } => {
                tokio::time::sleep(option.hard_ttl()).await;
                Err(unreachable("dropped, no answer"))
            }
            Fate::Late { after_ms } => {
                self.deliver_later(from, to, group_id, bytes, after_ms, call);
                Err(unreachable("held back (reordered)"))
            }
            Fate::Deliver { delay_ms, duplicate_after_ms, lose_reply } => {
                if let Some(after_ms) = duplicate_after_ms {
                    self.deliver_later(from, to, group_id, bytes.clone(), delay_ms + after_ms, call);
                }
                if delay_ms > 0 {
                    tokio::time::sleep(Duration::from_millis(delay_ms)).await;
                }
                let result = deliver(self.raft(to, group_id), &bytes, call)
                    .await
                    .ok_or_else(|| unreachable("target went down"))?;
                // The partition or a crash may have come while the message was on its way.
                if lose_reply || self.partitioned(from, to) || !self.is_up(from) {
                    return Err(unreachable("reply lost"));
                }
                let reply: Result<Resp, RaftError<E>> =
                    decode_wire(&encode_wire(&result)).expect("a reply decodes as it was encoded");
                reply.map_err(|error| RpcError::RemoteError(RemoteError::new(to, error)))
            }
        }
    }

    fn deliver_later<Req, Resp, E>(
        self: &Arc<Self>,
        from: NodeId,
        to: NodeId,
        group_id: GroupId,
        bytes: Vec<u8>,
        after_ms: u64,
        call: fn(Raft, Req) -> Delivery<Resp, E>,
    ) where
        Req: DeserializeOwned + Send + 'static,
        Resp: Send + 'static,
        E: Send + 'static,
    {
        let net = Arc::clone(self);
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(after_ms)).await;
            // A late copy cannot cross a partition that started meanwhile, but it does reach a
            // target that is up whatever happened to its sender since (a stale message).
            if !net.partitioned(from, to) {
                let _ = deliver(net.raft(to, group_id), &bytes, call).await;
            }
        });
    }
}

/// Decodes the message and hands it to the target; `None` when the target is down.
async fn deliver<Req, Resp, E>(
    raft: Option<Raft>,
    bytes: &[u8],
    call: fn(Raft, Req) -> Delivery<Resp, E>,
) -> Option<Result<Resp, RaftError<E>>>
where
    Req: DeserializeOwned,
{
    let raft = raft?;
    let request: Req = decode_wire(bytes).expect("a message decodes as it was encoded");
    Some(call(raft, request).await)
}

/// A plain message as an error, for openraft's error constructors.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct SimError(pub String);

/// The `RaftNetworkFactory` of one group replica on one node.
#[derive(Clone)]
pub struct SimNetworkFactory {
    pub net: Arc<SimNet>,
    pub from: NodeId,
    pub group_id: GroupId,
}

impl RaftNetworkFactory<TallyRaft> for SimNetworkFactory {
    type Network = SimConnection;

    async fn new_client(&mut self, target: NodeId, _node: &TallyNode) -> SimConnection {
        SimConnection { net: Arc::clone(&self.net), from: self.from, to: target, group_id: self.group_id }
    }
}

pub struct SimConnection {
    net: Arc<SimNet>,
    from: NodeId,
    to: NodeId,
    group_id: GroupId,
}

impl RaftNetwork<TallyRaft> for SimConnection {
    async fn append_entries(
        &mut self,
        request: AppendEntriesRequest<TallyRaft>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RpcError> {
        self.net
            .send(self.from, self.to, self.group_id, &request, &option, |raft, request| {
                Box::pin(async move { raft.append_entries(request).await })
            })
            .await
    }

    async fn install_snapshot(
        &mut self,
        request: InstallSnapshotRequest<TallyRaft>,
        option: RPCOption,
    ) -> Result<InstallSnapshotResponse<NodeId>, RpcError<InstallSnapshotError>> {
        self.net
            .send(self.from, self.to, self.group_id, &request, &option, |raft, request| {
                Box::pin(async move { raft.install_snapshot(request).await })
            })
            .await
    }

    async fn vote(
        &mut self,
        request: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RpcError> {
        self.net
            .send(self.from, self.to, self.group_id, &request, &option, |raft, request| {
                Box::pin(async move { raft.vote(request).await })
            })
            .await
    }

    /// Short, so that runs of a few seconds see replication resume after a heal or restart.
    fn backoff(&self) -> Backoff {
        Backoff::new(std::iter::repeat(Duration::from_millis(50)))
    }
}
