//! Test harness: an in-memory [`Backend`] (one real `Ledger` per shard, a `MetaState`) and a
//! gateway served on 127.0.0.1 with tonic, called through the generated clients.
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use tally_gateway::{Backend, BackendError, BalanceRead, Consistency, Gateway, GatewayConfig, StatementPage};
use tally_ledger::meta::{Agreement, MetaCommand, MetaError, MetaResult, MetaState, Partner};
use tally_ledger::routing::shard_of_member;
use tally_ledger::state::{AccountKey, ChangeSet, StatementLine};
use tally_ledger::{
    AgreementTerms, BatchHeader, Command, CommandOutcome, CurrencyCode, IdempotencyKey, Ledger, MemberId,
    Operation, PartnerId, ShardBatch,
};
use tally_proto::v1::admin_client::AdminClient;
use tally_proto::v1::ledger_client::LedgerClient;
use tally_proto::v1::{ClusterStatusReply, CurrencyTotal, GroupStatus};
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Channel, Endpoint, Server};

pub const RETENTION_MS: u64 = 7 * 24 * 3_600_000;

pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as u64
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A test that panicked while holding a lock must not hide the others' results.
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[derive(Default)]
struct Shard {
    ledger: Option<Ledger>,
    log_index: u64,
    statements: BTreeMap<(MemberId, CurrencyCode), Vec<StatementLine>>,
}

impl Shard {
    fn ledger(&mut self) -> &mut Ledger {
        self.ledger.get_or_insert_with(Ledger::new)
    }
}

/// One `Ledger` per shard behind a mutex, plus a meta state; batches are applied with the wall
/// clock as log time. Faults: shards can be marked down, and the next N submits can fail.
pub struct InMemoryBackend {
    shards: Vec<Mutex<Shard>>,
    meta: Mutex<Arc<MetaState>>,
    /// Commands that reached a ledger.
    pub applied_commands: AtomicUsize,
    /// Calls of `submit` (failed ones included).
    pub submit_calls: AtomicUsize,
    down: Mutex<BTreeSet<u32>>,
    flaky_submits: AtomicU32,
    failing_lookups: std::sync::atomic::AtomicBool,
}

impl InMemoryBackend {
    pub fn new(shard_count: u32) -> Self {
        Self {
            shards: (0..shard_count).map(|_| Mutex::new(Shard::default())).collect(),
            meta: Mutex::new(Arc::new(MetaState::default())),
            applied_commands: AtomicUsize::new(0),
            submit_calls: AtomicUsize::new(0),
            down: Mutex::new(BTreeSet::new()),
            flaky_submits: AtomicU32::new(0),
            failing_lookups: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Adds a partner straight into the meta state (no meta apply needed).
    pub fn insert_partner(&self, partner_id: &str, currency: &str, api_key: &str) {
        let mut meta = lock(&self.meta);
        let mut state = MetaState::clone(&meta);
        let partner_id = PartnerId::parse(partner_id).unwrap();
        state.partners.insert(
            partner_id.clone(),
            Partner {
                partner_id,
                display_name: "test partner".to_string(),
                currency: CurrencyCode::parse(currency).unwrap(),
                api_key_sha256: tally_gateway::auth::api_key_sha256(api_key),
                created_at_ms: now_ms(),
            },
        );
        *meta = Arc::new(state);
    }

    /// Adds an agreement straight into the meta state.
    pub fn insert_agreement(&self, from: &str, to: &str, terms: AgreementTerms) {
        let mut meta = lock(&self.meta);
        let mut state = MetaState::clone(&meta);
        let from_currency = CurrencyCode::parse(from).unwrap();
        let to_currency = CurrencyCode::parse(to).unwrap();
        state.agreements.insert(
            (from_currency.clone(), to_currency.clone()),
            Agreement { from_currency, to_currency, terms, updated_at_ms: now_ms() },
        );
        *meta = Arc::new(state);
    }

    pub fn meta_partner_hash(&self, partner_id: &str) -> String {
        let meta = self.meta();
        meta.partners[&PartnerId::parse(partner_id).unwrap()].api_key_sha256.clone()
    }

    pub fn set_down(&self, shard: u32, down: bool) {
        let mut set = lock(&self.down);
        if down {
            set.insert(shard);
        } else {
            set.remove(&shard);
        }
    }

    /// The next `count` submits (to any shard) fail with `Unavailable`.
    pub fn fail_next_submits(&self, count: u32) {
        self.flaky_submits.store(count, Ordering::SeqCst);
    }

    /// While set, operation lookups by key fail with `Unavailable` (submits still work).
    pub fn set_lookups_failing(&self, failing: bool) {
        self.failing_lookups.store(failing, Ordering::SeqCst);
    }

    pub fn applied(&self) -> usize {
        self.applied_commands.load(Ordering::SeqCst)
    }

    pub fn with_ledger<T>(&self, shard: u32, read: impl FnOnce(&mut Ledger) -> T) -> T {
        read(lock(&self.shards[shard as usize]).ledger())
    }

    fn check_up(&self, shard: u32) -> Result<(), BackendError> {
        if lock(&self.down).contains(&shard) {
            return Err(BackendError::Unavailable(format!("no leader for shard {shard}")));
        }
        Ok(())
    }
}

impl Backend for InMemoryBackend {
    fn shard_count(&self) -> u32 {
        self.shards.len() as u32
    }

    async fn submit(&self, shard: u32, commands: Vec<Command>) -> Result<Vec<CommandOutcome>, BackendError> {
        self.submit_calls.fetch_add(1, Ordering::SeqCst);
        self.check_up(shard)?;
        if self.flaky_submits.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_ok() {
            return Err(BackendError::Unavailable(format!("shard {shard} is electing a leader")));
        }
        let mut state = lock(&self.shards[shard as usize]);
        state.log_index += 1;
        let log_index = state.log_index;
        let batch = ShardBatch {
            header: BatchHeader { log_time_ms: now_ms(), idempotency_retention_ms: RETENTION_MS },
            commands,
        };
        let mut changes = ChangeSet::default();
        let outcomes = state.ledger().apply_batch(log_index, &batch, &mut changes);
        self.applied_commands.fetch_add(batch.commands.len(), Ordering::SeqCst);
        for (account, line) in changes.statement_lines {
            if let AccountKey::Member { member_id, currency } = account {
                state.statements.entry((member_id, currency)).or_default().push(line);
            }
        }
        Ok(outcomes)
    }

    async fn balance(
        &self,
        shard: u32,
        member_id: MemberId,
        currency: CurrencyCode,
        consistency: Consistency,
    ) -> Result<BalanceRead, BackendError> {
        self.check_up(shard)?;
        let mut state = lock(&self.shards[shard as usize]);
        let balance = state.ledger().balance(&member_id, &currency);
        Ok(BalanceRead {
            balance,
            applied_log_index: state.log_index,
            staleness_bound_ms: 0,
            linearizable: consistency == Consistency::Linearizable,
        })
    }

    async fn statement(
        &self,
        shard: u32,
        member_id: MemberId,
        currency: CurrencyCode,
        start_sequence: Option<u64>,
        newest_first: bool,
        limit: usize,
    ) -> Result<StatementPage, BackendError> {
        self.check_up(shard)?;
        let state = lock(&self.shards[shard as usize]);
        let all = state.statements.get(&(member_id, currency)).cloned().unwrap_or_default();
        let total = all.len() as u64;
        let lines = if newest_first {
            match total.checked_sub(1) {
                None => Vec::new(),
                Some(newest) => {
                    let start = start_sequence.unwrap_or(newest).min(newest);
                    all[..=start as usize].iter().rev().take(limit).cloned().collect()
                }
            }
        } else {
            let start = start_sequence.unwrap_or(0) as usize;
            all.iter().skip(start).take(limit).cloned().collect()
        };
        Ok(StatementPage { lines, total_lines: total })
    }

    async fn operation(
        &self,
        shard: u32,
        partner_id: PartnerId,
        key: IdempotencyKey,
    ) -> Result<Option<(Operation, CommandOutcome)>, BackendError> {
        self.check_up(shard)?;
        if self.failing_lookups.load(Ordering::SeqCst) {
            return Err(BackendError::Unavailable(format!("lookups on shard {shard} fail (test)")));
        }
        Ok(lock(&self.shards[shard as usize]).ledger().operation(&partner_id, &key))
    }

    fn meta(&self) -> Arc<MetaState> {
        Arc::clone(&lock(&self.meta))
    }

    async fn propose_meta(
        &self,
        command: MetaCommand,
    ) -> Result<Result<MetaResult, MetaError>, BackendError> {
        let mut meta = lock(&self.meta);
        let mut state = MetaState::clone(&meta);
        let result = state.apply(now_ms(), &command);
        *meta = Arc::new(state);
        Ok(result)
    }

    async fn cluster_status(&self, include_state_digests: bool) -> Result<ClusterStatusReply, BackendError> {
        let mut groups = Vec::new();
        let mut totals: BTreeMap<String, (u128, u128)> = BTreeMap::new();
        for (shard, state) in self.shards.iter().enumerate() {
            let mut state = lock(state);
            let log_index = state.log_index;
            let ledger = state.ledger();
            for (currency, total) in ledger.currency_totals() {
                let entry = totals.entry(currency.to_string()).or_default();
                entry.0 += total.debits_points;
                entry.1 += total.credits_points;
            }
            groups.push(GroupStatus {
                group: format!("shard-{shard}"),
                group_id: shard as u32,
                node_id: 1,
                role: "leader".to_string(),
                leader_node_id: 1,
                term: 1,
                last_log_index: log_index,
                committed_index: log_index,
                applied_index: log_index,
                state_digest: if include_state_digests {
                    hex_digest(&ledger.digest())
                } else {
                    String::new()
                },
                voters: vec![1],
                ..Default::default()
            });
        }
        Ok(ClusterStatusReply {
            shard_count: self.shard_count(),
            groups,
            currency_totals: totals
                .into_iter()
                .map(|(currency, (debits, credits))| CurrencyTotal {
                    currency,
                    debits_points: debits.to_string(),
                    credits_points: credits.to_string(),
                })
                .collect(),
            ..Default::default()
        })
    }
}

fn hex_digest(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub const SKY_KEY: &str = "tly_sky_test_key";
pub const HOTEL_KEY: &str = "tly_hotel_test_key";

/// A gateway over an [`InMemoryBackend`] with partners `sky` (SKYMILES) and `hotel`
/// (HOTELPTS), served on a free local port.
pub struct TestGateway {
    pub backend: Arc<InMemoryBackend>,
    pub channel: Channel,
}

impl TestGateway {
    pub async fn start(shard_count: u32) -> Self {
        Self::start_with(shard_count, GatewayConfig::default()).await
    }

    pub async fn start_with(shard_count: u32, config: GatewayConfig) -> Self {
        let backend = Arc::new(InMemoryBackend::new(shard_count));
        backend.insert_partner("sky", "SKYMILES", SKY_KEY);
        backend.insert_partner("hotel", "HOTELPTS", HOTEL_KEY);
        let gateway = Gateway::new(Arc::clone(&backend), config);
        let incoming = TcpIncoming::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let address = incoming.local_addr().unwrap();
        let server =
            Server::builder().add_service(gateway.ledger_service()).add_service(gateway.admin_service());
        tokio::spawn(server.serve_with_incoming(incoming));
        let channel = Endpoint::from_shared(format!("http://{address}")).unwrap().connect().await.unwrap();
        Self { backend, channel }
    }

    pub fn ledger(&self) -> LedgerClient<Channel> {
        LedgerClient::new(self.channel.clone()).max_decoding_message_size(64 * 1024 * 1024)
    }

    pub fn admin(&self) -> AdminClient<Channel> {
        AdminClient::new(self.channel.clone())
    }

    pub fn shard_count(&self) -> u32 {
        self.backend.shard_count()
    }

    pub fn shard_of(&self, member: &str) -> u32 {
        shard_of_member(&MemberId::parse(member).unwrap(), self.shard_count())
    }

    /// Two member ids on different shards (`same == false`) or on one shard.
    pub fn member_pair(&self, prefix: &str, same: bool) -> (String, String) {
        let first = format!("{prefix}-0");
        let shard = self.shard_of(&first);
        let second = (1..10_000)
            .map(|n| format!("{prefix}-{n}"))
            .find(|member| (self.shard_of(member) == shard) == same)
            .expect("a member on the wanted shard");
        (first, second)
    }
}

/// A request carrying `authorization: Bearer <api_key>`.
pub fn authed<T>(api_key: &str, message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert("authorization", format!("Bearer {api_key}").parse().unwrap());
    request
}

// ---- reads for the transfer resolver's tests -------------------------------------------

/// Points of one currency summed over every shard.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PointsTotals {
    pub debits_points: u128,
    pub credits_points: u128,
    /// Net of every shard's transit account: 0 when no transfer is in flight.
    pub transit_net_points: i128,
    /// Net of every member account (what members hold).
    pub member_net_points: i128,
    /// Net of every issuance account, negated (points earned).
    pub issued_points: i128,
}

impl InMemoryBackend {
    /// The open transfer records of a shard, as the resolver on its leader reads them.
    pub fn open_transfers(
        &self,
        shard: u32,
    ) -> Vec<(tally_ledger::TransferId, tally_ledger::state::TransferRecord)> {
        self.with_ledger(shard, |ledger| ledger.open_transfers())
    }

    /// The transfer record (source side) or marker (recipient side) of a shard.
    pub fn transfer_record(
        &self,
        shard: u32,
        transfer_id: &tally_ledger::TransferId,
    ) -> Option<tally_ledger::state::TransferRecord> {
        self.with_ledger(shard, |ledger| ledger.transfer(transfer_id))
    }

    /// Every shard's state items but its clock (a replayed command moves the clock only):
    /// equal before and after anything that must change nothing.
    pub fn state_without_clocks(&self) -> Vec<Vec<tally_ledger::state::StateItem>> {
        (0..self.shard_count())
            .map(|shard| {
                let mut items = self.with_ledger(shard, |ledger| ledger.items());
                items.retain(|item| !matches!(item, tally_ledger::state::StateItem::Clock { .. }));
                items
            })
            .collect()
    }

    /// Statement lines of a member account, oldest first.
    pub fn statement_lines(&self, shard: u32, member: &str, currency: &str) -> Vec<StatementLine> {
        let key = (MemberId::parse(member).unwrap(), CurrencyCode::parse(currency).unwrap());
        lock(&self.shards[shard as usize]).statements.get(&key).cloned().unwrap_or_default()
    }

    /// Totals of one currency over every account of every shard.
    pub fn points_totals(&self, currency: &str) -> PointsTotals {
        use tally_ledger::state::{StateItem, SystemAccountKind};
        let currency = CurrencyCode::parse(currency).unwrap();
        let mut totals = PointsTotals::default();
        for shard in 0..self.shard_count() {
            for item in self.with_ledger(shard, |ledger| ledger.items()) {
                let StateItem::Account(key, account) = item else { continue };
                if key.currency() != &currency {
                    continue;
                }
                totals.debits_points += u128::from(account.debits_points);
                totals.credits_points += u128::from(account.credits_points);
                match key {
                    AccountKey::Member { .. } => totals.member_net_points += account.net_points(),
                    AccountKey::System { kind: SystemAccountKind::Transit, .. } => {
                        totals.transit_net_points += account.net_points()
                    }
                    AccountKey::System { kind: SystemAccountKind::Issuance, .. } => {
                        totals.issued_points -= account.net_points()
                    }
                    AccountKey::System { .. } => {}
                }
            }
        }
        totals
    }

    /// Points are conserved in `currency` with nothing in flight: every shard's entries
    /// balance, no points sit in transit, and members hold exactly what was issued (the tests
    /// using this redeem nothing and exchange nothing).
    pub fn assert_points_conserved(&self, currency: &str) {
        let totals = self.points_totals(currency);
        assert_eq!(totals.debits_points, totals.credits_points, "{currency}: {totals:?}");
        assert_eq!(totals.transit_net_points, 0, "{currency}: points left in transit: {totals:?}");
        assert_eq!(totals.member_net_points, totals.issued_points, "{currency}: {totals:?}");
    }
}
