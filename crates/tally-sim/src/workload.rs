//! The clients: a plan of ledger requests drawn from the seed, and the drivers that send them
//! through the gateway's own submission and transfer code, retrying with the same key.

use std::sync::Arc;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use tally_gateway::submit::{submit_claimed, Deadline, KeyedCommand};
use tally_gateway::transfer::{self, CrossShardTransfer};
use tally_gateway::{ApiError, Backend, Consistency};
use tally_ledger::routing::shard_of_member;
use tally_ledger::{
    AgreementTerms, Command, CurrencyCode, IdempotencyKey, MemberId, Operation, OperationResult, PartnerId,
};
use tokio::time::Instant;

use crate::cluster::SimCluster;
use crate::history::{Read, Recorder, Sent, Slot};
use crate::stats::FaultCounters;

/// Two partners, each with its own currency; members hold both.
pub const PARTNERS: [(&str, &str); 2] = [("simair", "SIMMILES"), ("simhotel", "SIMNIGHTS")];
/// 30 days, far longer than a run: holds in the simulation never expire, so the model stays exact.
const HOLD_DURATION_MS: u64 = 30 * 24 * 3_600_000;
/// Deadline of one attempt, as a gateway would give a request.
const ATTEMPT_DEADLINE: Duration = Duration::from_millis(1_500);

pub fn partner(index: usize) -> PartnerId {
    PartnerId::parse(PARTNERS[index].0).expect("valid partner id")
}

pub fn currency(index: usize) -> CurrencyCode {
    CurrencyCode::parse(PARTNERS[index].1).expect("valid currency")
}

pub fn member(index: usize) -> MemberId {
    MemberId::parse(format!("sim-member-{index}")).expect("valid member id")
}

/// One step of a client's plan.
#[derive(Clone, Debug)]
pub enum Step {
    /// One command to one shard, routed there by `member_id` (its key is claimed on the key's
    /// home shard first when that is another); `resend`: send it once more after it is
    /// acknowledged.
    Single {
        shard: u32,
        member_id: MemberId,
        command: Command,
        resend: bool,
    },
    CrossShard {
        transfer: CrossShardTransfer,
        resend: bool,
    },
    Read {
        shard: u32,
        member_id: MemberId,
        currency: CurrencyCode,
    },
}

/// A client's steps, each after a pause.
#[derive(Clone, Debug)]
pub struct Plan {
    pub client: usize,
    pub steps: Vec<(u64, Step)>,
}

pub struct WorkloadShape {
    pub members: usize,
    pub shard_count: u32,
    pub steps_per_client: usize,
    pub pause_max_ms: u64,
}

/// The plan of client `client`, from its own generator (so each client's plan depends only
/// on the seed, not on how the clients interleave).
pub fn plan(seed: u64, client: usize, shape: &WorkloadShape) -> Plan {
    let mut rng = StdRng::seed_from_u64(seed ^ (0x636c_6965_6e74_0000 + client as u64));
    let mut steps = Vec::new();
    // Holds this client authorized and has not settled, by partner index.
    let mut open_holds: Vec<(usize, IdempotencyKey)> = Vec::new();
    for n in 0..shape.steps_per_client {
        let pause_ms = rng.gen_range(0..=shape.pause_max_ms);
        let p = rng.gen_range(0..PARTNERS.len());
        let (partner_id, currency) = (partner(p), currency(p));
        let member_index = rng.gen_range(0..shape.members);
        let member_id = member(member_index);
        let shard = shard_of_member(&member_id, shape.shard_count);
        let key = |kind: &str| IdempotencyKey::parse(format!("c{client}-{n}-{kind}")).expect("valid key");
        let resend = rng.gen_bool(0.1);
        let routing_member = member_id.clone();
        let single = |key: IdempotencyKey, operation: Operation| Step::Single {
            shard,
            member_id: routing_member.clone(),
            command: Command { partner_id: partner_id.clone(), idempotency_key: key, operation },
            resend,
        };
        let roll = rng.gen_range(0..100);
        let step = match roll {
            0..=27 => single(
                key("earn"),
                Operation::Earn { member_id, currency, amount_points: rng.gen_range(20..=200) },
            ),
            28..=37 => single(
                key("redeem"),
                Operation::Redeem { member_id, currency, amount_points: rng.gen_range(1..=80) },
            ),
            38..=45 => {
                let hold_key = key("hold");
                open_holds.push((p, hold_key.clone()));
                single(
                    hold_key,
                    Operation::AuthorizeHold {
                        member_id,
                        currency,
                        amount_points: rng.gen_range(1..=60),
                        expires_in_ms: HOLD_DURATION_MS,
                    },
                )
            }
            46..=53 if !open_holds.is_empty() => {
                let (hold_partner, hold_key) = open_holds.swap_remove(rng.gen_range(0..open_holds.len()));
                // Holds are named by (partner, key): settle under the partner that authorized.
                let command = |key: IdempotencyKey, operation: Operation| Command {
                    partner_id: partner(hold_partner),
                    idempotency_key: key,
                    operation,
                };
                let (hold_shard, hold_member) =
                    hold_place(&steps, &hold_key).unwrap_or((shard, member_id.clone()));
                let command = if rng.gen_bool(0.6) {
                    command(
                        key("capture"),
                        Operation::CaptureHold { hold_key, amount_points: rng.gen_range(0..=40) },
                    )
                } else {
                    command(key("void"), Operation::VoidHold { hold_key })
                };
                Step::Single { shard: hold_shard, member_id: hold_member, command, resend }
            }
            54..=77 => {
                let to_member = member(pick_other(&mut rng, shape.members, member_index));
                let amount_points = rng.gen_range(1..=60);
                let to_shard = shard_of_member(&to_member, shape.shard_count);
                if to_shard == shard {
                    single(
                        key("transfer"),
                        Operation::Transfer {
                            from_member_id: member_id,
                            to_member_id: to_member,
                            currency,
                            amount_points,
                        },
                    )
                } else {
                    let idempotency_key = key("xfer");
                    let transfer_id =
                        transfer::transfer_id(&partner_id, &idempotency_key).expect("a short transfer id");
                    Step::CrossShard {
                        transfer: CrossShardTransfer {
                            transfer_id,
                            partner_id,
                            idempotency_key,
                            from_member_id: member_id,
                            to_member_id: to_member,
                            currency,
                            amount_points,
                            from_shard: shard,
                            to_shard,
                        },
                        resend,
                    }
                }
            }
            78..=85 => {
                let to = 1 - p;
                let terms = AgreementTerms {
                    rate_numerator: rng.gen_range(1..=3),
                    rate_denominator: rng.gen_range(1..=2),
                    minimum_points: 0,
                    maximum_points: 0,
                    block_size_points: 0,
                    fee_points: rng.gen_range(0..=2),
                };
                single(
                    key("exchange"),
                    Operation::Exchange {
                        member_id,
                        from_currency: currency,
                        to_currency: self::currency(to),
                        amount_points: rng.gen_range(5..=50),
                        terms,
                    },
                )
            }
            _ => Step::Read { shard, member_id, currency },
        };
        steps.push((pause_ms, step));
    }
    Plan { client, steps }
}

/// The shard and member of the hold authorized under `hold_key`.
fn hold_place(steps: &[(u64, Step)], hold_key: &IdempotencyKey) -> Option<(u32, MemberId)> {
    steps.iter().find_map(|(_, step)| match step {
        Step::Single { shard, member_id, command, .. } if &command.idempotency_key == hold_key => {
            Some((*shard, member_id.clone()))
        }
        _ => None,
    })
}

fn pick_other(rng: &mut StdRng, members: usize, not: usize) -> usize {
    let others: Vec<usize> = (0..members).filter(|&m| m != not).collect();
    *others.choose(rng).expect("at least two members")
}

/// When the clients stop: no new step after `new_steps_until`; retries of started steps go on
/// until `give_up_at` (faults are off by then, so they normally finish long before).
#[derive(Clone, Copy)]
pub struct ClientTimes {
    pub new_steps_until: Instant,
    pub give_up_at: Instant,
}

/// The first answer of a request acknowledges it; a later one answers a deliberate resend.
fn count_answer(recorder: &Recorder, counters: &FaultCounters, slot: &Slot) {
    if recorder.ack(slot.clone()) {
        counters.add(&counters.acknowledged);
    } else {
        counters.add(&counters.resends);
    }
}

/// Runs one client's plan. Every request is retried with the same key until it is answered;
/// acknowledged requests marked `resend` are sent once more on purpose.
pub async fn run_client(
    cluster: Arc<SimCluster>,
    recorder: Arc<Recorder>,
    counters: Arc<FaultCounters>,
    plan: Plan,
    times: ClientTimes,
    seed: u64,
) {
    let mut rng = StdRng::seed_from_u64(seed ^ (0x7265_7472_7900_0000 + plan.client as u64));
    for (pause_ms, step) in plan.steps {
        tokio::time::sleep(Duration::from_millis(pause_ms)).await;
        if Instant::now() >= times.new_steps_until {
            return;
        }
        match step {
            Step::Single { shard, member_id, command, resend } => {
                let slot: Slot = (command.partner_id.clone(), command.idempotency_key.clone());
                recorder.sent(slot.clone(), Sent::Single { shard, command: command.clone() });
                let mut sends = if resend { 2 } else { 1 };
                while sends > 0 {
                    let keyed =
                        KeyedCommand { shard, member_id: member_id.clone(), command: command.clone() };
                    if !single_until_answered(&cluster, &recorder, &mut rng, &keyed, times).await {
                        return;
                    }
                    count_answer(&recorder, &counters, &slot);
                    sends -= 1;
                }
            }
            Step::CrossShard { transfer, resend } => {
                let slot: Slot = (transfer.partner_id.clone(), transfer.idempotency_key.clone());
                recorder.sent(slot.clone(), Sent::CrossShard(transfer.clone()));
                let mut sends = if resend { 2 } else { 1 };
                while sends > 0 {
                    if !cross_until_answered(&cluster, &recorder, &mut rng, &transfer, times).await {
                        return;
                    }
                    count_answer(&recorder, &counters, &slot);
                    sends -= 1;
                }
            }
            Step::Read { shard, member_id, currency } => {
                let started_at = recorder.tick();
                let read =
                    cluster.balance(shard, member_id.clone(), currency.clone(), Consistency::Linearizable);
                if let Ok(read) = read.await {
                    counters.add(&counters.reads);
                    recorder.read(Read {
                        shard,
                        member_id,
                        currency,
                        started_at,
                        applied_log_index: read.applied_log_index,
                        balance: read.balance,
                    });
                }
            }
        }
    }
}

/// The failed attempt itself was counted by the backend as a retry.
async fn pause_before_retry(rng: &mut StdRng) {
    tokio::time::sleep(Duration::from_millis(rng.gen_range(10..=150))).await;
}

/// Sends one command until the shard answers it; false when the client gave up.
async fn single_until_answered(
    cluster: &Arc<SimCluster>,
    recorder: &Recorder,
    rng: &mut StdRng,
    keyed: &KeyedCommand,
    times: ClientTimes,
) -> bool {
    let slot: Slot = (keyed.command.partner_id.clone(), keyed.command.idempotency_key.clone());
    loop {
        if Instant::now() >= times.give_up_at {
            return false;
        }
        let answer = submit_claimed(cluster, Deadline::after(ATTEMPT_DEADLINE), vec![keyed.clone()]).await;
        match answer.into_iter().next().expect("one answer per command") {
            Ok(outcome) => {
                recorder.answer(slot, outcome);
                return true;
            }
            Err(_) => pause_before_retry(rng).await,
        }
    }
}

/// Drives a cross-shard transfer through the gateway's steps until it is acknowledged (step
/// 1 refused, or all three steps done); false when the client gave up.
async fn cross_until_answered(
    cluster: &Arc<SimCluster>,
    recorder: &Recorder,
    rng: &mut StdRng,
    transfer: &CrossShardTransfer,
    times: ClientTimes,
) -> bool {
    let slot: Slot = (transfer.partner_id.clone(), transfer.idempotency_key.clone());
    loop {
        if Instant::now() >= times.give_up_at {
            return false;
        }
        let deadline = Deadline::after(ATTEMPT_DEADLINE);
        let step_one = KeyedCommand {
            shard: transfer.from_shard,
            member_id: transfer.from_member_id.clone(),
            command: transfer.out_command(),
        };
        let first = submit_claimed(cluster, deadline, vec![step_one]).await;
        let outcome = match first.into_iter().next().expect("one answer per command") {
            Ok(outcome) => outcome,
            Err(_) => {
                pause_before_retry(rng).await;
                continue;
            }
        };
        recorder.answer(slot.clone(), outcome.clone());
        if !matches!(outcome.result, Ok(OperationResult::TransferredOut { .. })) {
            return true;
        }
        let finished = transfer::finish(cluster, deadline, vec![(transfer.clone(), outcome)]).await;
        match finished.into_iter().next().expect("one reply per transfer") {
            Ok(_) => return true,
            // Step 2 refused for good: the caller has its answer; the resolver refunds.
            Err(ApiError::Ledger(_)) => return true,
            Err(_) => pause_before_retry(rng).await,
        }
    }
}
