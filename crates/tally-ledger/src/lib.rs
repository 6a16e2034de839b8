//! Tally's ledger domain: the deterministic double-entry state machine of one shard, and the
//! meta group's state (partners, agreements). No I/O, no clock, no async, no floats, no hash
//! map iteration: the same log gives the same state on every replica.
//!
//! Layout:
//! - [`ids`]: validated identifiers (member, partner, currency, idempotency key, transfer).
//! - [`limits`]: every bound, with its reason.
//! - [`command`]: commands, batches and their outcomes.
//! - [`error`]: business errors as values, each with its gRPC status class.
//! - [`state`]: accounts, records and statement lines as persisted items.
//! - [`ledger`]: [`Ledger`], the shard state machine.
//! - [`meta`]: [`MetaState`], partners and exchange agreements.
//! - [`routing`]: which shard a member lives on.

pub mod command;
pub mod error;
pub mod ids;
pub mod keyed;
pub mod ledger;
pub mod limits;
pub mod meta;
pub mod routing;
pub mod state;

pub use command::*;
pub use error::{ErrorCode, LedgerError, ValidationError};
pub use ids::*;
pub use ledger::{CurrencyTotals, Ledger, RecordSlot, RecordSource};
pub use meta::{
    Agreement, ClusterLayout, MetaCommand, MetaError, MetaResult, MetaState, NodeInfo, Partner,
    ShardPlacement,
};
pub use state::*;
