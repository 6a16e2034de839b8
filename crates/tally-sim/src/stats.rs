//! Counts of what a run injected and did, for the soak table.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Debug, Default)]
pub struct FaultCounters {
    pub drops: AtomicU64,
    pub delays: AtomicU64,
    pub duplicates: AtomicU64,
    pub reorders: AtomicU64,
    pub partitions: AtomicU64,
    pub heals: AtomicU64,
    pub crashes: AtomicU64,
    pub restarts: AtomicU64,
    /// Client requests answered (first answers of a key, including business refusals).
    pub acknowledged: AtomicU64,
    /// Write attempts that failed or went unanswered; each is retried with the same key (by
    /// the gateway's retry loop inside the deadline, or by the client after it).
    pub retries: AtomicU64,
    /// Acknowledged requests sent again on purpose.
    pub resends: AtomicU64,
    pub reads: AtomicU64,
    pub resolved_transfers: AtomicU64,
}

impl FaultCounters {
    pub fn add(&self, counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> Totals {
        let get = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        Totals {
            drops: get(&self.drops),
            delays: get(&self.delays),
            duplicates: get(&self.duplicates),
            reorders: get(&self.reorders),
            partitions: get(&self.partitions),
            heals: get(&self.heals),
            crashes: get(&self.crashes),
            restarts: get(&self.restarts),
            acknowledged: get(&self.acknowledged),
            retries: get(&self.retries),
            resends: get(&self.resends),
            reads: get(&self.reads),
            resolved_transfers: get(&self.resolved_transfers),
        }
    }
}

/// Plain numbers, summed over runs by the soak.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Totals {
    pub drops: u64,
    pub delays: u64,
    pub duplicates: u64,
    pub reorders: u64,
    pub partitions: u64,
    pub heals: u64,
    pub crashes: u64,
    pub restarts: u64,
    pub acknowledged: u64,
    pub retries: u64,
    pub resends: u64,
    pub reads: u64,
    pub resolved_transfers: u64,
}

impl Totals {
    pub fn add(&mut self, other: &Totals) {
        self.drops += other.drops;
        self.delays += other.delays;
        self.duplicates += other.duplicates;
        self.reorders += other.reorders;
        self.partitions += other.partitions;
        self.heals += other.heals;
        self.crashes += other.crashes;
        self.restarts += other.restarts;
        self.acknowledged += other.acknowledged;
        self.retries += other.retries;
        self.resends += other.resends;
        self.reads += other.reads;
        self.resolved_transfers += other.resolved_transfers;
    }

    pub fn rows(&self) -> Vec<(&'static str, u64)> {
        vec![
            ("drops", self.drops),
            ("delays", self.delays),
            ("duplicates", self.duplicates),
            ("reorders", self.reorders),
            ("partitions", self.partitions),
            ("heals", self.heals),
            ("crashes", self.crashes),
            ("restarts", self.restarts),
            ("operations acknowledged", self.acknowledged),
            ("failed attempts retried with the same key", self.retries),
            ("acknowledged re-sent", self.resends),
            ("linearizable reads", self.reads),
            ("transfers finished by the resolver", self.resolved_transfers),
        ]
    }
}

impl fmt::Display for Totals {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self.rows().iter().map(|(name, value)| format!("{name}={value}")).collect();
        f.write_str(&parts.join(" "))
    }
}
