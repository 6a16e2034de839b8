//! What the clients sent, were answered and read: the auditor's view of the outside world.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use tally_gateway::transfer::CrossShardTransfer;
use tally_ledger::{BalanceView, Command, CommandOutcome, CurrencyCode, IdempotencyKey, MemberId, PartnerId};

/// The deduplication scope of a request.
pub type Slot = (PartnerId, IdempotencyKey);

/// A request a client sent at least once.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Sent {
    /// One command on one shard.
    Single { shard: u32, command: Command },
    /// A cross-shard transfer driven by the gateway's three steps (the step keys derive from
    /// the transfer id).
    CrossShard(CrossShardTransfer),
}

/// One answer a client received for a key (the first, a retry's or an on-purpose re-send's).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Answer {
    pub slot: Slot,
    pub outcome: CommandOutcome,
    /// Logical time at which the answer arrived.
    pub at: u64,
}

/// A linearizable balance read and what it returned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Read {
    pub shard: u32,
    pub member_id: MemberId,
    pub currency: CurrencyCode,
    /// Logical time just before the read was sent.
    pub started_at: u64,
    pub applied_log_index: u64,
    pub balance: Option<BalanceView>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct History {
    pub sent: BTreeMap<Slot, Sent>,
    pub answers: Vec<Answer>,
    /// Logical time at which a request was acknowledged to its client: the first answer of a
    /// single command; for a cross-shard transfer, the gateway's reply after step 3 (or a
    /// refusal of step 1).
    pub acked: BTreeMap<Slot, u64>,
    pub reads: Vec<Read>,
}

/// The history being recorded by concurrent clients, with a logical clock that orders
/// acknowledgements before the reads that start after them.
#[derive(Default)]
pub struct Recorder {
    clock: AtomicU64,
    history: Mutex<History>,
}

impl Recorder {
    pub fn tick(&self) -> u64 {
        self.clock.fetch_add(1, Ordering::SeqCst) + 1
    }

    pub fn sent(&self, slot: Slot, sent: Sent) {
        self.history.lock().expect("history lock").sent.entry(slot).or_insert(sent);
    }

    pub fn answer(&self, slot: Slot, outcome: CommandOutcome) -> u64 {
        let at = self.tick();
        self.history.lock().expect("history lock").answers.push(Answer { slot, outcome, at });
        at
    }

    /// Records the acknowledgement (the first one counts); true if it is the first.
    pub fn ack(&self, slot: Slot) -> bool {
        let at = self.tick();
        let mut history = self.history.lock().expect("history lock");
        let first = !history.acked.contains_key(&slot);
        history.acked.entry(slot).or_insert(at);
        first
    }

    pub fn read(&self, read: Read) {
        self.history.lock().expect("history lock").reads.push(read);
    }

    pub fn take(&self) -> History {
        std::mem::take(&mut *self.history.lock().expect("history lock"))
    }
}
