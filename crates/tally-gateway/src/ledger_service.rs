//! The `tally.v1.Ledger` service: authenticate, validate, route, submit, answer.
//!
//! Every write, single or batched, goes through `LedgerService::execute`: each admitted
//! write becomes one command on its member's shard (or the steps of a cross-shard transfer),
//! commands are grouped per shard and each shard gets one `submit` call, shards concurrently.

use std::sync::Arc;

use tally_ledger::meta::MetaState;
use tally_ledger::routing::shard_of_member;
use tally_ledger::{Command, CommandOutcome, IdempotencyKey, LedgerError, Operation, PartnerId};
use tally_proto::v1::ledger_server::Ledger;
use tally_proto::v1::{
    batch_result, AuthorizeHoldRequest, BatchResult, CaptureHoldRequest, EarnRequest, EnrolRequest,
    ExchangeRequest, GetBalanceReply, GetBalanceRequest, GetOperationReply, GetOperationRequest,
    ListStatementReply, ListStatementRequest, OperationReply, RedeemRequest, ReverseEarnRequest,
    SubmitBatchReply, SubmitBatchRequest, TransferRequest, VoidHoldRequest,
};
use tonic::{Request, Response, Status};

use crate::auth::Caller;
use crate::backend::{Backend, BackendError};
use crate::metrics::{observe, record_operation};
use crate::status::{self, ApiError};
use crate::submit::{submit_claimed, with_retry, Deadline, KeyedCommand, Purpose};
use crate::transfer::{self, CrossShardTransfer};
use crate::validate::{self, Action, Write};
use crate::{convert, Shared};

/// The partner API. Build it with [`Gateway::ledger_service`](crate::Gateway::ledger_service).
pub struct LedgerService<B> {
    shared: Arc<Shared<B>>,
}

/// What one admitted write turns into once routed.
enum Planned {
    Rejected(ApiError),
    /// One command; `submission` indexes the commands sent.
    Single {
        name: &'static str,
        shard: u32,
        submission: usize,
    },
    CrossShard {
        transfer: CrossShardTransfer,
        submission: usize,
    },
}

/// Whether two exchanges are the same partner request, ignoring the terms the gateway copies
/// at admission: a client's retry is a replay even though the agreement changed in between.
fn same_partner_request(stored: &Operation, sent: &Operation) -> bool {
    match (stored, sent) {
        (
            Operation::Exchange { member_id: a, from_currency: b, to_currency: c, amount_points: d, .. },
            Operation::Exchange { member_id: w, from_currency: x, to_currency: y, amount_points: z, .. },
        ) => (a, b, c, d) == (w, x, y, z),
        _ => false,
    }
}

impl<B: Backend> LedgerService<B> {
    pub(crate) fn new(shared: Arc<Shared<B>>) -> Self {
        Self { shared }
    }

    fn backend(&self) -> &Arc<B> {
        &self.shared.backend
    }

    /// Deadline, meta state and caller of a request. A key this gateway does not know yet may
    /// belong to a partner created through another gateway a moment ago: the meta state is
    /// read again once (at most every few milliseconds per gateway) before the key is refused.
    async fn begin<R>(&self, request: &Request<R>) -> Result<(Caller, Arc<MetaState>, Deadline), ApiError> {
        let deadline = Deadline::for_request(request.metadata(), self.shared.config.request_deadline_ms);
        let meta = self.backend().meta();
        match self.shared.api_keys.index(&meta).authenticate(request.metadata()) {
            Ok(caller) => Ok((caller, meta, deadline)),
            Err(refused) => {
                if !self.backend().refresh_meta().await {
                    return Err(refused);
                }
                let meta = self.backend().meta();
                let caller = self.shared.api_keys.index(&meta).authenticate(request.metadata())?;
                Ok((caller, meta, deadline))
            }
        }
    }

    /// One write call: authenticate, admit with `admit`, execute.
    async fn write_one<R: Send>(
        &self,
        rpc: &'static str,
        request: Request<R>,
        admit: impl FnOnce(&Caller, &MetaState, &R) -> Result<Write, ApiError> + Send,
    ) -> Result<Response<OperationReply>, Status> {
        observe(rpc, async move {
            let (caller, meta, deadline) = self.begin(&request).await?;
            let write = admit(&caller, &meta, request.get_ref())
                .inspect_err(|error| record_operation(rpc, Err(error)))?;
            if deadline.is_past() {
                return Err(ApiError::DeadlinePassed);
            }
            self.shared.rate_limiter.admit(&caller.partner_id, 1, std::time::Instant::now())?;
            let mut results = self.execute(&caller, deadline, vec![(rpc, Ok(write))]).await;
            results.pop().unwrap_or_else(|| Err(ApiError::Internal("no result".to_string())))
        })
        .await
    }

    /// Routes, submits and answers admitted writes (rejected ones are answered with their
    /// error); one result per write, in order. Counts every operation's result.
    async fn execute(
        &self,
        caller: &Caller,
        deadline: Deadline,
        writes: Vec<(&'static str, Result<Write, ApiError>)>,
    ) -> Vec<Result<OperationReply, ApiError>> {
        let shard_count = self.backend().shard_count();
        let mut submissions: Vec<KeyedCommand> = Vec::new();
        let mut names = Vec::with_capacity(writes.len());
        let mut plans = Vec::with_capacity(writes.len());
        for (name, write) in writes {
            names.push(name);
            plans.push(match write {
                Err(error) => Planned::Rejected(error),
                Ok(write) => self.plan(caller, shard_count, write, &mut submissions),
            });
        }
        let commands: Vec<Command> = submissions.iter().map(|keyed| keyed.command.clone()).collect();
        let mut outcomes: Vec<Option<Result<CommandOutcome, ApiError>>> =
            submit_claimed(self.backend(), deadline, submissions).await.into_iter().map(Some).collect();

        let mut results: Vec<Option<Result<OperationReply, ApiError>>> = Vec::with_capacity(plans.len());
        let mut transfers = Vec::new();
        for (index, plan) in plans.into_iter().enumerate() {
            let taken = |outcomes: &mut Vec<Option<_>>, submission: usize| {
                outcomes[submission].take().expect("one outcome per submission")
            };
            results.push(match plan {
                Planned::Rejected(error) => Some(Err(error)),
                Planned::Single { name, shard, submission } => {
                    let command = &commands[submission];
                    Some(match taken(&mut outcomes, submission) {
                        Ok(outcome) => match self.reconcile(deadline, shard, command, outcome).await {
                            Ok(outcome) => convert::outcome_reply(name, &outcome),
                            Err(error) => Err(error),
                        },
                        Err(error) => Err(error),
                    })
                }
                Planned::CrossShard { transfer, submission } => match taken(&mut outcomes, submission) {
                    Ok(outcome) => {
                        transfers.push((index, transfer, outcome));
                        None
                    }
                    Err(error) => Some(Err(error)),
                },
            });
        }

        if !transfers.is_empty() {
            let (positions, started): (Vec<usize>, Vec<_>) =
                transfers.into_iter().map(|(index, transfer, outcome)| (index, (transfer, outcome))).unzip();
            let finished = transfer::finish(self.backend(), deadline, started).await;
            for (index, result) in positions.into_iter().zip(finished) {
                results[index] = Some(result);
            }
        }

        results
            .into_iter()
            .zip(names)
            .map(|(result, name)| {
                let result = result.unwrap_or_else(|| Err(ApiError::Internal("operation lost".to_string())));
                record_operation(name, result.as_ref().map(|reply| reply.replay));
                result
            })
            .collect()
    }

    /// Routes one admitted write, pushing the command(s) to submit first.
    fn plan(
        &self,
        caller: &Caller,
        shard_count: u32,
        write: Write,
        submissions: &mut Vec<KeyedCommand>,
    ) -> Planned {
        let shard = shard_of_member(&write.member_id, shard_count);
        let name = write.action.name();
        let operation = match write.action {
            Action::Apply(operation) => operation,
            Action::Transfer { to_member_id, currency, amount_points } => {
                let to_shard = shard_of_member(&to_member_id, shard_count);
                if to_shard == shard {
                    Operation::Transfer {
                        from_member_id: write.member_id.clone(),
                        to_member_id,
                        currency,
                        amount_points,
                    }
                } else {
                    let transfer_id = match transfer::transfer_id(&caller.partner_id, &write.idempotency_key)
                    {
                        Ok(id) => id,
                        Err(error) => return Planned::Rejected(error),
                    };
                    let transfer = CrossShardTransfer {
                        transfer_id,
                        partner_id: caller.partner_id.clone(),
                        idempotency_key: write.idempotency_key,
                        from_member_id: write.member_id,
                        to_member_id,
                        currency,
                        amount_points,
                        from_shard: shard,
                        to_shard,
                    };
                    submissions.push(KeyedCommand {
                        shard,
                        member_id: transfer.from_member_id.clone(),
                        command: transfer.out_command(),
                    });
                    return Planned::CrossShard { transfer, submission: submissions.len() - 1 };
                }
            }
        };
        let command = Command {
            partner_id: caller.partner_id.clone(),
            idempotency_key: write.idempotency_key,
            operation,
        };
        submissions.push(KeyedCommand { shard, member_id: write.member_id, command });
        Planned::Single { name, shard, submission: submissions.len() - 1 }
    }

    /// A retried exchange differs from its first attempt when the agreement's terms changed in
    /// between (the gateway copies them at admission); if the shard rejects it as a different
    /// request, answer with the stored outcome of the first attempt when the partner's request
    /// is the same. When that cannot be decided now (the lookup failed or the deadline is
    /// spent) the answer is UNAVAILABLE, "retry with the same key": answering the rejection
    /// would tell the client a request that was applied had been refused.
    async fn reconcile(
        &self,
        deadline: Deadline,
        shard: u32,
        command: &Command,
        outcome: CommandOutcome,
    ) -> Result<CommandOutcome, ApiError> {
        let reusable = matches!(command.operation, Operation::Exchange { .. });
        if !reusable || !matches!(outcome.result, Err(LedgerError::KeyReusedWithDifferentRequest { .. })) {
            return Ok(outcome);
        }
        let lookup = with_retry(deadline, Purpose::Read, "operation lookup", || {
            self.backend().operation(shard, command.partner_id.clone(), command.idempotency_key.clone())
        })
        .await;
        match lookup {
            Ok(Some((stored, mut first))) if same_partner_request(&stored, &command.operation) => {
                first.replay = true;
                Ok(first)
            }
            Ok(_) => Ok(outcome),
            Err(error) => Err(ApiError::Backend(BackendError::Unavailable(format!(
                "the key was used before and whether by this same request could not be checked \
                 ({error})"
            )))),
        }
    }

    fn operation_not_found(&self, partner_id: &PartnerId, key: &IdempotencyKey, member: &str) -> ApiError {
        let hours = self.shared.config.idempotency_retention_ms / 3_600_000;
        ApiError::NotFound(format!(
            "no operation with idempotency key {key} of partner {partner_id} is known on member \
             {member}'s shard: it was never applied there, or it is older than the key retention \
             ({hours} hours)"
        ))
    }
}

#[tonic::async_trait]
impl<B: Backend> Ledger for LedgerService<B> {
    async fn enrol(&self, request: Request<EnrolRequest>) -> Result<Response<OperationReply>, Status> {
        self.write_one("enrol", request, |caller, _, request| validate::enrol(caller, request)).await
    }

    async fn earn(&self, request: Request<EarnRequest>) -> Result<Response<OperationReply>, Status> {
        self.write_one("earn", request, |caller, _, request| validate::earn(caller, request)).await
    }

    async fn redeem(&self, request: Request<RedeemRequest>) -> Result<Response<OperationReply>, Status> {
        self.write_one("redeem", request, |caller, _, request| validate::redeem(caller, request)).await
    }

    async fn reverse_earn(
        &self,
        request: Request<ReverseEarnRequest>,
    ) -> Result<Response<OperationReply>, Status> {
        self.write_one("reverse_earn", request, |caller, _, request| validate::reverse_earn(caller, request))
            .await
    }

    async fn authorize_hold(
        &self,
        request: Request<AuthorizeHoldRequest>,
    ) -> Result<Response<OperationReply>, Status> {
        self.write_one("authorize_hold", request, |caller, _, request| {
            validate::authorize_hold(caller, request)
        })
        .await
    }

    async fn capture_hold(
        &self,
        request: Request<CaptureHoldRequest>,
    ) -> Result<Response<OperationReply>, Status> {
        self.write_one("capture_hold", request, |caller, _, request| validate::capture_hold(caller, request))
            .await
    }

    async fn void_hold(&self, request: Request<VoidHoldRequest>) -> Result<Response<OperationReply>, Status> {
        self.write_one("void_hold", request, |caller, _, request| validate::void_hold(caller, request)).await
    }

    async fn transfer(&self, request: Request<TransferRequest>) -> Result<Response<OperationReply>, Status> {
        self.write_one("transfer", request, |caller, _, request| validate::transfer(caller, request)).await
    }

    async fn exchange(&self, request: Request<ExchangeRequest>) -> Result<Response<OperationReply>, Status> {
        self.write_one("exchange", request, validate::exchange).await
    }

    async fn submit_batch(
        &self,
        request: Request<SubmitBatchRequest>,
    ) -> Result<Response<SubmitBatchReply>, Status> {
        observe("submit_batch", async move {
            let (caller, meta, deadline) = self.begin(&request).await?;
            let batch = request.get_ref();
            validate::batch(batch)?;
            if deadline.is_past() {
                return Err(ApiError::DeadlinePassed);
            }
            let operations = batch.operations.len() as u64;
            self.shared.rate_limiter.admit(&caller.partner_id, operations, std::time::Instant::now())?;
            let writes = batch
                .operations
                .iter()
                .map(|operation| {
                    let name = validate::batch_operation_name(operation);
                    (name, validate::batch_operation(&caller, &meta, operation))
                })
                .collect();
            let results = self.execute(&caller, deadline, writes).await;
            let results = results
                .into_iter()
                .map(|result| BatchResult {
                    result: Some(match result {
                        Ok(reply) => batch_result::Result::Ok(reply),
                        Err(error) => batch_result::Result::Error(status::operation_error(&error)),
                    }),
                })
                .collect();
            Ok(SubmitBatchReply { results })
        })
        .await
    }

    async fn get_balance(
        &self,
        request: Request<GetBalanceRequest>,
    ) -> Result<Response<GetBalanceReply>, Status> {
        observe("get_balance", async move {
            let (caller, _, deadline) = self.begin(&request).await?;
            let member_id = validate::member("member_id", &request.get_ref().member_id)?;
            let consistency = validate::consistency(request.get_ref().consistency)?;
            let shard = shard_of_member(&member_id, self.backend().shard_count());
            let read = with_retry(deadline, Purpose::Read, &format!("shard {shard}"), || {
                self.backend().balance(shard, member_id.clone(), caller.currency.clone(), consistency)
            })
            .await?;
            let Some(balance) = read.balance else {
                return Err(ApiError::NotFound(format!(
                    "member {member_id} has no {} account; enrol the member or earn points first",
                    caller.currency
                )));
            };
            Ok(GetBalanceReply {
                balance: Some(convert::balance(&balance)),
                applied_log_index: read.applied_log_index,
                staleness_bound_ms: read.staleness_bound_ms,
                linearizable: read.linearizable,
            })
        })
        .await
    }

    async fn list_statement(
        &self,
        request: Request<ListStatementRequest>,
    ) -> Result<Response<ListStatementReply>, Status> {
        observe("list_statement", async move {
            let (caller, _, deadline) = self.begin(&request).await?;
            let message = request.get_ref();
            let member_id = validate::member("member_id", &message.member_id)?;
            let page = validate::page(message.order, message.page_size, &message.page_token)?;
            let shard = shard_of_member(&member_id, self.backend().shard_count());
            let mut read = with_retry(deadline, Purpose::Read, &format!("shard {shard}"), || {
                self.backend().statement(
                    shard,
                    member_id.clone(),
                    caller.currency.clone(),
                    page.start_sequence,
                    page.newest_first,
                    page.limit,
                )
            })
            .await?;
            read.lines.truncate(page.limit);
            let next = match read.lines.last() {
                Some(last) if read.lines.len() == page.limit => {
                    if page.newest_first {
                        last.sequence.checked_sub(1)
                    } else {
                        Some(last.sequence + 1).filter(|next| *next < read.total_lines)
                    }
                }
                _ => None,
            };
            Ok(ListStatementReply {
                lines: read.lines.iter().map(convert::statement_line).collect(),
                next_page_token: next.map(|sequence| sequence.to_string()).unwrap_or_default(),
                total_lines: read.total_lines,
            })
        })
        .await
    }

    async fn get_operation(
        &self,
        request: Request<GetOperationRequest>,
    ) -> Result<Response<GetOperationReply>, Status> {
        observe("get_operation", async move {
            let (caller, _, deadline) = self.begin(&request).await?;
            let message = request.get_ref();
            let key = validate::reference_key("idempotency_key", &message.idempotency_key)?;
            let member_id = validate::member("member_id", &message.member_id)?;
            let shard = shard_of_member(&member_id, self.backend().shard_count());
            let found = with_retry(deadline, Purpose::Read, &format!("shard {shard}"), || {
                self.backend().operation(shard, caller.partner_id.clone(), key.clone())
            })
            .await?;
            let Some((operation, outcome)) = found else {
                return Err(self.operation_not_found(&caller.partner_id, &key, member_id.as_str()));
            };
            // This shard is the key's home and only holds the claim of a request for a member
            // on another shard: that member's shard has the operation.
            if let Operation::ClaimKey { member_id: claimed_for, .. } = &operation {
                return Err(ApiError::NotFound(format!(
                    "idempotency key {key} of partner {} is used by a request for member {claimed_for}, \
                     not {member_id}: ask with member_id {claimed_for}",
                    caller.partner_id
                )));
            }
            let name = operation.kind().as_str();
            // The stored answer of an earlier request: a replay by definition.
            Ok(match &outcome.result {
                Ok(result) => GetOperationReply {
                    operation: name.to_string(),
                    result: Some(convert::operation_reply(
                        name,
                        result,
                        true,
                        outcome.log_index,
                        outcome.log_time_ms,
                    )),
                    error: None,
                },
                Err(error) => GetOperationReply {
                    operation: name.to_string(),
                    result: None,
                    error: Some(status::ledger_operation_error(error)),
                },
            })
        })
        .await
    }
}
