//! The per-operation half of the proof: every operation the generator got a definite answer for
//! is looked up, by its idempotency key, in the statements of the accounts it touches. An
//! acknowledged operation must be there exactly once (its lines under its key add up to its
//! effect); a refused one must not be there at all. This gives the report explicit counts of
//! operations lost and applied twice, where the balance read-back only sees sums.
//!
//! Operations without statement lines (Enrol, AuthorizeHold, VoidHold: no points move) are
//! counted as unchecked here; the held points of the balance read-back cover holds. The
//! recipient of a cross-shard transfer is paid under the transfer's own key (step 2), so only
//! the sender's side is checked here; the recipient's balance is checked by the read-back.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use tally_proto::v1::ledger_client::LedgerClient;
use tally_proto::v1::{ListStatementRequest, StatementOrder};
use tonic::transport::Channel;

use crate::client::{authorized, is_unknown};
use crate::ops::{exchange_credit, Kind, Op};
use crate::worker::Shared;

const PAGE_SIZE: u32 = 1000;
const FAILURES_KEPT: usize = 20;

/// What an operation should have done to one member account, seen from its statement.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Effect {
    pub member: u32,
    /// The partner whose currency the account holds.
    pub currency: u16,
    /// Credits minus debits of the lines under the operation's key.
    pub net_points: i64,
}

/// One operation with a definite outcome.
pub(crate) struct Entry {
    pub key: String,
    pub kind: Kind,
    /// The partner that sent it (statement lines carry it).
    pub partner: u16,
    pub acknowledged: bool,
    pub effects: Vec<Effect>,
}

/// Operations with a definite outcome, in the order they got it.
#[derive(Default)]
pub(crate) struct Journal {
    entries: Mutex<Vec<Entry>>,
}

impl Journal {
    /// Records an operation's definite outcome and the effects its statement lines must show.
    pub(crate) fn record(&self, op: &Op, key: &str, acknowledged: bool, shared: &Shared) {
        let effects = expected_effects(op, shared);
        if let Ok(mut entries) = self.entries.lock() {
            entries.push(Entry {
                key: key.to_owned(),
                kind: op.kind(),
                partner: op.partner(),
                acknowledged,
                effects,
            });
        }
    }

    pub(crate) fn take(&self) -> Vec<Entry> {
        self.entries.lock().map(|mut e| std::mem::take(&mut *e)).unwrap_or_default()
    }
}

fn expected_effects(op: &Op, shared: &Shared) -> Vec<Effect> {
    let effect = |member: u32, currency: u16, net_points: i64| Effect { member, currency, net_points };
    match op {
        Op::Enrol { .. } | Op::Authorize { .. } | Op::Void { .. } => Vec::new(),
        Op::Earn { partner, member, amount } => vec![effect(*member, *partner, *amount as i64)],
        Op::Redeem { partner, member, amount } => vec![effect(*member, *partner, -(*amount as i64))],
        Op::Capture { partner, member, authorized, amount, .. } => {
            let captured = if *amount == 0 { *authorized } else { *amount };
            vec![effect(*member, *partner, -(captured as i64))]
        }
        Op::Transfer { partner, from, to, amount } => {
            let mut effects = vec![effect(*from, *partner, -(*amount as i64))];
            if shared.member_shard[*from as usize] == shared.member_shard[*to as usize] {
                effects.push(effect(*to, *partner, *amount as i64));
            }
            effects
        }
        Op::Exchange { partner, member, to_partner, amount } => {
            let mut effects = vec![effect(*member, *partner, -(*amount as i64))];
            let credited =
                shared.names.terms(*partner, *to_partner).and_then(|t| exchange_credit(t, *amount));
            if let Some(credited) = credited {
                effects.push(effect(*member, *to_partner, credited as i64));
            }
            effects
        }
    }
}

/// How one operation's lines compare with its outcome.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Acknowledged, and its lines add up to its effect once.
    Once,
    /// Acknowledged, and no line under its key.
    Lost,
    /// Acknowledged, and its lines add up to a multiple (2 or more) of its effect.
    AppliedTwice,
    /// Acknowledged, but its lines match neither once, nor none, nor a multiple (for example
    /// one side of an exchange without the other).
    Different,
    /// Answered with a refusal, and no line under its key.
    NotApplied,
    /// Answered with a refusal, yet lines under its key.
    AppliedUnacknowledged,
}

/// What the statements show for one effect: the sum of the lines under the key, and how many.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Found {
    pub net_points: i64,
    pub lines: u64,
}

/// Judges one effect of an operation.
pub fn classify(acknowledged: bool, expected_net_points: i64, found: Found) -> Verdict {
    match (acknowledged, found.lines) {
        (false, 0) => Verdict::NotApplied,
        (false, _) => Verdict::AppliedUnacknowledged,
        (true, 0) => Verdict::Lost,
        (true, _) if found.net_points == expected_net_points => Verdict::Once,
        (true, _)
            if expected_net_points != 0
                && found.net_points % expected_net_points == 0
                && found.net_points / expected_net_points >= 2 =>
        {
            Verdict::AppliedTwice
        }
        (true, _) => Verdict::Different,
    }
}

/// Judges an operation from the verdicts of its effects: all must agree, else it is
/// [`Verdict::Different`] (partly applied), except that any double application wins.
pub fn combine(verdicts: &[Verdict]) -> Verdict {
    if verdicts.contains(&Verdict::AppliedTwice) {
        return Verdict::AppliedTwice;
    }
    if verdicts.contains(&Verdict::AppliedUnacknowledged) {
        return Verdict::AppliedUnacknowledged;
    }
    match verdicts.first() {
        Some(first) if verdicts.iter().all(|v| v == first) => *first,
        Some(_) => Verdict::Different,
        None => Verdict::Once,
    }
}

/// The counts the proof reports.
#[derive(Default)]
pub(crate) struct Counts {
    pub acknowledged: u64,
    pub refused: u64,
    /// Operations with statement lines to check (the others: Enrol and holds).
    pub checked: u64,
    pub lost: u64,
    pub applied_twice: u64,
    pub applied_unacknowledged: u64,
    pub different: u64,
    pub statement_lines_read: u64,
    pub failures: Vec<String>,
}

/// Reads the statement of every account of the run and judges every journaled operation.
pub(crate) async fn check(shared: &Arc<Shared>, channels: &[Channel]) -> anyhow::Result<Counts> {
    let entries = shared.journal.take();
    let partners = shared.cfg.partners;
    let members = shared.cfg.members;
    // For each account, the (entry, effect) pairs to look up in its statement.
    let mut wanted: Vec<Vec<(usize, usize)>> = vec![Vec::new(); partners * members];
    for (e, entry) in entries.iter().enumerate() {
        for (f, effect) in entry.effects.iter().enumerate() {
            wanted[effect.currency as usize * members + effect.member as usize].push((e, f));
        }
    }
    let entries = Arc::new(entries);
    let wanted = Arc::new(wanted);
    let next = Arc::new(AtomicU64::new(0));
    let found: Arc<Mutex<Vec<Vec<Found>>>> =
        Arc::new(Mutex::new(entries.iter().map(|e| vec![Found::default(); e.effects.len()]).collect()));
    let lines_read = Arc::new(AtomicU64::new(0));
    let tasks = shared.cfg.concurrency.clamp(1, 32);
    let mut handles = Vec::new();
    for t in 0..tasks {
        let (shared, entries, wanted, next, found, lines_read) = (
            shared.clone(),
            entries.clone(),
            wanted.clone(),
            next.clone(),
            found.clone(),
            lines_read.clone(),
        );
        let mut client = LedgerClient::new(channels[t % channels.len()].clone())
            .max_decoding_message_size(64 * 1024 * 1024);
        handles.push(tokio::spawn(async move {
            let mut errors = Vec::new();
            loop {
                let account = next.fetch_add(1, Ordering::Relaxed) as usize;
                if account >= wanted.len() {
                    break;
                }
                if wanted[account].is_empty() {
                    continue;
                }
                let currency = (account / shared.cfg.members) as u16;
                let member = (account % shared.cfg.members) as u32;
                match read_statement(&mut client, &shared, member, currency).await {
                    Ok(lines) => {
                        lines_read.fetch_add(lines.values().map(|l| l.len() as u64).sum(), Ordering::Relaxed);
                        let mut found = found.lock().expect("found lock");
                        for (e, f) in &wanted[account] {
                            let entry = &entries[*e];
                            if let Some(by_key) = lines.get(&(entry.partner, entry.key.clone())) {
                                let net = by_key.iter().sum::<i64>();
                                found[*e][*f] = Found { net_points: net, lines: by_key.len() as u64 };
                            }
                        }
                    }
                    Err(message) => errors.push(message),
                }
            }
            errors
        }));
    }
    let mut counts = Counts::default();
    for handle in handles {
        counts.failures.extend(handle.await.context("a statement task panicked")?);
    }
    counts.statement_lines_read = lines_read.load(Ordering::Relaxed);
    let found = found.lock().expect("found lock");
    for (entry, found) in entries.iter().zip(found.iter()) {
        if entry.acknowledged {
            counts.acknowledged += 1;
        } else {
            counts.refused += 1;
        }
        if entry.effects.is_empty() {
            continue;
        }
        counts.checked += 1;
        let verdicts: Vec<Verdict> = entry
            .effects
            .iter()
            .zip(found)
            .map(|(effect, found)| classify(entry.acknowledged, effect.net_points, *found))
            .collect();
        let verdict = combine(&verdicts);
        let counter = match verdict {
            Verdict::Once | Verdict::NotApplied => continue,
            Verdict::Lost => &mut counts.lost,
            Verdict::AppliedTwice => &mut counts.applied_twice,
            Verdict::AppliedUnacknowledged => &mut counts.applied_unacknowledged,
            Verdict::Different => &mut counts.different,
        };
        *counter += 1;
        if counts.failures.len() < FAILURES_KEPT {
            let expected: Vec<String> = entry
                .effects
                .iter()
                .zip(found)
                .map(|(effect, found)| {
                    format!(
                        "{} {}: expected {:+}, lines {} summing {:+}",
                        shared.names.members[effect.member as usize],
                        shared.names.currencies[effect.currency as usize],
                        if entry.acknowledged { effect.net_points } else { 0 },
                        found.lines,
                        found.net_points
                    )
                })
                .collect();
            counts.failures.push(format!(
                "{} key {} ({}): {verdict:?}; {}",
                entry.kind.name(),
                entry.key,
                if entry.acknowledged { "acknowledged" } else { "refused" },
                expected.join("; ")
            ));
        }
    }
    Ok(counts)
}

/// Net points of each line of one account's statement, by (sending partner, key).
type LinesByKey = HashMap<(u16, String), Vec<i64>>;

async fn read_statement(
    client: &mut LedgerClient<Channel>,
    shared: &Shared,
    member: u32,
    currency: u16,
) -> Result<LinesByKey, String> {
    let member_id = &shared.names.members[member as usize];
    let currency_name = &shared.names.currencies[currency as usize];
    let auth = &shared.auth[currency as usize];
    let partner_of: HashMap<&str, u16> =
        shared.names.partner_ids.iter().enumerate().map(|(p, id)| (id.as_str(), p as u16)).collect();
    let mut lines = LinesByKey::new();
    let mut token = String::new();
    let mut expected_sequence = 0u64;
    loop {
        let mut attempt = 0;
        let reply = loop {
            let request = ListStatementRequest {
                member_id: member_id.clone(),
                order: StatementOrder::OldestFirst as i32,
                page_size: PAGE_SIZE,
                page_token: token.clone(),
            };
            match client.list_statement(authorized(request, auth, Duration::from_secs(10))).await {
                Ok(reply) => break reply.into_inner(),
                Err(status) if status.code() == tonic::Code::NotFound => return Ok(lines),
                Err(status) if is_unknown(status.code()) && attempt < 20 => {
                    attempt += 1;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(status) => {
                    return Err(format!(
                        "could not read member {member_id}'s {currency_name} statement: {:?}: {}",
                        status.code(),
                        status.message()
                    ))
                }
            }
        };
        for line in reply.lines {
            if line.sequence != expected_sequence {
                return Err(format!(
                    "member {member_id}'s {currency_name} statement skips from line {expected_sequence} to {}",
                    line.sequence
                ));
            }
            expected_sequence += 1;
            let Some(partner) = partner_of.get(line.partner_id.as_str()) else { continue };
            let net = line.credit_points as i64 - line.debit_points as i64;
            lines.entry((*partner, line.idempotency_key)).or_default().push(net);
        }
        if reply.next_page_token.is_empty() {
            if expected_sequence != reply.total_lines {
                return Err(format!(
                    "member {member_id}'s {currency_name} statement gave {expected_sequence} lines of {}",
                    reply.total_lines
                ));
            }
            return Ok(lines);
        }
        token = reply.next_page_token;
    }
}
