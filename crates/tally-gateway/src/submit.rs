//! Deadlines, retries and per-shard submission.
//!
//! A request's deadline is the earlier of the caller's `grpc-timeout` and the gateway's
//! [`GatewayConfig::request_deadline_ms`](crate::GatewayConfig::request_deadline_ms), both
//! counted from the moment the gateway starts on the request. Within it, a call that fails with
//! `Unavailable` or `Overloaded` is retried with the very same commands (same keys, so the
//! shard applies each at most once) after a short backoff (5 ms, doubling, at most 100 ms).
//! A request whose deadline has already passed is not submitted at all, so it changes nothing.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tally_ledger::routing::home_shard_of_key;
use tally_ledger::{Command, CommandOutcome, MemberId, Operation, OperationResult};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tonic::metadata::MetadataMap;

use crate::backend::{Backend, BackendError};
use crate::status::ApiError;

const BACKOFF_FIRST: Duration = Duration::from_millis(5);
const BACKOFF_MAX: Duration = Duration::from_millis(100);

/// The instant by which a request must be answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Deadline {
    at: Instant,
}

impl Deadline {
    pub fn after(duration: Duration) -> Self {
        Self { at: Instant::now() + duration }
    }

    /// The earlier of `grpc-timeout` (when present and well-formed) and `default_ms`.
    pub fn for_request(metadata: &MetadataMap, default_ms: u64) -> Self {
        let mut budget = Duration::from_millis(default_ms);
        if let Some(timeout) =
            metadata.get(GRPC_TIMEOUT).and_then(|value| value.to_str().ok()).and_then(parse_grpc_timeout)
        {
            budget = budget.min(timeout);
        }
        Self::after(budget)
    }

    /// Time left; `None` once the deadline has passed.
    pub fn remaining(&self) -> Option<Duration> {
        let now = Instant::now();
        (now < self.at).then(|| self.at - now)
    }

    pub fn is_past(&self) -> bool {
        self.remaining().is_none()
    }
}

/// Metadata key of the caller's deadline.
pub const GRPC_TIMEOUT: &str = "grpc-timeout";

/// Parses a `grpc-timeout` value: at most 8 digits and a unit (`H`, `M`, `S`, `m`, `u`, `n`).
pub fn parse_grpc_timeout(value: &str) -> Option<Duration> {
    if value.len() < 2 || !value.is_ascii() {
        return None;
    }
    let (digits, unit) = value.split_at(value.len() - 1);
    if digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let amount: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(amount * 3_600),
        "M" => Duration::from_secs(amount * 60),
        "S" => Duration::from_secs(amount),
        "m" => Duration::from_millis(amount),
        "u" => Duration::from_micros(amount),
        "n" => Duration::from_nanos(amount),
        _ => return None,
    })
}

/// Whether a failure is about a write (the message tells to retry with the same key) or not.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Purpose {
    Write,
    Read,
}

impl Purpose {
    fn error(self, error: BackendError) -> ApiError {
        match self {
            Purpose::Write => ApiError::Backend(error),
            Purpose::Read => ApiError::BackendRead(error),
        }
    }
}

/// Runs `attempt` until it succeeds, fails for good, or the deadline leaves no time for a
/// retry. Nothing is attempted once the deadline has passed; once something was attempted, a
/// passed deadline reports the last attempt's failure (the cause the caller can act on), never
/// "nothing was submitted".
pub async fn with_retry<T, F, Fut>(
    deadline: Deadline,
    purpose: Purpose,
    what: &str,
    mut attempt: F,
) -> Result<T, ApiError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, BackendError>>,
{
    let mut backoff = BACKOFF_FIRST;
    let mut attempts = 0u32;
    let mut unavailable: Option<String> = None;
    let mut last_failure: Option<BackendError> = None;
    loop {
        let remaining = match (deadline.remaining(), last_failure.take()) {
            (Some(remaining), _) => remaining,
            (None, None) => return Err(ApiError::DeadlinePassed),
            (None, Some(failure)) => return Err(purpose.error(after_attempts(failure, attempts))),
        };
        attempts += 1;
        let error = match tokio::time::timeout(remaining, attempt()).await {
            Ok(Ok(value)) => return Ok(value),
            Ok(Err(error @ (BackendError::DeadlineExceeded(_) | BackendError::Refused(_)))) => {
                return Err(purpose.error(error))
            }
            Ok(Err(error)) => error,
            // Cut short by the deadline after the cluster already said it had no leader: that
            // is the cause the caller can act on (retry with the same key), so say that.
            Err(_elapsed) if unavailable.is_some() => {
                let detail = unavailable.unwrap_or_default();
                return Err(purpose.error(BackendError::Unavailable(format!(
                    "{detail} (after {attempts} attempts within the deadline)"
                ))));
            }
            Err(_elapsed) => {
                return Err(purpose.error(BackendError::DeadlineExceeded(format!(
                    "{what} did not answer within the deadline"
                ))))
            }
        };
        if let BackendError::Unavailable(detail) = &error {
            unavailable = Some(detail.clone());
        }
        match deadline.remaining() {
            Some(left) if left > backoff => {
                tracing::debug!(%error, attempts, "{what}: retrying after {backoff:?}");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(BACKOFF_MAX);
                last_failure = Some(error);
            }
            _ => return Err(purpose.error(after_attempts(error, attempts))),
        }
    }
}

/// A retried failure's message, with how many attempts it took.
fn after_attempts(error: BackendError, attempts: u32) -> BackendError {
    match error {
        BackendError::Unavailable(detail) => {
            BackendError::Unavailable(format!("{detail} (after {attempts} attempts)"))
        }
        BackendError::Overloaded(detail) => {
            BackendError::Overloaded(format!("{detail} (after {attempts} attempts)"))
        }
        other => other,
    }
}

/// One attempt bounded by the deadline, for calls that are not safe to repeat blindly (meta
/// proposals carry no idempotency key).
pub async fn once<T, Fut>(
    deadline: Deadline,
    purpose: Purpose,
    what: &str,
    attempt: Fut,
) -> Result<T, ApiError>
where
    Fut: Future<Output = Result<T, BackendError>>,
{
    let Some(remaining) = deadline.remaining() else {
        return Err(ApiError::DeadlinePassed);
    };
    match tokio::time::timeout(remaining, attempt).await {
        Ok(result) => result.map_err(|error| purpose.error(error)),
        Err(_elapsed) => Err(purpose
            .error(BackendError::DeadlineExceeded(format!("{what} did not answer within the deadline")))),
    }
}

/// Proposes `commands` to one shard, retrying inside the deadline; one outcome per command.
pub async fn submit_to_shard<B: Backend>(
    backend: &B,
    deadline: Deadline,
    shard: u32,
    commands: Vec<Command>,
) -> Result<Vec<CommandOutcome>, ApiError> {
    let expected = commands.len();
    let what = format!("shard {shard}");
    let outcomes =
        with_retry(deadline, Purpose::Write, &what, || backend.submit(shard, commands.clone())).await?;
    if outcomes.len() != expected {
        return Err(ApiError::Internal(format!(
            "shard {shard} answered {} outcomes for {expected} commands",
            outcomes.len()
        )));
    }
    Ok(outcomes)
}

/// Proposes commands that may belong to several shards: one `submit` per shard, all shards
/// concurrently, request order kept within each shard. Returns one result per command, in the
/// order given; a shard that cannot be reached fails only its own commands.
pub async fn submit_grouped<B: Backend>(
    backend: &Arc<B>,
    deadline: Deadline,
    commands: Vec<(u32, Command)>,
) -> Vec<Result<CommandOutcome, ApiError>> {
    let total = commands.len();
    let mut groups: BTreeMap<u32, (Vec<usize>, Vec<Command>)> = BTreeMap::new();
    for (position, (shard, command)) in commands.into_iter().enumerate() {
        let group = groups.entry(shard).or_default();
        group.0.push(position);
        group.1.push(command);
    }
    let mut results: Vec<Option<Result<CommandOutcome, ApiError>>> = (0..total).map(|_| None).collect();
    let mut place = |positions: Vec<usize>, answer: Result<Vec<CommandOutcome>, ApiError>| match answer {
        Ok(outcomes) => {
            for (position, outcome) in positions.into_iter().zip(outcomes) {
                results[position] = Some(Ok(outcome));
            }
        }
        Err(error) => {
            for position in positions {
                results[position] = Some(Err(error.clone()));
            }
        }
    };
    if groups.len() == 1 {
        // One shard: no task to spawn.
        let (shard, (positions, commands)) = groups.pop_first().expect("one group");
        place(positions, submit_to_shard(backend.as_ref(), deadline, shard, commands).await);
    } else {
        let mut tasks = JoinSet::new();
        for (shard, (positions, commands)) in groups {
            let backend = Arc::clone(backend);
            tasks.spawn(async move {
                let answer = submit_to_shard(backend.as_ref(), deadline, shard, commands).await;
                (positions, answer)
            });
        }
        while let Some(joined) = tasks.join_next().await {
            match joined {
                Ok((positions, answer)) => place(positions, answer),
                Err(error) => tracing::error!(%error, "a shard submission task failed"),
            }
        }
    }
    results
        .into_iter()
        .map(|result| {
            result.unwrap_or_else(|| Err(ApiError::Internal("a shard submission task failed".to_string())))
        })
        .collect()
}

/// A partner's command, the shard it is applied on and the member that routes it there.
#[derive(Clone, Debug)]
pub struct KeyedCommand {
    pub shard: u32,
    pub member_id: MemberId,
    pub command: Command,
}

/// Proposes partner commands whose idempotency keys are scoped per partner, not per shard.
///
/// A key belongs to one home shard (`home_shard_of_key`). A command applied on its key's home
/// shard is deduplicated there as usual. Any other command first claims its key on the home
/// shard (`Operation::ClaimKey`, all claims of a call in one round, one `submit` per home
/// shard) and is proposed to its own shard only once the claim is granted or replayed; a claim
/// the home shard refuses (the key serves another request) is the command's answer, so the
/// request changes nothing. A retry repeats the claim, which replays, then the command, which
/// replays or, if the first attempt stopped between the two, is applied now.
///
/// Returns one result per command, in the order given.
pub async fn submit_claimed<B: Backend>(
    backend: &Arc<B>,
    deadline: Deadline,
    commands: Vec<KeyedCommand>,
) -> Vec<Result<CommandOutcome, ApiError>> {
    let shard_count = backend.shard_count();
    let mut claims = Vec::new();
    let mut claim_of = Vec::with_capacity(commands.len());
    for keyed in &commands {
        let command = &keyed.command;
        let home = home_shard_of_key(&command.partner_id, &command.idempotency_key, shard_count);
        if home == keyed.shard {
            claim_of.push(None);
            continue;
        }
        claim_of.push(Some(claims.len()));
        claims.push((
            home,
            Command {
                partner_id: command.partner_id.clone(),
                idempotency_key: command.idempotency_key.clone(),
                operation: Operation::claim_key(keyed.member_id.clone(), command.operation.clone()),
            },
        ));
    }
    let mut claim_answers: Vec<Option<Result<CommandOutcome, ApiError>>> = if claims.is_empty() {
        Vec::new()
    } else {
        submit_grouped(backend, deadline, claims).await.into_iter().map(Some).collect()
    };

    let mut results: Vec<Option<Result<CommandOutcome, ApiError>>> = Vec::with_capacity(commands.len());
    let mut granted = Vec::new();
    let mut granted_positions = Vec::new();
    for (position, (keyed, claim)) in commands.into_iter().zip(claim_of).enumerate() {
        let answer = claim.map(|index| claim_answers[index].take().expect("one answer per claim"));
        match answer {
            None | Some(Ok(CommandOutcome { result: Ok(OperationResult::KeyClaimed), .. })) => {
                granted_positions.push(position);
                granted.push((keyed.shard, keyed.command));
                results.push(None);
            }
            Some(Ok(refused @ CommandOutcome { result: Err(_), .. })) => results.push(Some(Ok(refused))),
            Some(Ok(other)) => results.push(Some(Err(ApiError::Internal(format!(
                "the claim of key {} was answered {:?}",
                keyed.command.idempotency_key, other.result
            ))))),
            Some(Err(error)) => results.push(Some(Err(error))),
        }
    }
    if !granted.is_empty() {
        for (position, answer) in
            granted_positions.into_iter().zip(submit_grouped(backend, deadline, granted).await)
        {
            results[position] = Some(answer);
        }
    }
    results.into_iter().map(|result| result.expect("every command answered")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeouts() {
        assert_eq!(parse_grpc_timeout("250m"), Some(Duration::from_millis(250)));
        assert_eq!(parse_grpc_timeout("3S"), Some(Duration::from_secs(3)));
        assert_eq!(parse_grpc_timeout("1H"), Some(Duration::from_secs(3_600)));
        assert_eq!(parse_grpc_timeout("99999999n"), Some(Duration::from_nanos(99_999_999)));
        for bad in ["", "m", "123456789m", "10x", "-1m", "1.5S"] {
            assert_eq!(parse_grpc_timeout(bad), None, "{bad}");
        }
    }

    #[tokio::test]
    async fn retries_unavailable_until_the_deadline() {
        let mut calls = 0;
        let result: Result<(), ApiError> =
            with_retry(Deadline::after(Duration::from_millis(60)), Purpose::Write, "shard 0", || {
                calls += 1;
                async { Err(BackendError::Unavailable("no leader".into())) }
            })
            .await;
        let error = result.unwrap_err();
        assert_eq!(error.code(), tonic::Code::Unavailable);
        assert!(calls >= 3, "{calls}");
    }

    #[tokio::test]
    async fn a_hanging_attempt_after_unavailable_answers_unavailable() {
        // A leader that lost its quorum never answers: the first attempt reports no leader,
        // the second hangs until the deadline; the caller learns the cause, not just a timeout.
        let mut calls = 0;
        let result: Result<(), ApiError> =
            with_retry(Deadline::after(Duration::from_millis(80)), Purpose::Write, "shard 0", || {
                calls += 1;
                let first = calls == 1;
                async move {
                    if first {
                        Err(BackendError::Unavailable("shard-0 has no reachable leader with a quorum".into()))
                    } else {
                        std::future::pending().await
                    }
                }
            })
            .await;
        let error = result.unwrap_err();
        assert_eq!(error.code(), tonic::Code::Unavailable);
        assert!(error.to_string().contains("no reachable leader with a quorum"), "{error}");
        // Without an earlier answer, a hang is a deadline.
        let result: Result<(), ApiError> =
            with_retry(Deadline::after(Duration::from_millis(20)), Purpose::Write, "shard 0", || {
                std::future::pending::<Result<(), BackendError>>()
            })
            .await;
        assert_eq!(result.unwrap_err().code(), tonic::Code::DeadlineExceeded);
    }

    #[tokio::test]
    async fn a_deadline_passing_between_attempts_reports_the_last_failure() {
        // Whatever instant the deadline falls on relative to the pauses, a caller whose
        // request was attempted hears why it failed, not that nothing was submitted.
        for deadline_ms in 1..=40 {
            let result: Result<(), ApiError> = with_retry(
                Deadline::after(Duration::from_millis(deadline_ms)),
                Purpose::Read,
                "shard 0",
                || async {
                    Err(BackendError::Unavailable("shard-0 has no reachable leader with a quorum".into()))
                },
            )
            .await;
            let error = result.unwrap_err();
            assert_eq!(error.code(), tonic::Code::Unavailable, "deadline {deadline_ms} ms: {error}");
            assert!(error.to_string().contains("no reachable leader"), "{error}");
        }
    }

    #[tokio::test]
    async fn nothing_is_attempted_after_the_deadline() {
        let mut calls = 0;
        let result: Result<(), ApiError> =
            with_retry(Deadline::after(Duration::ZERO), Purpose::Write, "x", || {
                calls += 1;
                async { Ok(()) }
            })
            .await;
        assert_eq!(result.unwrap_err(), ApiError::DeadlinePassed);
        assert_eq!(calls, 0);
    }
}
