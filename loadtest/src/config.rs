//! What a run does: the workload, its shape, and the proof's knobs.

use std::time::Duration;

use serde::Serialize;

/// A named workload.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Profile {
    /// 90 % Earn, 10 % Redeem.
    EarnHeavy,
    /// AuthorizeHold, then CaptureHold (70 %, whole or partial) or VoidHold (30 %).
    Checkout,
    /// Member-to-member Transfer; `cross_shard_share` of them between members of different shards.
    Gifting,
    /// Exchange between the currencies of neighbouring partners (agreements both ways).
    Exchange,
    /// 40 % earn, 10 % redeem, 20 % checkout, 20 % gifting, 10 % exchange.
    Mixed,
}

impl Profile {
    pub fn name(self) -> &'static str {
        match self {
            Profile::EarnHeavy => "earn-heavy",
            Profile::Checkout => "checkout",
            Profile::Gifting => "gifting",
            Profile::Exchange => "exchange",
            Profile::Mixed => "mixed",
        }
    }

    pub(crate) fn uses_exchange(self) -> bool {
        matches!(self, Profile::Exchange | Profile::Mixed)
    }
}

/// Everything a run needs. `Config::default()` is a 10 s closed-loop earn-heavy run against
/// `http://127.0.0.1:50051`.
#[derive(Clone, Debug, Serialize)]
pub struct Config {
    /// Gateway (partner API) address.
    pub target: String,
    /// Admin API address; `None`: the same as `target`.
    pub admin_target: Option<String>,
    pub profile: Profile,
    /// Partners created for the run (each issues its own currency).
    pub partners: usize,
    /// Members created (enrolled and funded in every partner currency) for the run.
    pub members: usize,
    /// `Some(s)` with s > 0: members are chosen by a Zipf law of exponent s; else uniformly.
    pub zipf_exponent: Option<f64>,
    /// Closed loop: calls in flight. Open loop: the most calls in flight.
    pub concurrency: usize,
    /// `Some(r)`: open loop at r operations per second (latency counted from the intended send
    /// time); `None`: closed loop.
    pub rate: Option<f64>,
    /// Stop after this long (measured phase only).
    #[serde(serialize_with = "ser_duration")]
    pub duration: Option<Duration>,
    /// Stop after about this many operations.
    pub operations: Option<u64>,
    /// Pause between the funding phase and the measured phase, so that the target has
    /// written the funding away (its first checkpoint of tens of thousands of new accounts)
    /// before the clock starts: the measured phase shows the workload, not the setup's tail.
    pub settle_ms: u64,
    /// 1: single calls; N > 1: SubmitBatch of N operations.
    pub batch: usize,
    /// HTTP/2 connections to the gateway.
    pub connections: usize,
    /// Gifting: share of transfers between members of different shards.
    pub cross_shard_share: f64,
    /// Share of acknowledged operations re-sent at once with the same key (must replay).
    pub replay_share: f64,
    /// Share of calls sent first with a short client timeout, then again with the same key.
    pub timeout_share: f64,
    /// That short timeout.
    pub short_timeout_ms: u64,
    /// The timeout of every other call.
    pub request_timeout_ms: u64,
    /// Retries with the same key after an unknown outcome, before leaving it to the resolution.
    pub max_retries: u32,
    /// Points earned by every member in every currency in the funding phase.
    pub initial_points: u64,
    /// `expires_in_ms` of holds (long enough that none expires during the run).
    pub hold_expiry_ms: u64,
    pub seed: u64,
    /// Print a progress line on stderr once a second.
    pub progress: bool,
    /// Prefix of the run's partner and member ids; `None`: random.
    pub run_id: Option<String>,
    /// `Some(ms)`: record a timeline of call attempts (acknowledged, refused, errors by code)
    /// in buckets of `ms` over the measured phase, for unavailability windows.
    pub timeline_bucket_ms: Option<u64>,
    /// Test hook: before the check, earn this many points for this member (index) of partner 0
    /// without recording it in the model, so the proof must fail naming the member. The
    /// per-key check then also counts it as applied although refused, and one never-sent earn
    /// as lost.
    #[serde(skip)]
    pub unrecorded_earn: Option<(usize, u64)>,
}

fn ser_duration<S: serde::Serializer>(value: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    match value {
        Some(d) => s.serialize_some(&d.as_secs_f64()),
        None => s.serialize_none(),
    }
}

/// [`Config::settle_ms`] by default: two checkpoint intervals of a Tally group.
pub const SETTLE_MS_DEFAULT: u64 = 2_000;

impl Default for Config {
    fn default() -> Self {
        Config {
            target: "http://127.0.0.1:50051".into(),
            admin_target: None,
            profile: Profile::EarnHeavy,
            partners: 2,
            members: 10_000,
            zipf_exponent: None,
            concurrency: 32,
            rate: None,
            duration: Some(Duration::from_secs(10)),
            settle_ms: SETTLE_MS_DEFAULT,
            operations: None,
            batch: 1,
            connections: 4,
            cross_shard_share: 0.5,
            replay_share: 0.01,
            timeout_share: 0.001,
            short_timeout_ms: 2,
            request_timeout_ms: 10_000,
            max_retries: 20,
            initial_points: 1_000_000,
            hold_expiry_ms: 3_600_000,
            seed: 1,
            progress: true,
            run_id: None,
            timeline_bucket_ms: None,
            unrecorded_earn: None,
        }
    }
}

impl Config {
    pub(crate) fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(self.partners >= 1, "--partners must be at least 1");
        anyhow::ensure!(self.members >= 2, "--members must be at least 2");
        anyhow::ensure!(self.members <= u32::MAX as usize, "--members is too large");
        anyhow::ensure!(self.partners <= 1000, "--partners is at most 1000");
        anyhow::ensure!(self.concurrency >= 1, "--concurrency must be at least 1");
        anyhow::ensure!(self.connections >= 1, "--connections must be at least 1");
        anyhow::ensure!((1..=10_000).contains(&self.batch), "--batch must be 1 to 10000");
        anyhow::ensure!(
            self.duration.is_some() || self.operations.is_some(),
            "give --duration-secs or --operations"
        );
        for (name, share) in [
            ("--cross-shard-share", self.cross_shard_share),
            ("--replay-share", self.replay_share),
            ("--timeout-share", self.timeout_share),
        ] {
            anyhow::ensure!((0.0..=1.0).contains(&share), "{name} must be between 0 and 1");
        }
        if let Some(rate) = self.rate {
            anyhow::ensure!(rate > 0.0 && rate.is_finite(), "--rate must be positive");
        }
        if self.profile.uses_exchange() {
            anyhow::ensure!(
                self.partners >= 2,
                "the {} profile needs --partners 2 or more",
                self.profile.name()
            );
        }
        if let Some(bucket_ms) = self.timeline_bucket_ms {
            anyhow::ensure!((10..=60_000).contains(&bucket_ms), "--timeline-bucket-ms must be 10 to 60000");
        }
        anyhow::ensure!(
            (1000..=7_776_000_000).contains(&self.hold_expiry_ms),
            "--hold-expiry-ms must be 1000 to 7776000000"
        );
        Ok(())
    }
}
