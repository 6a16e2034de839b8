//! Seeded fault-injection simulation of a whole Tally cluster in one process, with an auditor.
//!
//! N nodes x S shards of real Tally code (tally-raft groups on tally-store sled storage in a
//! temporary folder, the real ledger state machine) run in one process; the network between
//! nodes is an in-memory, fault-injecting openraft transport; nodes crash and restart from
//! their data folders; clients drive real ledger commands through the gateway's own submission,
//! cross-shard transfer and resolver code; and an auditor checks the outcome. Every random
//! choice comes from one `u64` seed (see docs/reliability.md for what that does and does not
//! reproduce).
//!
//! Layout:
//! - [`net`]: the simulated network and its faults (drop, delay, duplicate, reorder,
//!   partition).
//! - [`cluster`]: the nodes, their groups and Dbs, crash and restart.
//! - [`backend`]: the gateway's `Backend` over the simulated cluster.
//! - [`workload`]: seeded client plans and the clients that drive them.
//! - [`schedule`]: the seeded schedule of partitions, heals, crashes and restarts.
//! - [`history`]: what clients sent, were answered and read.
//! - [`audit`]: the checks of a finished run.
//! - [`run`]: one run from one seed; [`stats`]: what a run injected.

pub mod audit;
pub mod backend;
pub mod cluster;
pub mod history;
pub mod net;
pub mod run;
pub mod schedule;
pub mod stats;
pub mod workload;

pub use audit::{audit, AuditInput, ReplicaView, Violation, ViolationKind};
pub use run::{run, RunReport, SimConfig};
