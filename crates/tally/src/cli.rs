//! Commands that call a running cluster: partner and agreement administration, status, and a
//! few partner operations for trying Tally from a shell.

use std::fmt::Write as _;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, Context};
use clap::{Args, Subcommand};
use tally_proto::v1::admin_client::AdminClient;
use tally_proto::v1::ledger_client::LedgerClient;
use tally_proto::v1::{
    AgreementTerms, ClusterStatusRequest, CreatePartnerRequest, GetBalanceRequest, ListAgreementsRequest,
    ListPartnersRequest, ListStatementRequest, OperationReply, ReadConsistency, RemoveAgreementRequest,
    RotatePartnerKeyRequest, SetAgreementRequest, StatementOrder,
};
use tonic::metadata::MetadataValue;
use tonic::transport::Channel;

#[derive(Args, Debug, Clone)]
pub struct Connection {
    /// Address of a Tally gateway (or `tally dev`).
    #[arg(long, env = "TALLY_ADDR", default_value = "http://127.0.0.1:50051", global = true)]
    pub addr: String,
}

#[derive(Subcommand, Debug)]
pub enum PartnerCommand {
    /// Create a partner; prints its API key once.
    Create {
        #[arg(long)]
        id: String,
        #[arg(long)]
        currency: String,
        #[arg(long, default_value = "")]
        name: String,
    },
    /// List partners.
    List,
    /// Replace a partner's API key (the old one stops working).
    RotateKey {
        #[arg(long)]
        id: String,
    },
}

#[derive(Subcommand, Debug)]
pub enum AgreementCommand {
    /// Set (create or replace) the exchange agreement from one currency to another.
    Set {
        #[arg(long)]
        from: String,
        #[arg(long)]
        to: String,
        /// Target points per source points, as N/D (for example 1/2 or 3).
        #[arg(long)]
        rate: String,
        #[arg(long, default_value_t = 0)]
        minimum: u64,
        #[arg(long, default_value_t = 0)]
        maximum: u64,
        #[arg(long, default_value_t = 0)]
        block_size: u64,
        #[arg(long, default_value_t = 0)]
        fee: u64,
    },
    List,
    Remove {
        #[arg(long)]
        from: String,
        #[arg(long)]
        to: String,
    },
}

/// A partner's credentials and, for writes, the idempotency key; accepted anywhere on the
/// command line.
#[derive(Args, Debug, Clone)]
pub struct PartnerAuth {
    /// The partner's API key (from `tally partner create`), for partner commands.
    #[arg(long, env = "TALLY_API_KEY", global = true, hide_env_values = true)]
    pub api_key: Option<String>,
    /// Idempotency key of a write (a fresh one is made when omitted: pass it to retry), or the
    /// key to look up with `tally operation`.
    #[arg(long, global = true)]
    pub key: Option<String>,
}

impl PartnerAuth {
    pub fn api_key(&self) -> anyhow::Result<&str> {
        self.api_key
            .as_deref()
            .ok_or_else(|| anyhow!("this command acts as a partner: pass --api-key or set TALLY_API_KEY"))
    }
}

pub(crate) async fn channel(connection: &Connection) -> anyhow::Result<Channel> {
    Channel::from_shared(connection.addr.clone()).context("bad --addr")?.connect().await.with_context(|| {
        format!("cannot reach {}; is a gateway (or `tally dev`) running there?", connection.addr)
    })
}

pub(crate) fn status_error(status: tonic::Status) -> anyhow::Error {
    anyhow!("{:?}: {}", status.code(), status.message())
}

pub async fn partner(connection: &Connection, command: PartnerCommand) -> anyhow::Result<()> {
    let mut admin = AdminClient::new(channel(connection).await?);
    match command {
        PartnerCommand::Create { id, currency, name } => {
            let request = CreatePartnerRequest { partner_id: id, display_name: name, currency };
            let reply = admin.create_partner(request).await.map_err(status_error)?.into_inner();
            let partner = reply.partner.unwrap_or_default();
            println!("partner {} issues {}", partner.partner_id, partner.currency);
            println!("api key (shown once): {}", reply.api_key);
        }
        PartnerCommand::List => {
            let reply = admin.list_partners(ListPartnersRequest {}).await.map_err(status_error)?.into_inner();
            println!("{:<24} {:<16} name", "partner", "currency");
            for partner in reply.partners {
                println!("{:<24} {:<16} {}", partner.partner_id, partner.currency, partner.display_name);
            }
        }
        PartnerCommand::RotateKey { id } => {
            let request = RotatePartnerKeyRequest { partner_id: id };
            let reply = admin.rotate_partner_key(request).await.map_err(status_error)?.into_inner();
            println!("new api key (shown once): {}", reply.api_key);
        }
    }
    Ok(())
}

fn parse_rate(rate: &str) -> anyhow::Result<(u64, u64)> {
    let (numerator, denominator) = rate.split_once('/').unwrap_or((rate, "1"));
    let parse =
        |part: &str| part.trim().parse::<u64>().with_context(|| format!("bad rate {rate:?}: use N/D"));
    Ok((parse(numerator)?, parse(denominator)?))
}

pub async fn agreement(connection: &Connection, command: AgreementCommand) -> anyhow::Result<()> {
    let mut admin = AdminClient::new(channel(connection).await?);
    match command {
        AgreementCommand::Set { from, to, rate, minimum, maximum, block_size, fee } => {
            let (rate_numerator, rate_denominator) = parse_rate(&rate)?;
            let terms = AgreementTerms {
                rate_numerator,
                rate_denominator,
                minimum_points: minimum,
                maximum_points: maximum,
                block_size_points: block_size,
                fee_points: fee,
            };
            let request = SetAgreementRequest { from_currency: from, to_currency: to, terms: Some(terms) };
            let agreement = admin.set_agreement(request).await.map_err(status_error)?.into_inner();
            println!("agreement {} -> {} set", agreement.from_currency, agreement.to_currency);
        }
        AgreementCommand::List => {
            let reply =
                admin.list_agreements(ListAgreementsRequest {}).await.map_err(status_error)?.into_inner();
            println!(
                "{:<16} {:<16} {:>12} {:>10} {:>10} {:>8} {:>8}",
                "from", "to", "rate", "min", "max", "block", "fee"
            );
            for agreement in reply.agreements {
                let terms = agreement.terms.unwrap_or_default();
                let rate = format!("{}/{}", terms.rate_numerator, terms.rate_denominator);
                println!(
                    "{:<16} {:<16} {:>12} {:>10} {:>10} {:>8} {:>8}",
                    agreement.from_currency,
                    agreement.to_currency,
                    rate,
                    terms.minimum_points,
                    terms.maximum_points,
                    terms.block_size_points,
                    terms.fee_points
                );
            }
        }
        AgreementCommand::Remove { from, to } => {
            let request = RemoveAgreementRequest { from_currency: from, to_currency: to };
            admin.remove_agreement(request).await.map_err(status_error)?;
            println!("agreement removed");
        }
    }
    Ok(())
}

pub(crate) fn authorized<T>(message: T, api_key: &str) -> anyhow::Result<tonic::Request<T>> {
    let mut request = tonic::Request::new(message);
    let value: MetadataValue<_> =
        format!("Bearer {api_key}").parse().context("API key is not valid metadata")?;
    request.metadata_mut().insert("authorization", value);
    Ok(request)
}

pub(crate) fn fresh_key(prefix: &str) -> String {
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|elapsed| elapsed.as_nanos()).unwrap_or(0);
    format!("cli-{prefix}-{nanos}")
}

pub(crate) fn print_reply(reply: &OperationReply) {
    let replay = if reply.replay { " (replay)" } else { "" };
    println!("{} applied at log index {}{replay}", reply.operation, reply.log_index);
    for balance in &reply.balances {
        println!(
            "  {} {}: balance {} held {} available {}",
            balance.member_id,
            balance.currency,
            balance.balance_points,
            balance.held_points,
            balance.available_points
        );
    }
    if let Some(hold) = &reply.hold {
        let status = tally_proto::v1::HoldStatus::try_from(hold.status)
            .map(|status| status.as_str_name().trim_start_matches("HOLD_STATUS_").to_lowercase())
            .unwrap_or_else(|_| hold.status.to_string());
        println!(
            "  hold {}: {status}, authorized {} captured {} expires at {} ms",
            hold.hold_idempotency_key, hold.authorized_points, hold.captured_points, hold.expires_at_ms
        );
    }
    if reply.operation == "reverse_earn" {
        println!("  reversed {}, {} still reversible", reply.reversed_points, reply.earn_remaining_points);
    }
    if reply.operation == "exchange" {
        println!(
            "  debited {} (fee {}), credited {}",
            reply.debited_points, reply.fee_points, reply.credited_points
        );
    }
    if !reply.transfer_id.is_empty() {
        println!("  transfer id {}", reply.transfer_id);
    }
}

pub async fn balance(
    connection: &Connection,
    api_key: &str,
    member: String,
    stale: bool,
) -> anyhow::Result<()> {
    let mut ledger = LedgerClient::new(channel(connection).await?);
    let consistency = if stale { ReadConsistency::Stale } else { ReadConsistency::Linearizable };
    let message = GetBalanceRequest { member_id: member, consistency: consistency as i32 };
    let reply = ledger.get_balance(authorized(message, api_key)?).await.map_err(status_error)?.into_inner();
    let balance = reply.balance.unwrap_or_default();
    println!(
        "{} {}: balance {} held {} available {} (log index {}{})",
        balance.member_id,
        balance.currency,
        balance.balance_points,
        balance.held_points,
        balance.available_points,
        reply.applied_log_index,
        if reply.linearizable {
            ", linearizable".to_string()
        } else {
            format!(", up to {} ms stale", reply.staleness_bound_ms)
        }
    );
    Ok(())
}

pub async fn statement(
    connection: &Connection,
    api_key: &str,
    member: String,
    oldest_first: bool,
    limit: u32,
) -> anyhow::Result<()> {
    let mut ledger = LedgerClient::new(channel(connection).await?);
    let order = if oldest_first { StatementOrder::OldestFirst } else { StatementOrder::NewestFirst };
    let message = ListStatementRequest {
        member_id: member,
        order: order as i32,
        page_size: limit,
        page_token: String::new(),
    };
    let reply =
        ledger.list_statement(authorized(message, api_key)?).await.map_err(status_error)?.into_inner();
    println!(
        "{:>6} {:>10} {:<16} {:<28} {:>10} {:>10} {:>12}",
        "seq", "log index", "operation", "key", "credit", "debit", "balance"
    );
    for line in &reply.lines {
        println!(
            "{:>6} {:>10} {:<16} {:<28} {:>10} {:>10} {:>12}",
            line.sequence,
            line.log_index,
            line.operation,
            line.idempotency_key,
            line.credit_points,
            line.debit_points,
            line.balance_after_points
        );
    }
    println!("{} of {} lines", reply.lines.len(), reply.total_lines);
    Ok(())
}

/// `tally status`: the cluster's status, with each replica's state digest when
/// `include_state_digests`.
pub async fn status(connection: &Connection, include_state_digests: bool) -> anyhow::Result<()> {
    let mut admin = AdminClient::new(channel(connection).await?);
    let request = ClusterStatusRequest { include_state_digests };
    let reply = admin.cluster_status(request).await.map_err(status_error)?.into_inner();
    // Written at once, and a closed pipe (`tally status | head`) is not an error.
    let mut out = String::new();
    writeln!(
        out,
        "{} shards, replication factor {}, meta leader node {}",
        reply.shard_count, reply.replication_factor, reply.meta_leader_node_id
    )?;
    if !reply.nodes.is_empty() {
        writeln!(out, "{:>5} {:<24} {:<12} groups", "node", "address", "health")?;
        for node in &reply.nodes {
            let health = match (node.reachable, node.healthy) {
                (false, _) => "UNREACHABLE",
                (true, true) => "healthy",
                (true, false) => "degraded",
            };
            let detail = match (node.reachable, node.error.is_empty()) {
                (false, _) => node.error.clone(),
                (true, true) => format!("{:?}", node.hosted_groups),
                // For example a data folder that replaced a member's (refused by its peers).
                (true, false) => format!("{:?} {}", node.hosted_groups, node.error),
            };
            writeln!(out, "{:>5} {:<24} {:<12} {detail}", node.node_id, node.address, health)?;
        }
    }
    if !reply.shards.is_empty() {
        writeln!(out, "{:>5} {:>7} {:>8}  replicas", "shard", "leader", "version")?;
        for shard in &reply.shards {
            writeln!(
                out,
                "{:>5} {:>7} {:>8}  {:?}",
                shard.shard, shard.leader_node_id, shard.placement_version, shard.replicas
            )?;
        }
    }
    writeln!(
        out,
        "{:<10} {:>5} {:<10} {:>7} {:>6} {:>10} {:>10} {:>10} {:>6} {:>9}  digest",
        "group", "node", "role", "leader", "term", "last log", "committed", "applied", "lag", "snapshot"
    )?;
    for group in &reply.groups {
        writeln!(
            out,
            "{:<10} {:>5} {:<10} {:>7} {:>6} {:>10} {:>10} {:>10} {:>6} {:>9}  {}",
            group.group,
            group.node_id,
            group.role,
            group.leader_node_id,
            group.term,
            group.last_log_index,
            group.committed_index,
            group.applied_index,
            group.lag_entries,
            group.snapshot_index,
            if group.state_digest.is_empty() {
                "-"
            } else {
                &group.state_digest[..16.min(group.state_digest.len())]
            }
        )?;
    }
    for total in &reply.currency_totals {
        let conserved =
            if total.debits_points == total.credits_points { "conserved" } else { "NOT CONSERVED" };
        writeln!(
            out,
            "{}: debits {} credits {} ({conserved})",
            total.currency, total.debits_points, total.credits_points
        )?;
    }
    print_ignoring_closed_pipe(&out)
}

/// Prints `text` to stdout; a reader that closed the pipe early is not an error.
fn print_ignoring_closed_pipe(text: &str) -> anyhow::Result<()> {
    use std::io::Write as _;
    match std::io::stdout().lock().write_all(text.as_bytes()) {
        Err(error) if error.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => Ok(other?),
    }
}

#[derive(Subcommand, Debug)]
pub enum ClusterCommand {
    /// Bootstrap a cluster on running, empty nodes (safe to re-run): the meta group, the layout
    /// and every shard on `--replication-factor` nodes, first leaders spread evenly.
    Init {
        /// Node addresses (host:port, comma-separated), as the nodes reach each other.
        #[arg(long, value_delimiter = ',', required = true)]
        nodes: Vec<String>,
        #[arg(long, default_value_t = 3)]
        replication_factor: u32,
        /// How long to wait for every node to answer.
        #[arg(long, default_value_t = 60)]
        wait_secs: u64,
        /// The nodes' cluster token, when they have one.
        #[arg(long, env = "TALLY_CLUSTER_TOKEN", hide_env_values = true)]
        cluster_token: Option<String>,
    },
    /// Add a running, empty node to the cluster (through the gateway at --addr).
    AddNode {
        /// The node's host:port as the other nodes reach it.
        #[arg(long)]
        address: String,
    },
    /// Move every replica off a node, then remove it from the cluster.
    RemoveNode {
        #[arg(long)]
        id: u64,
    },
    /// Move one shard replica from one node to another while the shard keeps serving.
    MoveReplica {
        #[arg(long)]
        shard: u32,
        #[arg(long)]
        from: u64,
        #[arg(long)]
        to: u64,
    },
    /// Move a shard's leadership to another of its replicas.
    MoveLeader {
        #[arg(long)]
        shard: u32,
        #[arg(long)]
        to: u64,
    },
    /// Build a Raft snapshot now on every replica of one shard, or of every group.
    Snapshot {
        #[arg(long)]
        shard: Option<u32>,
    },
}

pub async fn cluster(connection: &Connection, command: ClusterCommand) -> anyhow::Result<()> {
    use tally_proto::v1::{
        AddNodeRequest, MoveLeaderRequest, MoveReplicaRequest, RemoveNodeRequest, TriggerSnapshotRequest,
    };
    if let ClusterCommand::Init { nodes, replication_factor, wait_secs, cluster_token } = command {
        let cluster_token = cluster_token.as_deref().map(crate::settings::parse_cluster_token).transpose()?;
        let cluster = crate::cluster_client::ClusterClient::new(
            nodes.clone(),
            std::time::Duration::from_millis(crate::cluster_client::NODE_CALL_TIMEOUT_MS_DEFAULT),
            cluster_token,
        );
        let steps = crate::cluster_admin::init_cluster(
            &cluster,
            &nodes,
            replication_factor,
            std::time::Duration::from_secs(wait_secs),
        )
        .await
        .map_err(|error| anyhow!("cluster init failed: {error}"))?;
        for step in steps {
            println!("{step}");
        }
        return Ok(());
    }
    let mut admin = AdminClient::new(channel(connection).await?);
    let reply = match command {
        ClusterCommand::Init { .. } => unreachable!("handled above"),
        ClusterCommand::AddNode { address } => admin.add_node(AddNodeRequest { address }).await,
        ClusterCommand::RemoveNode { id } => admin.remove_node(RemoveNodeRequest { node_id: id }).await,
        ClusterCommand::MoveReplica { shard, from, to } => {
            admin.move_replica(MoveReplicaRequest { shard, from_node_id: from, to_node_id: to }).await
        }
        ClusterCommand::MoveLeader { shard, to } => {
            admin.move_leader(MoveLeaderRequest { shard, to_node_id: to }).await
        }
        ClusterCommand::Snapshot { shard } => admin.trigger_snapshot(TriggerSnapshotRequest { shard }).await,
    };
    for step in reply.map_err(status_error)?.into_inner().steps {
        println!("{step}");
    }
    Ok(())
}
