//! Coalescing of concurrent submissions bound for one shard into one node call.
//!
//! A gateway in front of a multi-node cluster would otherwise make one call to a shard's leader
//! per partner call: each call costs the gateway, the network and the node a fixed amount of
//! work (an HTTP/2 stream, an encoding, a task on the node) that dwarfs a single command. Here
//! at most a fixed number of calls per shard ([`CALLS_IN_FLIGHT_PER_SHARD_DEFAULT`] in the
//! gateway) are on their way; requests that
//! arrive meanwhile queue and go together in the next call, in arrival order, with one outcome
//! per command given back to each request.
//!
//! No task is spawned: the caller that finds a free slot sends the call itself, and when its
//! call is answered it hands the next queued batch to the first caller of that batch, who sends
//! it. A caller that gives up (its future dropped) is skipped; a sender that gives up releases
//! its slot to the queue on drop, and the requests it carried learn that their outcome is
//! unknown (retryable with the same idempotency key, like any lost answer).

use std::collections::VecDeque;
use std::future::Future;
use std::sync::{Arc, Mutex};

use metrics::{describe_histogram, histogram, Unit};
use tally_ledger::{Command, CommandOutcome};
use tokio::sync::oneshot;

use crate::backend::BackendError;

/// Calls per shard on their way at once, by default: one, and the calls that arrive while it
/// is on its way travel together in the next. With the cores full (a cluster of 8 shards on
/// two), fewer and fuller node calls did more than two in flight at 16 and 64 callers
/// (docs/benchmarks.md, 2026-12-05); the node pipelines entries itself (two in flight per
/// shard).
pub const CALLS_IN_FLIGHT_PER_SHARD_DEFAULT: usize = 1;
/// Commands carried by one coalesced call at most (a single larger request still goes whole).
pub const COMMANDS_PER_CALL_MAX: usize = 4_096;

pub const COALESCED_COMMANDS: &str = "tally_gateway_coalesced_commands";
pub const COALESCED_REQUESTS: &str = "tally_gateway_coalesced_requests";

/// Registers the descriptions of the coalescer's metrics.
pub fn describe_metrics() {
    describe_histogram!(
        COALESCED_COMMANDS,
        Unit::Count,
        "Commands carried by one submission call to a shard's leader"
    );
    describe_histogram!(
        COALESCED_REQUESTS,
        Unit::Count,
        "Requests (single calls, key claims, parts of batches) merged into one submission call to a shard's leader"
    );
}

type Answer = Result<Vec<CommandOutcome>, BackendError>;

struct Queued {
    commands: Vec<Command>,
    /// `None` for the request of the caller sending the batch.
    reply: Option<oneshot::Sender<Turn>>,
}

enum Turn {
    Answered(Answer),
    /// Send this batch; its first request is the receiver's own (its reply taken out).
    Lead(Lead),
}

#[derive(Default)]
struct ShardQueue {
    /// Invariant: not empty only while `calls_in_flight` is at the maximum.
    waiting: VecDeque<Queued>,
    calls_in_flight: usize,
}

pub struct ShardCoalescer {
    shards: Vec<Arc<Mutex<ShardQueue>>>,
    calls_in_flight_max: usize,
}

impl ShardCoalescer {
    pub fn new(shard_count: u32, calls_in_flight_max: usize) -> Self {
        assert!(calls_in_flight_max > 0, "a shard needs at least one call in flight");
        Self {
            shards: (0..shard_count).map(|_| Arc::new(Mutex::new(ShardQueue::default()))).collect(),
            calls_in_flight_max,
        }
    }

    /// Submits `commands` to `shard`, merged with whatever else is queued for it. `send` makes
    /// one node call with the merged commands: it answers one outcome per command, in order, and
    /// gives the commands back (to resend them request by request without copying them first).
    pub async fn submit<F, Fut>(&self, shard: u32, commands: Vec<Command>, send: F) -> Answer
    where
        F: Fn(Vec<Command>) -> Fut,
        Fut: Future<Output = (Answer, Vec<Command>)>,
    {
        let Some(queue) = self.shards.get(shard as usize) else {
            // An unknown shard: the node gives the clear refusal.
            return send(commands).await.0;
        };
        let (reply, mut answer) = oneshot::channel();
        let batch = {
            let mut queue = queue.lock().expect("coalescer lock poisoned");
            queue.waiting.push_back(Queued { commands, reply: Some(reply) });
            if queue.calls_in_flight < self.calls_in_flight_max {
                queue.calls_in_flight += 1;
                Some(take_batch(&mut queue.waiting))
            } else {
                None
            }
        };
        let (batch, slot) = match batch {
            Some(batch) => (batch, Slot { queue: Some(Arc::clone(queue)) }),
            None => match (&mut answer).await {
                Ok(Turn::Answered(result)) => return result,
                Ok(Turn::Lead(lead)) => lead.take(),
                Err(_) => return Err(lost_call()),
            },
        };
        let own = send_batch(batch, &send).await;
        drop(slot);
        own
    }
}

/// The batch at the front of the queue: at least one request, then more while the commands fit.
fn take_batch(waiting: &mut VecDeque<Queued>) -> Vec<Queued> {
    let mut batch = Vec::new();
    let mut commands = 0;
    while let Some(next) = waiting.front() {
        if !batch.is_empty() && commands + next.commands.len() > COMMANDS_PER_CALL_MAX {
            break;
        }
        commands += next.commands.len();
        batch.push(waiting.pop_front().expect("front exists"));
    }
    batch
}

/// Sends one batch, answers every request in it but the first (the sender's own), and returns
/// the first one's answer.
async fn send_batch<F, Fut>(batch: Vec<Queued>, send: &F) -> Answer
where
    F: Fn(Vec<Command>) -> Fut,
    Fut: Future<Output = (Answer, Vec<Command>)>,
{
    let mut sizes = Vec::with_capacity(batch.len());
    let mut merged = Vec::with_capacity(batch.iter().map(|queued| queued.commands.len()).sum());
    let mut replies = Vec::with_capacity(batch.len());
    for queued in batch {
        sizes.push(queued.commands.len());
        merged.extend(queued.commands);
        replies.push(queued.reply);
    }
    histogram!(COALESCED_COMMANDS).record(merged.len() as f64);
    histogram!(COALESCED_REQUESTS).record(sizes.len() as f64);
    let answers = match send(merged).await {
        (Ok(outcomes), _) => split(outcomes, &sizes),
        // One request can refuse a whole call (a new key while the shard retains its budget of
        // keys, where a replay alone would pass): each request is asked again alone.
        (Err(BackendError::Overloaded(_)), merged) if sizes.len() > 1 => {
            resend_alone(merged, &sizes, send).await
        }
        (Err(error), _) => sizes.iter().map(|_| Err(error.clone())).collect(),
    };
    let mut answers = answers.into_iter();
    let own = answers.next().expect("one answer per request");
    for (reply, answer) in replies.into_iter().skip(1).zip(answers) {
        // A caller that gave up has dropped its receiver; its answer goes nowhere.
        if let Some(reply) = reply {
            let _ = reply.send(Turn::Answered(answer));
        }
    }
    own
}

fn split(outcomes: Vec<CommandOutcome>, sizes: &[usize]) -> Vec<Answer> {
    let expected: usize = sizes.iter().sum();
    if outcomes.len() != expected {
        let error = BackendError::Unavailable(format!(
            "the node answered {} outcomes for {expected} commands",
            outcomes.len()
        ));
        return sizes.iter().map(|_| Err(error.clone())).collect();
    }
    let mut outcomes = outcomes.into_iter();
    sizes.iter().map(|&size| Ok(outcomes.by_ref().take(size).collect())).collect()
}

async fn resend_alone<F, Fut>(merged: Vec<Command>, sizes: &[usize], send: &F) -> Vec<Answer>
where
    F: Fn(Vec<Command>) -> Fut,
    Fut: Future<Output = (Answer, Vec<Command>)>,
{
    let mut commands = merged.into_iter();
    let mut answers = Vec::with_capacity(sizes.len());
    for &size in sizes {
        answers.push(send(commands.by_ref().take(size).collect()).await.0);
    }
    answers
}

fn lost_call() -> BackendError {
    BackendError::Unavailable(
        "the call carrying this request to the shard's leader was abandoned; its outcome is unknown: \
         retry with the same idempotency key"
            .to_string(),
    )
}

/// A call slot of one shard, held while a batch is on its way. Released on drop, also when the
/// sender's future is dropped: the next queued batch is handed to its first live caller, or the
/// slot is freed.
struct Slot {
    /// `None` once disarmed (the slot passed on without a release).
    queue: Option<Arc<Mutex<ShardQueue>>>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Some(queue) = self.queue.take() {
            release(&queue, Vec::new());
        }
    }
}

/// A slot handed to a waiting caller with the batch it is to send. Its caller's future can be
/// dropped after the hand-off and before it looks at its turn (its deadline, or its client
/// gone): the lead then passes the batch's other requests and the slot on, as a sender's slot
/// does. Without that, the slot leaked and, with one call in flight per shard, the shard took
/// no more writes from this gateway (seen in an 8-shard SubmitBatch run, 2026-12-05).
struct Lead {
    batch: Vec<Queued>,
    slot: Slot,
}

impl Lead {
    /// The batch to send and the slot to hold meanwhile.
    fn take(mut self) -> (Vec<Queued>, Slot) {
        let batch = std::mem::take(&mut self.batch);
        (batch, Slot { queue: self.slot.queue.take() })
    }
}

impl Drop for Lead {
    fn drop(&mut self) {
        if let Some(queue) = self.slot.queue.take() {
            let mut unsent = std::mem::take(&mut self.batch);
            // The first request is the departed caller's own: nobody waits for its answer.
            if !unsent.is_empty() {
                unsent.remove(0);
            }
            release(&queue, unsent);
        }
    }
}

/// Gives a slot back: `unsent` requests (of a batch handed to a caller who left) go back to the
/// front of the queue in order, then the next batch is handed to its first caller still
/// waiting (a caller who left takes its request with it), or the slot is freed.
fn release(queue: &Arc<Mutex<ShardQueue>>, unsent: Vec<Queued>) {
    let mut guard = queue.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    for queued in unsent.into_iter().rev() {
        guard.waiting.push_front(queued);
    }
    loop {
        if guard.waiting.is_empty() {
            guard.calls_in_flight -= 1;
            return;
        }
        let mut batch = take_batch(&mut guard.waiting);
        while !batch.is_empty() {
            let reply = batch[0].reply.take().expect("queued requests have a receiver");
            let lead =
                Lead { batch: std::mem::take(&mut batch), slot: Slot { queue: Some(Arc::clone(queue)) } };
            match reply.send(Turn::Lead(lead)) {
                Ok(()) => return,
                Err(Turn::Lead(mut returned)) => {
                    // Disarmed: this loop holds the lock and goes on with the batch itself.
                    returned.slot.queue = None;
                    batch = std::mem::take(&mut returned.batch);
                    batch.remove(0);
                }
                Err(Turn::Answered(_)) => unreachable!("a lead was sent"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use tally_ledger::{CurrencyCode, IdempotencyKey, MemberId, Operation, OperationResult, PartnerId};
    use tokio::sync::Semaphore;

    use super::*;

    fn command(number: u64) -> Command {
        Command {
            partner_id: PartnerId::parse("skyair").unwrap(),
            idempotency_key: IdempotencyKey::parse(format!("key-{number}")).unwrap(),
            operation: Operation::Earn {
                member_id: MemberId::parse("alice").unwrap(),
                currency: CurrencyCode::parse("SKYMILES").unwrap(),
                amount_points: number,
            },
        }
    }

    fn number_of(command: &Command) -> u64 {
        command.idempotency_key.as_str().trim_start_matches("key-").parse().unwrap()
    }

    /// The fake node's answer to a command: its number as the log index.
    fn outcome(number: u64) -> CommandOutcome {
        CommandOutcome {
            result: Ok(OperationResult::KeyClaimed),
            replay: false,
            log_index: number,
            log_time_ms: 0,
        }
    }

    /// A fake node: records every call's command numbers; a call waits for a permit when gated.
    #[derive(Default)]
    struct FakeNode {
        calls: Mutex<Vec<Vec<u64>>>,
        gate: Option<Arc<Semaphore>>,
        /// Refuses as overloaded any call holding this command number.
        refuse: Option<u64>,
    }

    impl FakeNode {
        async fn send(&self, commands: Vec<Command>) -> (Answer, Vec<Command>) {
            let numbers: Vec<u64> = commands.iter().map(number_of).collect();
            self.calls.lock().unwrap().push(numbers.clone());
            if let Some(gate) = &self.gate {
                gate.acquire().await.unwrap().forget();
            }
            if self.refuse.is_some_and(|refused| numbers.contains(&refused)) {
                return (Err(BackendError::Overloaded("retained keys at budget".to_string())), commands);
            }
            (Ok(numbers.into_iter().map(outcome).collect()), commands)
        }

        fn calls(&self) -> Vec<Vec<u64>> {
            self.calls.lock().unwrap().clone()
        }
    }

    /// Submits `commands` to `shard` in a task of its own, as one caller of the gateway.
    fn submit_in_task(
        coalescer: &Arc<ShardCoalescer>,
        node: &Arc<FakeNode>,
        shard: u32,
        commands: Vec<Command>,
    ) -> tokio::task::JoinHandle<Answer> {
        let (coalescer, node) = (coalescer.clone(), node.clone());
        tokio::spawn(async move { coalescer.submit(shard, commands, |c| node.send(c)).await })
    }

    fn numbers(answer: &Answer) -> Vec<u64> {
        answer.as_ref().unwrap().iter().map(|outcome| outcome.log_index).collect()
    }

    async fn settle() {
        for _ in 0..20 {
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test]
    async fn requests_queued_behind_busy_calls_go_in_one_call_and_get_their_own_outcomes() {
        let gate = Arc::new(Semaphore::new(0));
        let node = Arc::new(FakeNode { gate: Some(gate.clone()), ..FakeNode::default() });
        let coalescer = Arc::new(ShardCoalescer::new(1, 1));
        let mut tasks = Vec::new();
        // Request 0 takes the one slot; 1..=3 (two commands each) queue behind it.
        for request in 0..4u64 {
            let commands = if request == 0 {
                vec![command(0)]
            } else {
                vec![command(request * 10), command(request * 10 + 1)]
            };
            tasks.push(submit_in_task(&coalescer, &node, 0, commands));
            settle().await;
        }
        assert_eq!(node.calls(), vec![vec![0]], "the first call is alone; the rest wait for the slot");
        gate.add_permits(2);
        let mut answers = Vec::new();
        for task in tasks {
            answers.push(task.await.unwrap());
        }
        assert_eq!(node.calls(), vec![vec![0], vec![10, 11, 20, 21, 30, 31]]);
        assert_eq!(numbers(&answers[0]), vec![0]);
        assert_eq!(numbers(&answers[1]), vec![10, 11]);
        assert_eq!(numbers(&answers[2]), vec![20, 21]);
        assert_eq!(numbers(&answers[3]), vec![30, 31]);
    }

    #[tokio::test]
    async fn calls_in_flight_per_shard_are_bounded_and_shards_do_not_wait_for_each_other() {
        let gate = Arc::new(Semaphore::new(0));
        let node = Arc::new(FakeNode { gate: Some(gate.clone()), ..FakeNode::default() });
        let coalescer = Arc::new(ShardCoalescer::new(2, 2));
        let mut tasks = Vec::new();
        for (shard, number) in [(0, 1), (0, 2), (0, 3), (0, 4), (1, 5)] {
            tasks.push(submit_in_task(&coalescer, &node, shard, vec![command(number)]));
            settle().await;
        }
        assert_eq!(node.calls(), vec![vec![1], vec![2], vec![5]], "two calls on shard 0, one on shard 1");
        gate.add_permits(10);
        for task in tasks {
            task.await.unwrap().unwrap();
        }
        assert_eq!(node.calls()[3], vec![3, 4]);
        assert_eq!(node.calls().len(), 4);
    }

    #[tokio::test]
    async fn a_big_queue_is_sent_in_calls_of_bounded_size_without_splitting_a_request() {
        let gate = Arc::new(Semaphore::new(0));
        let node = Arc::new(FakeNode { gate: Some(gate.clone()), ..FakeNode::default() });
        let coalescer = Arc::new(ShardCoalescer::new(1, 1));
        let half = (COMMANDS_PER_CALL_MAX / 2) as u64 + 1;
        let mut tasks = Vec::new();
        for request in 0..3u64 {
            let size = if request == 0 { 1 } else { half };
            let commands = (0..size).map(|index| command(request * 100_000 + index)).collect();
            tasks.push(submit_in_task(&coalescer, &node, 0, commands));
            settle().await;
        }
        gate.add_permits(10);
        for task in tasks {
            task.await.unwrap().unwrap();
        }
        let sizes: Vec<usize> = node.calls().iter().map(Vec::len).collect();
        assert_eq!(sizes, vec![1, half as usize, half as usize]);
    }

    #[tokio::test]
    async fn a_merged_call_refused_as_overloaded_is_asked_again_request_by_request() {
        let gate = Arc::new(Semaphore::new(0));
        let node = Arc::new(FakeNode { gate: Some(gate.clone()), refuse: Some(2), ..FakeNode::default() });
        let coalescer = Arc::new(ShardCoalescer::new(1, 1));
        let mut tasks = Vec::new();
        for number in [0, 1, 2, 3] {
            tasks.push(submit_in_task(&coalescer, &node, 0, vec![command(number)]));
            settle().await;
        }
        gate.add_permits(10);
        let mut answers = Vec::new();
        for task in tasks {
            answers.push(task.await.unwrap());
        }
        assert_eq!(node.calls(), vec![vec![0], vec![1, 2, 3], vec![1], vec![2], vec![3]]);
        assert_eq!(numbers(&answers[1]), vec![1]);
        assert!(matches!(answers[2], Err(BackendError::Overloaded(_))));
        assert_eq!(numbers(&answers[3]), vec![3]);
    }

    /// Polls `future` once.
    async fn poll_once<F: Future + Unpin>(future: &mut F) -> std::task::Poll<F::Output> {
        std::future::poll_fn(|context| std::task::Poll::Ready(std::pin::Pin::new(&mut *future).poll(context)))
            .await
    }

    #[tokio::test]
    async fn a_caller_that_leaves_right_after_being_handed_the_call_passes_it_on() {
        let gate = Arc::new(Semaphore::new(0));
        let node = FakeNode { gate: Some(gate.clone()), ..FakeNode::default() };
        let coalescer = ShardCoalescer::new(1, 1);
        let send = |commands| node.send(commands);
        let mut sender = Box::pin(coalescer.submit(0, vec![command(0)], send));
        assert!(poll_once(&mut sender).await.is_pending(), "the first call waits at the node");
        let mut leaving = Box::pin(coalescer.submit(0, vec![command(1)], send));
        assert!(poll_once(&mut leaving).await.is_pending());
        let mut staying = Box::pin(coalescer.submit(0, vec![command(2)], send));
        assert!(poll_once(&mut staying).await.is_pending());
        // The first call is answered: requests 1 and 2 are handed to request 1's caller as the
        // next call, and that caller leaves before it looks (its deadline passed).
        gate.add_permits(1);
        assert_eq!(numbers(&sender.await), vec![0]);
        drop(leaving);
        // Request 2 is sent alone by its own caller, and the slot is free afterwards.
        gate.add_permits(2);
        let staying =
            tokio::time::timeout(Duration::from_secs(5), staying).await.expect("request 2 was stranded");
        assert_eq!(numbers(&staying), vec![2]);
        let alone = tokio::time::timeout(Duration::from_secs(5), coalescer.submit(0, vec![command(3)], send))
            .await
            .expect("the slot leaked");
        assert_eq!(numbers(&alone), vec![3]);
        assert_eq!(node.calls(), vec![vec![0], vec![2], vec![3]]);
    }

    #[tokio::test]
    async fn callers_that_give_up_never_stall_the_queue() {
        let gate = Arc::new(Semaphore::new(0));
        let node = Arc::new(FakeNode { gate: Some(gate.clone()), ..FakeNode::default() });
        let coalescer = Arc::new(ShardCoalescer::new(1, 1));
        let spawn = |number: u64| submit_in_task(&coalescer, &node, 0, vec![command(number)]);
        let sender = spawn(0);
        settle().await;
        let left_while_queued = spawn(1);
        settle().await;
        let passenger = spawn(2);
        settle().await;
        // Request 1's caller leaves before its turn: it would have led the next batch.
        left_while_queued.abort();
        settle().await;
        gate.add_permits(1);
        assert_eq!(numbers(&sender.await.unwrap()), vec![0]);
        settle().await;
        assert_eq!(node.calls(), vec![vec![0], vec![2]], "the departed request is not sent");
        // Request 2's caller, now sending its call, leaves mid-call: the slot goes to the
        // queued requests 3 and 4, sent together by request 3's caller.
        let third = spawn(3);
        settle().await;
        let fourth = spawn(4);
        settle().await;
        passenger.abort();
        settle().await;
        assert_eq!(node.calls(), vec![vec![0], vec![2], vec![3, 4]]);
        // Request 3's caller leaves mid-call too: request 4 shared that call and learns that its
        // outcome is unknown.
        third.abort();
        let fourth = tokio::time::timeout(Duration::from_secs(5), fourth).await.unwrap().unwrap();
        assert!(
            matches!(&fourth, Err(BackendError::Unavailable(message)) if message.contains("outcome is unknown"))
        );
        // The slot is free again.
        gate.add_permits(1);
        let alone = tokio::time::timeout(Duration::from_secs(5), spawn(5)).await.unwrap().unwrap();
        assert_eq!(numbers(&alone), vec![5]);
    }
}
