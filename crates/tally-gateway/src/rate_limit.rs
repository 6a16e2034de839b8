//! Per-partner admission rate: one token bucket per partner, refilled continuously, holding
//! at most one second of operations. A request that finds too few tokens is refused whole with
//! RESOURCE_EXHAUSTED before anything is proposed, so a retry with the same keys is safe.
//!
//! Each gateway limits on its own: behind a load balancer with `g` gateways, a partner can reach
//! `g` times the configured rate.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Instant;

use tally_ledger::PartnerId;

use crate::status::ApiError;

/// Tokens are counted in thousandths so that refills between close requests are not lost.
const MILLI: u64 = 1_000;

struct Bucket {
    tokens_milli: u64,
    refilled_at: Instant,
}

pub struct PartnerRateLimiter {
    operations_per_second: u64,
    buckets: Mutex<BTreeMap<PartnerId, Bucket>>,
}

impl PartnerRateLimiter {
    /// `operations_per_second == 0` admits everything.
    pub fn new(operations_per_second: u64) -> Self {
        Self { operations_per_second, buckets: Mutex::new(BTreeMap::new()) }
    }

    /// Takes `operations` tokens from the partner's bucket, or refuses the request.
    pub fn admit(&self, partner_id: &PartnerId, operations: u64, now: Instant) -> Result<(), ApiError> {
        if self.operations_per_second == 0 {
            return Ok(());
        }
        let capacity_milli = self.operations_per_second.saturating_mul(MILLI);
        let wanted_milli = operations.saturating_mul(MILLI);
        if wanted_milli > capacity_milli {
            return Err(ApiError::ResourceExhausted(format!(
                "a request of {operations} operations exceeds partner {partner_id}'s limit of {} operations \
                 per second; split it into smaller batches",
                self.operations_per_second
            )));
        }
        let mut buckets = self.buckets.lock().expect("rate limiter lock poisoned");
        let bucket = buckets
            .entry(partner_id.clone())
            .or_insert(Bucket { tokens_milli: capacity_milli, refilled_at: now });
        let elapsed_us =
            u64::try_from(now.saturating_duration_since(bucket.refilled_at).as_micros()).unwrap_or(u64::MAX);
        // rate tokens per second = rate * MILLI milli-tokens per 1e6 us.
        let refill_milli = elapsed_us.saturating_mul(self.operations_per_second) / MILLI;
        bucket.tokens_milli = bucket.tokens_milli.saturating_add(refill_milli).min(capacity_milli);
        bucket.refilled_at = now;
        if bucket.tokens_milli < wanted_milli {
            let missing_milli = wanted_milli - bucket.tokens_milli;
            let wait_ms = missing_milli.div_ceil(self.operations_per_second);
            return Err(ApiError::ResourceExhausted(format!(
                "partner {partner_id} is over its rate limit of {} operations per second; retry in {wait_ms} ms \
                 with the same idempotency keys",
                self.operations_per_second
            )));
        }
        bucket.tokens_milli -= wanted_milli;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn partner() -> PartnerId {
        PartnerId::parse("skyair").unwrap()
    }

    #[test]
    fn zero_means_unlimited() {
        let limiter = PartnerRateLimiter::new(0);
        let now = Instant::now();
        for _ in 0..10_000 {
            limiter.admit(&partner(), 1_000, now).unwrap();
        }
    }

    #[test]
    fn a_burst_of_one_second_then_the_refill_rate() {
        let limiter = PartnerRateLimiter::new(100);
        let start = Instant::now();
        limiter.admit(&partner(), 60, start).unwrap();
        limiter.admit(&partner(), 40, start).unwrap();
        let refused = limiter.admit(&partner(), 1, start).unwrap_err();
        assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
        assert!(refused.to_string().contains("retry in 10 ms"), "{refused}");
        // 100 ms later, 10 tokens came back.
        let later = start + Duration::from_millis(100);
        limiter.admit(&partner(), 10, later).unwrap();
        assert!(limiter.admit(&partner(), 1, later).is_err());
        // Other partners have their own bucket.
        limiter.admit(&PartnerId::parse("grandhotel").unwrap(), 100, later).unwrap();
    }

    #[test]
    fn a_request_bigger_than_a_second_is_refused_with_advice() {
        let limiter = PartnerRateLimiter::new(100);
        let refused = limiter.admit(&partner(), 101, Instant::now()).unwrap_err();
        assert!(refused.to_string().contains("split it"), "{refused}");
    }
}
