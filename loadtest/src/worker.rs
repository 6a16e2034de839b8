//! The generator's tasks: choose operations, send them (single or batched), retry unknown
//! outcomes with the same key, run the replay checks and record the expected effects.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tally_proto::v1::ledger_client::LedgerClient;
use tonic::metadata::AsciiMetadataValue;
use tonic::transport::Channel;
use tonic::Code;

use crate::client::{call_batch, call_single, Outcome};
use crate::config::{Config, Profile};
use crate::exactly_once::Journal;
use crate::ops::{Kind, Model, Names, Op};
use crate::stats::{Counters, LatencyShard, LocalStats};
use crate::timeline::{Attempt, Timeline};
use crate::zipf::MemberPicker;

/// An operation whose outcome stayed unknown after the in-line retries.
pub(crate) struct Pending {
    pub op: Op,
    pub key: String,
}

/// State shared by every task of a run.
pub(crate) struct Shared {
    pub cfg: Config,
    pub names: Names,
    pub auth: Vec<AsciiMetadataValue>,
    pub member_shard: Vec<u32>,
    /// Members of each shard.
    pub by_shard: Vec<Vec<u32>>,
    pub picker: MemberPicker,
    pub model: Model,
    pub counters: Arc<Counters>,
    pub unresolved: Mutex<Vec<Pending>>,
    /// Proof failures found on the way (replays that did not replay, replies that disagree).
    pub failures: Mutex<Vec<String>>,
    /// A few error messages, for the report.
    pub error_samples: Mutex<Vec<String>>,
    /// Operations claimed so far (open-loop schedule and `--operations`).
    pub claimed: AtomicU64,
    pub stop: AtomicBool,
    /// Every operation with a definite outcome, for the per-operation check.
    pub journal: Journal,
    /// Set when the measured phase starts, if the run records a timeline.
    pub timeline: OnceLock<Timeline>,
}

impl Shared {
    pub(crate) fn fail(&self, message: String) {
        if let Ok(mut failures) = self.failures.lock() {
            failures.push(message);
        }
    }

    fn normal_timeout(&self) -> Duration {
        Duration::from_millis(self.cfg.request_timeout_ms)
    }

    /// Counts attempts that just ended in the timeline (when one is being recorded).
    fn note(&self, outcome: &Outcome, count: u64) {
        if let Some(timeline) = self.timeline.get() {
            let attempt = match outcome {
                Outcome::Ok(_) => Attempt::Ok,
                Outcome::Failed { code: Code::FailedPrecondition, .. } => Attempt::Refused,
                Outcome::Failed { code, .. } | Outcome::Unknown { code, .. } => Attempt::Error(*code),
            };
            timeline.record(attempt, count);
        }
    }

    fn note_batch(&self, outcomes: &Result<Vec<Outcome>, Outcome>, count: u64) {
        match outcomes {
            Ok(outcomes) => outcomes.iter().for_each(|o| self.note(o, 1)),
            Err(whole) => self.note(whole, count),
        }
    }
}

/// What one step of the loop sends.
enum Unit {
    Single(Op),
    /// AuthorizeHold, then CaptureHold or VoidHold of it.
    Checkout {
        partner: u16,
        member: u32,
        amount: u64,
    },
}

impl Unit {
    fn ops(&self) -> u64 {
        match self {
            Unit::Single(_) => 1,
            Unit::Checkout { .. } => 2,
        }
    }

    fn first_op(self) -> Op {
        match self {
            Unit::Single(op) => op,
            Unit::Checkout { partner, member, amount } => Op::Authorize { partner, member, amount },
        }
    }
}

pub(crate) fn describe(outcome: &Outcome) -> String {
    match outcome {
        Outcome::Ok(r) => format!("ok (log_index {}, replay {})", r.log_index, r.replay),
        Outcome::Failed { code, message } => format!("{code:?}: {message}"),
        Outcome::Unknown { code, message } => format!("{code:?} (outcome unknown): {message}"),
    }
}

/// Compares a re-send with the same key with the first answer; `None` when it replays.
pub(crate) fn replay_problem(first: &Outcome, again: &Outcome) -> Option<String> {
    match (first, again) {
        (_, Outcome::Unknown { .. }) | (Outcome::Unknown { .. }, _) => None,
        (Outcome::Ok(a), Outcome::Ok(b)) if b.replay && a.log_index == b.log_index => None,
        (Outcome::Failed { code: a, .. }, Outcome::Failed { code: b, .. }) if a == b => None,
        // Refusals the gateway makes before proposing are not stored; only ledger outcomes are.
        (Outcome::Failed { code, .. }, _) if *code != Code::FailedPrecondition => None,
        _ => Some(format!("first answer {}, same key again answered {}", describe(first), describe(again))),
    }
}

pub(crate) struct Worker {
    shared: Arc<Shared>,
    client: LedgerClient<Channel>,
    rng: StdRng,
    key_prefix: String,
    seq: u64,
    pub stats: LocalStats,
}

impl Worker {
    pub(crate) fn new(
        shared: Arc<Shared>,
        channel: Channel,
        seed: u64,
        key_prefix: String,
        latency: Arc<LatencyShard>,
    ) -> Self {
        let client = LedgerClient::new(channel).max_decoding_message_size(64 * 1024 * 1024);
        Worker {
            shared,
            client,
            rng: StdRng::seed_from_u64(seed),
            key_prefix,
            seq: 0,
            stats: LocalStats::new(latency),
        }
    }

    fn next_key(&mut self) -> String {
        self.seq += 1;
        let mut key = String::with_capacity(self.key_prefix.len() + 10);
        key.push_str(&self.key_prefix);
        let _ = write!(key, "{}", self.seq);
        key
    }

    fn partner(&mut self) -> u16 {
        self.rng.gen_range(0..self.shared.cfg.partners) as u16
    }

    fn member(&mut self) -> u32 {
        self.shared.picker.pick(&mut self.rng) as u32
    }

    fn next_unit(&mut self, partner: u16) -> Unit {
        let profile = self.shared.cfg.profile;
        let roll: f64 = self.rng.gen();
        match profile {
            Profile::EarnHeavy if roll < 0.9 => self.earn(partner),
            Profile::EarnHeavy => self.redeem(partner),
            Profile::Checkout => self.checkout(partner),
            Profile::Gifting => self.transfer(partner),
            Profile::Exchange => self.exchange(partner),
            Profile::Mixed if roll < 0.4 => self.earn(partner),
            Profile::Mixed if roll < 0.5 => self.redeem(partner),
            Profile::Mixed if roll < 0.7 => self.checkout(partner),
            Profile::Mixed if roll < 0.9 => self.transfer(partner),
            Profile::Mixed => self.exchange(partner),
        }
    }

    fn earn(&mut self, partner: u16) -> Unit {
        let member = self.member();
        Unit::Single(Op::Earn { partner, member, amount: self.rng.gen_range(1..=1000) })
    }

    fn redeem(&mut self, partner: u16) -> Unit {
        let member = self.member();
        Unit::Single(Op::Redeem { partner, member, amount: self.rng.gen_range(1..=500) })
    }

    fn checkout(&mut self, partner: u16) -> Unit {
        let member = self.member();
        Unit::Checkout { partner, member, amount: self.rng.gen_range(1..=500) }
    }

    fn transfer(&mut self, partner: u16) -> Unit {
        let from = self.member();
        let shared = &self.shared;
        let shards = shared.by_shard.len();
        let home = shared.member_shard[from as usize] as usize;
        let cross = shards > 1 && self.rng.gen_bool(shared.cfg.cross_shard_share);
        let mut to = from;
        for _ in 0..16 {
            let shard = if cross {
                let other = self.rng.gen_range(0..shards - 1);
                if other >= home {
                    other + 1
                } else {
                    other
                }
            } else {
                home
            };
            let members = &shared.by_shard[shard];
            if members.is_empty() {
                continue;
            }
            to = members[self.rng.gen_range(0..members.len())];
            if to != from {
                break;
            }
        }
        if to == from {
            to = (from + 1) % shared.cfg.members as u32;
        }
        Unit::Single(Op::Transfer { partner, from, to, amount: self.rng.gen_range(1..=200) })
    }

    fn exchange(&mut self, partner: u16) -> Unit {
        let partners = self.shared.cfg.partners as u16;
        if partners < 2 {
            return self.earn(partner);
        }
        let to_partner = if self.rng.gen_bool(0.5) {
            (partner + 1) % partners
        } else {
            (partner + partners - 1) % partners
        };
        let member = self.member();
        Unit::Single(Op::Exchange { partner, member, to_partner, amount: self.rng.gen_range(10..=200) })
    }

    fn settle(&mut self, partner: u16, member: u32, hold: String, authorized: u64) -> Op {
        if self.rng.gen_bool(0.7) {
            let amount = if self.rng.gen_bool(0.5) { 0 } else { self.rng.gen_range(1..=authorized) };
            Op::Capture { partner, member, hold, authorized, amount }
        } else {
            Op::Void { partner, member, hold, authorized }
        }
    }

    /// Whether this call is a timeout probe (short client timeout, then the same key again).
    fn probe(&mut self) -> bool {
        let share = self.shared.cfg.timeout_share;
        share > 0.0 && self.rng.gen_bool(share)
    }

    async fn call(&mut self, op: &Op, key: &str, timeout: Duration) -> Outcome {
        let outcome = self.call_unnoted(op, key, timeout).await;
        self.shared.note(&outcome, 1);
        outcome
    }

    /// A call left out of the timeline: a probe's deliberately short first attempt.
    async fn call_unnoted(&mut self, op: &Op, key: &str, timeout: Duration) -> Outcome {
        let request = op.request(key, &self.shared.names);
        call_single(&mut self.client, &self.shared.auth[op.partner() as usize], request, timeout).await
    }

    /// The measured loop: until the deadline, the operation budget or the stop flag.
    pub(crate) async fn run_loop(mut self, start: Instant, deadline: Option<Instant>) -> LocalStats {
        let shared = self.shared.clone();
        let cfg = &shared.cfg;
        loop {
            if shared.stop.load(Ordering::Relaxed) || deadline.is_some_and(|d| Instant::now() >= d) {
                break;
            }
            let partner = self.partner();
            let units: Vec<Unit> = (0..cfg.batch).map(|_| self.next_unit(partner)).collect();
            let n: u64 = units.iter().map(Unit::ops).sum();
            let first = shared.claimed.fetch_add(n, Ordering::Relaxed);
            if cfg.operations.is_some_and(|limit| first >= limit) {
                break;
            }
            let intended = match cfg.rate {
                Some(rate) => {
                    let at = start + Duration::from_secs_f64(first as f64 / rate);
                    if deadline.is_some_and(|d| at >= d) {
                        break;
                    }
                    tokio::time::sleep_until(at.into()).await;
                    at
                }
                None => Instant::now(),
            };
            if cfg.batch == 1 {
                let unit = units.into_iter().next().expect("one unit");
                self.run_unit(unit, intended).await;
            } else {
                self.run_units_batched(partner, units, intended).await;
            }
        }
        self.stats
    }

    async fn run_unit(&mut self, unit: Unit, intended: Instant) {
        match unit {
            Unit::Single(op) => {
                self.single(op, intended).await;
            }
            Unit::Checkout { partner, member, amount } => {
                let authorize = Op::Authorize { partner, member, amount };
                if let Some(hold) = self.single(authorize, intended).await {
                    let op = self.settle(partner, member, hold, amount);
                    self.single(op, Instant::now()).await;
                }
            }
        }
    }

    /// Retries an unknown outcome with the same key, with backoff.
    async fn retry_unknown(&mut self, op: &Op, key: &str, mut outcome: Outcome) -> Outcome {
        let mut backoff = Duration::from_millis(5);
        let mut attempts = 0;
        while matches!(outcome, Outcome::Unknown { .. }) && attempts < self.shared.cfg.max_retries {
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_millis(200));
            attempts += 1;
            self.shared.counters.retries.fetch_add(1, Ordering::Relaxed);
            outcome = self.call(op, key, self.shared.normal_timeout()).await;
        }
        outcome
    }

    /// One operation as its own call. Returns its key when it succeeded.
    async fn single(&mut self, op: Op, intended: Instant) -> Option<String> {
        let key = self.next_key();
        let probe = self.probe();
        let shared = self.shared.clone();
        let outcome = if probe {
            shared.counters.timeout_probes.fetch_add(1, Ordering::Relaxed);
            let first =
                self.call_unnoted(&op, &key, Duration::from_millis(shared.cfg.short_timeout_ms)).await;
            match first {
                Outcome::Ok(_) => {
                    // Answered within the short timeout: the same key again must replay.
                    self.check_replay(&op, &key, &first, "re-send after a short-timeout call").await;
                    first
                }
                Outcome::Unknown { .. } => {
                    shared.counters.retries.fetch_add(1, Ordering::Relaxed);
                    let again = self.call(&op, &key, shared.normal_timeout()).await;
                    let again = self.retry_unknown(&op, &key, again).await;
                    if let Outcome::Ok(reply) = &again {
                        if reply.replay {
                            shared.counters.timeout_probes_applied.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    again
                }
                Outcome::Failed { .. } => first,
            }
        } else {
            let first = self.call(&op, &key, shared.normal_timeout()).await;
            self.retry_unknown(&op, &key, first).await
        };
        self.stats.record(op.kind(), intended.elapsed());
        if shared.cfg.replay_share > 0.0 && self.rng.gen_bool(shared.cfg.replay_share) {
            self.check_replay(&op, &key, &outcome, "immediate re-send").await;
        }
        self.account(op, key, outcome)
    }

    async fn check_replay(&mut self, op: &Op, key: &str, first: &Outcome, why: &str) {
        if matches!(first, Outcome::Unknown { .. }) {
            return;
        }
        self.shared.counters.replay_checks.fetch_add(1, Ordering::Relaxed);
        let again = self.call(op, key, self.shared.normal_timeout()).await;
        if let Some(problem) = replay_problem(first, &again) {
            self.shared.fail(format!("{why} of {} key {key}: {problem}", op.kind().name()));
        }
    }

    /// Counts the outcome and records its effect; unknown outcomes wait for the resolution.
    /// Returns the key of a successful operation.
    fn account(&mut self, op: Op, key: String, outcome: Outcome) -> Option<String> {
        let shared = &self.shared;
        let k = op.kind().index();
        match outcome {
            Outcome::Ok(reply) => {
                self.stats.ok[k] += 1;
                shared.counters.ok.fetch_add(1, Ordering::Relaxed);
                if let Err(problem) = op.apply(&reply, &shared.model, &shared.names) {
                    shared.fail(format!("{} key {key}: {problem}", op.kind().name()));
                }
                shared.journal.record(&op, &key, true, shared);
                Some(key)
            }
            Outcome::Failed { code, message } => {
                if code == Code::FailedPrecondition {
                    self.stats.refused[k] += 1;
                    shared.counters.refused.fetch_add(1, Ordering::Relaxed);
                } else {
                    self.stats.errors[k] += 1;
                    shared.counters.errors.fetch_add(1, Ordering::Relaxed);
                    sample_error(shared, &op, code, &message);
                }
                shared.journal.record(&op, &key, false, shared);
                None
            }
            Outcome::Unknown { code, message } => {
                self.stats.unknown[k] += 1;
                shared.counters.unknown.fetch_add(1, Ordering::Relaxed);
                sample_error(shared, &op, code, &message);
                if let Ok(mut unresolved) = shared.unresolved.lock() {
                    unresolved.push(Pending { op, key });
                }
                None
            }
        }
    }

    async fn run_units_batched(&mut self, partner: u16, units: Vec<Unit>, intended: Instant) {
        let checkouts: Vec<Option<u64>> = units
            .iter()
            .map(|u| match u {
                Unit::Checkout { amount, .. } => Some(*amount),
                Unit::Single(_) => None,
            })
            .collect();
        let ops: Vec<Op> = units.into_iter().map(Unit::first_op).collect();
        let members: Vec<u32> = ops.iter().map(Op::routing_member).collect();
        let keys = self.batch(partner, ops, intended).await;
        let mut settles = Vec::new();
        for ((key, amount), member) in keys.into_iter().zip(checkouts).zip(members) {
            if let (Some(hold), Some(amount)) = (key, amount) {
                settles.push(self.settle(partner, member, hold, amount));
            }
        }
        if !settles.is_empty() {
            self.batch(partner, settles, Instant::now()).await;
        }
    }

    /// Sends ops of one partner as a SubmitBatch (retrying unknown ones with the same keys).
    /// Returns, per op, its key if it succeeded.
    pub(crate) async fn batch(
        &mut self,
        partner: u16,
        ops: Vec<Op>,
        intended: Instant,
    ) -> Vec<Option<String>> {
        let shared = self.shared.clone();
        let names = &shared.names;
        let auth = &shared.auth[partner as usize];
        let n = ops.len();
        let keys: Vec<String> = (0..n).map(|_| self.next_key()).collect();
        let requests = ops.iter().zip(&keys).map(|(op, key)| op.batch_request(key, names)).collect();
        let probe = self.probe();
        let first_timeout =
            if probe { Duration::from_millis(shared.cfg.short_timeout_ms) } else { shared.normal_timeout() };
        if probe {
            shared.counters.timeout_probes.fetch_add(n as u64, Ordering::Relaxed);
        }
        let first = call_batch(&mut self.client, auth, requests, first_timeout).await;
        if !probe {
            shared.note_batch(&first, n as u64);
        }
        let mut outcomes = match first {
            Ok(outcomes) => outcomes,
            Err(whole) => vec![whole; n],
        };
        let first_unknown: Vec<bool> = if probe {
            outcomes.iter().map(|o| matches!(o, Outcome::Unknown { .. })).collect()
        } else {
            Vec::new()
        };
        let mut backoff = Duration::from_millis(5);
        let mut attempts = 0;
        loop {
            let pending: Vec<usize> =
                (0..n).filter(|i| matches!(outcomes[*i], Outcome::Unknown { .. })).collect();
            if pending.is_empty() || attempts >= shared.cfg.max_retries {
                break;
            }
            if !(probe && attempts == 0) {
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_millis(200));
            }
            attempts += 1;
            shared.counters.retries.fetch_add(pending.len() as u64, Ordering::Relaxed);
            let requests = pending.iter().map(|i| ops[*i].batch_request(&keys[*i], names)).collect();
            let results = call_batch(&mut self.client, auth, requests, shared.normal_timeout()).await;
            shared.note_batch(&results, pending.len() as u64);
            match results {
                Ok(results) => {
                    for (i, outcome) in pending.iter().zip(results) {
                        outcomes[*i] = outcome;
                    }
                }
                Err(whole) => {
                    for i in &pending {
                        outcomes[*i] = whole.clone();
                    }
                }
            }
        }
        self.stats.record(Kind::SubmitBatch, intended.elapsed());
        if probe {
            for (i, outcome) in outcomes.iter().enumerate() {
                if let Outcome::Ok(reply) = outcome {
                    if first_unknown[i] && reply.replay {
                        shared.counters.timeout_probes_applied.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }
        if probe || (shared.cfg.replay_share > 0.0 && self.rng.gen_bool(shared.cfg.replay_share)) {
            let why =
                if probe { "batch re-send after a short-timeout call" } else { "immediate batch re-send" };
            self.check_batch_replay(partner, &ops, &keys, &outcomes, why).await;
        }
        ops.into_iter()
            .zip(keys)
            .zip(outcomes)
            .map(|((op, key), outcome)| self.account(op, key, outcome))
            .collect()
    }

    async fn check_batch_replay(
        &mut self,
        partner: u16,
        ops: &[Op],
        keys: &[String],
        first: &[Outcome],
        why: &str,
    ) {
        let shared = self.shared.clone();
        let requests = ops.iter().zip(keys).map(|(op, key)| op.batch_request(key, &shared.names)).collect();
        shared.counters.replay_checks.fetch_add(ops.len() as u64, Ordering::Relaxed);
        let again =
            call_batch(&mut self.client, &shared.auth[partner as usize], requests, shared.normal_timeout())
                .await;
        shared.note_batch(&again, ops.len() as u64);
        let again = match again {
            Ok(again) => again,
            Err(Outcome::Unknown { .. }) => return,
            Err(whole) => vec![whole; ops.len()],
        };
        for (i, again) in again.iter().enumerate() {
            if let Some(problem) = replay_problem(&first[i], again) {
                shared.fail(format!("{why} of {} key {}: {problem}", ops[i].kind().name(), keys[i]));
            }
        }
    }
}

fn sample_error(shared: &Shared, op: &Op, code: Code, message: &str) {
    if let Ok(mut samples) = shared.error_samples.lock() {
        if samples.len() < 10 {
            samples.push(format!("{}: {code:?}: {message}", op.kind().name()));
        }
    }
}

/// How an unknown outcome ended.
pub(crate) enum Resolved {
    Applied,
    NotApplied,
    Unresolved(String),
}

impl Worker {
    /// Finds out what became of an operation whose outcome is unknown: GetOperation by key
    /// (a transfer is re-sent instead, which also finishes one left in progress); a key the shard
    /// does not know is re-sent with the same key. Records the effect when it was applied.
    pub(crate) async fn resolve(&mut self, pending: Pending, budget: Duration) -> Resolved {
        let Pending { op, key } = pending;
        let shared = self.shared.clone();
        let deadline = Instant::now() + budget;
        // Generous, whatever --request-timeout-ms is: this is the slow path.
        let timeout = shared.normal_timeout().max(Duration::from_secs(10));
        let mut backoff = Duration::from_millis(50);
        loop {
            let outcome = if matches!(op, Op::Transfer { .. }) {
                self.call(&op, &key, timeout).await
            } else {
                let request = tally_proto::v1::GetOperationRequest {
                    idempotency_key: key.clone(),
                    member_id: shared.names.members[op.routing_member() as usize].clone(),
                };
                let auth = &shared.auth[op.partner() as usize];
                let call = self.client.get_operation(crate::client::authorized(
                    request,
                    auth,
                    shared.normal_timeout(),
                ));
                match call.await {
                    Ok(reply) => {
                        let reply = reply.into_inner();
                        match (reply.result, reply.error) {
                            (Some(result), _) => Outcome::Ok(result),
                            (None, Some(error)) => {
                                Outcome::Failed { code: Code::from(error.code), message: error.message }
                            }
                            (None, None) => Outcome::Unknown {
                                code: Code::Internal,
                                message: "GetOperation answered neither result nor error".into(),
                            },
                        }
                    }
                    // Never applied on the member's shard: send it now, with the same key.
                    Err(status) if status.code() == Code::NotFound => self.call(&op, &key, timeout).await,
                    Err(status) => Outcome::Unknown {
                        code: status.code(),
                        message: format!("GetOperation failed: {}", status.message()),
                    },
                }
            };
            if let Outcome::Unknown { .. } = outcome {
                if Instant::now() >= deadline {
                    return Resolved::Unresolved(format!(
                        "{} key {key} (member {}): {}",
                        op.kind().name(),
                        shared.names.members[op.routing_member() as usize],
                        describe(&outcome)
                    ));
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            }
            let applied = matches!(outcome, Outcome::Ok(_));
            self.account(op, key, outcome);
            return if applied { Resolved::Applied } else { Resolved::NotApplied };
        }
    }
}
