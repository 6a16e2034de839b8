//! `tally`: run a dev cluster, administer partners and agreements, and try the ledger.

use std::process::ExitCode;

/// mimalloc instead of glibc's malloc: the state machine allocates many small strings and
/// records per command, and glibc's malloc/free took about a third of apply's CPU time
/// (measured: `Ledger::apply_batch` 13 µs per earn with glibc, 6.5 µs with mimalloc).
///
/// The `system-allocator` feature keeps glibc's, for heap profilers (heaptrack) that follow
/// malloc and not mimalloc (benches/README.md, "Heap profiles").
#[cfg(not(feature = "system-allocator"))]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc's `purge_delay` option (its position in `mi_option_e`, the same in mimalloc 2 and
/// in mimalloc 3, which libmimalloc-sys 0.1.49 builds by default).
#[cfg(not(feature = "system-allocator"))]
const MIMALLOC_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// How long mimalloc keeps freed memory before giving it back to the OS. mimalloc 2's default
/// (10 ms) made the node give back and fault in again about a gigabyte a second under load (2 MiB
/// transparent huge pages zeroed on every fault: 13 % of the node's CPU in a profile of
/// `tally dev` at 64 callers); a longer delay keeps the steady-state churn in the process
/// (measured with a second: 10,600 → 14,000 earns/s on one shard). 100 ms rather than a
/// second: over 20.4 M SubmitBatch earns into `tally dev` the high-water mark was 2,012 MiB
/// against 2,086, under the 2 GiB the write-path issue asks for, and throughput stayed
/// (SubmitBatch 0.97x, 64 single callers 1.01x, alternated; docs/benchmarks.md). mimalloc 3's
/// own default is a second; the call sets 100 ms whichever is linked.
#[cfg(not(feature = "system-allocator"))]
const ALLOCATOR_PURGE_DELAY_MS: std::ffi::c_long = 100;

/// Sets mimalloc's purge delay, unless `MIMALLOC_PURGE_DELAY` is set in the environment
/// (mimalloc reads it itself): an operator trading throughput for resident memory, or a
/// measurement of that trade (docs/benchmarks.md). Runs first in `main`, before any other
/// thread exists.
#[cfg(not(feature = "system-allocator"))]
#[allow(unsafe_code)] // The one call into mimalloc's C API; it only stores an integer option.
fn tune_allocator() {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_some() {
        return;
    }
    // SAFETY: `mi_option_set` stores a value in mimalloc's option table; no other thread runs
    // yet, and the option is a valid member of mimalloc's enum (index 15 in v2 and v3).
    unsafe { libmimalloc_sys::mi_option_set(MIMALLOC_OPTION_PURGE_DELAY, ALLOCATOR_PURGE_DELAY_MS) };
}

#[cfg(feature = "system-allocator")]
fn tune_allocator() {}

/// Turns transparent huge pages off for this process, unless `MIMALLOC_ALLOW_THP` is set in
/// the environment (mimalloc then does what it says). mimalloc asks the kernel for huge pages
/// on its arenas, and every fault of one (fresh memory, or memory purged and touched again)
/// zeroes 2 MiB at once, most of it for allocations that never use it: in a profile of a
/// follower of a one-shard cluster taking SubmitBatch transfers, 29 % of the node's CPU was
/// the kernel zeroing huge pages (`clear_page_erms` under `do_huge_pmd_anonymous_page`), and
/// none with them off (docs/benchmarks.md). The process-wide switch (`PR_SET_THP_DISABLE`)
/// also covers the arenas mimalloc mapped before `main`, which a mimalloc option set here
/// would not. Runs first in `main`, before any other thread exists.
#[cfg(target_os = "linux")]
#[allow(unsafe_code)] // One prctl call with integer arguments.
fn disable_transparent_huge_pages() {
    if std::env::var_os("MIMALLOC_ALLOW_THP").is_some() {
        return;
    }
    // SAFETY: PR_SET_THP_DISABLE takes integers only and changes a flag of this process; a
    // failure (an old kernel) leaves huge pages on, which costs CPU, not correctness.
    let status = unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) };
    if status != 0 {
        eprintln!("warning: transparent huge pages stay on: prctl(PR_SET_THP_DISABLE) failed");
    }
}

#[cfg(not(target_os = "linux"))]
fn disable_transparent_huge_pages() {}

use clap::{Parser, Subcommand};
use tally::cli::{self, AgreementCommand, ClusterCommand, Connection, PartnerAuth, PartnerCommand};
use tally::operations::{self, Write};
use tally::serve::{init_logging, stop_signal};
use tally::settings::{GatewayFlags, NodeFlags};

#[derive(Parser, Debug)]
#[command(name = "tally", version, about = "Tally: a Raft-replicated ledger for loyalty points")]
struct Cli {
    #[command(flatten)]
    connection: Connection,
    #[command(flatten)]
    auth: PartnerAuth,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run a one-process dev cluster (one node with the meta group and every shard, plus the
    /// gateway) with its data in a local folder.
    Dev(NodeFlags),
    /// Run one node of a multi-node cluster (see cluster/ and docs/operations.md).
    Node(NodeFlags),
    /// Run a gateway (partner and admin API) in front of a multi-node cluster.
    Gateway(GatewayFlags),
    /// Bootstrap and reshape a multi-node cluster (init, add/remove node, move replica or
    /// leader, snapshot).
    #[command(subcommand)]
    Cluster(ClusterCommand),
    /// Manage partners (admin API).
    #[command(subcommand)]
    Partner(PartnerCommand),
    /// Manage exchange agreements (admin API).
    #[command(subcommand)]
    Agreement(AgreementCommand),
    /// Show nodes and their health, shard placement, every replica's Raft state and lag, and
    /// per-currency totals.
    Status {
        /// Also every replica's state digest (equal on replicas at the same applied index). A
        /// digest reads the replica's whole state back, every retained record included:
        /// seconds on a shard holding millions of keys, while its writes wait.
        #[arg(long)]
        digests: bool,
    },
    #[command(flatten)]
    Write(Write),
    /// The stored result of the partner's idempotency key given with --key.
    Operation {
        /// The member the operation concerned (it routes to the member's shard).
        #[arg(long)]
        member: String,
    },
    /// Read a member's balance in the partner's currency.
    Balance {
        #[arg(long)]
        member: String,
        /// Read the local replica without confirming leadership (may be stale).
        #[arg(long)]
        stale: bool,
    },
    /// List a member's statement in the partner's currency.
    Statement {
        #[arg(long)]
        member: String,
        #[arg(long)]
        oldest_first: bool,
        #[arg(long, default_value_t = 20)]
        limit: u32,
    },
}

fn main() -> ExitCode {
    disable_transparent_huge_pages();
    tune_allocator();
    match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime.block_on(run_main()),
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            ExitCode::FAILURE
        }
    }
}

async fn run_main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {}", error_chain(&error));
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes, skipping a cause whose text the message already contains (many
/// error types print their source inside their own message).
fn error_chain(error: &anyhow::Error) -> String {
    let mut message = error.to_string();
    for cause in error.chain().skip(1) {
        let text = cause.to_string();
        if !message.contains(&text) {
            message.push_str(": ");
            message.push_str(&text);
        }
    }
    message
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let Cli { connection, auth, command } = cli;
    match command {
        Command::Dev(flags) => run_dev(flags).await,
        Command::Node(flags) => run_node(flags).await,
        Command::Gateway(flags) => run_gateway(flags).await,
        Command::Cluster(command) => cli::cluster(&connection, command).await,
        Command::Partner(command) => cli::partner(&connection, command).await,
        Command::Agreement(command) => cli::agreement(&connection, command).await,
        Command::Status { digests } => cli::status(&connection, digests).await,
        Command::Write(write) => operations::send(&connection, &auth, write).await,
        Command::Operation { member } => operations::operation(&connection, &auth, member).await,
        Command::Balance { member, stale } => cli::balance(&connection, auth.api_key()?, member, stale).await,
        Command::Statement { member, oldest_first, limit } => {
            cli::statement(&connection, auth.api_key()?, member, oldest_first, limit).await
        }
    }
}

async fn run_dev(flags: NodeFlags) -> anyhow::Result<()> {
    init_logging();
    let settings = flags.load_dev()?;
    let gateway_config = settings.gateway_config();
    let config = settings.node;
    if let Some(metrics_addr) = config.metrics_addr {
        tally_node::metrics::install_exporter(metrics_addr)?;
    }
    let data_dir = config.data_dir.clone();
    let metrics_addr = config.metrics_addr;
    let cluster = tally::dev::start(config, gateway_config).await?;
    println!("tally dev cluster ready");
    println!("  gRPC (partner + admin API): {}", cluster.addr);
    if let Some(metrics_addr) = metrics_addr {
        println!("  metrics: http://{metrics_addr}/metrics");
    }
    println!("  data: {}", data_dir.display());
    println!("next: tally partner create --id skyair --currency SKYMILES --addr http://{}", cluster.addr);
    stop_signal().await;
    println!("stopping");
    cluster.stop().await
}

async fn run_node(flags: NodeFlags) -> anyhow::Result<()> {
    init_logging();
    let settings = flags.load()?;
    let config = settings.node;
    if let Some(metrics_addr) = config.metrics_addr {
        tally_node::metrics::install_exporter(metrics_addr)?;
    }
    let node = tally::node_process::start(config, settings.gateway.node_call_timeout_ms).await?;
    let node_config = node.node.config();
    println!(
        "tally node {} ready on {} (advertised as {}), data in {}",
        node_config.node_id,
        node.addr,
        node_config.advertised(),
        node_config.data_dir.display()
    );
    if node.node.meta_state().layout.is_none() {
        println!(
            "not part of a cluster yet: run `tally cluster init --nodes ...` or `tally cluster add-node`"
        );
    }
    stop_signal().await;
    println!("stopping");
    node.stop().await
}

async fn run_gateway(flags: GatewayFlags) -> anyhow::Result<()> {
    init_logging();
    let settings = flags.load()?;
    if let Some(metrics_addr) = settings.gateway.metrics_addr {
        tally_node::metrics::install_exporter(metrics_addr)?;
    }
    let gateway = tally::gateway_process::start(&settings).await?;
    println!("tally gateway ready on {} (partner + admin API)", gateway.addr);
    stop_signal().await;
    println!("stopping");
    gateway.stop().await
}
