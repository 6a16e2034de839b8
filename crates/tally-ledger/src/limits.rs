//! Every bound in Tally, named with its unit last, with the reason it exists.

/// Longest idempotency key. Keys are stored in every idempotency record and statement line.
pub const IDEMPOTENCY_KEY_BYTES_MAX: usize = 128;
/// Longest member id. Member ids are part of every account key.
pub const MEMBER_ID_BYTES_MAX: usize = 128;
/// Longest partner id.
pub const PARTNER_ID_BYTES_MAX: usize = 64;
/// Currency codes are short upper-case tags such as `SKYMILES`.
pub const CURRENCY_CODE_BYTES_MIN: usize = 2;
pub const CURRENCY_CODE_BYTES_MAX: usize = 16;
/// Largest amount in one operation: 10^15 points. Well below `u64::MAX` so that sums of
/// many maximal operations are still far from overflow, and far above any real purchase.
pub const AMOUNT_POINTS_MAX: u64 = 1_000_000_000_000_000;
/// Most operations in one SubmitBatch call.
pub const SUBMIT_BATCH_OPERATIONS_MAX: usize = 10_000;
/// Most commands the proposer packs into one Raft entry.
pub const BATCH_COMMANDS_MAX: usize = 4_096;
/// Most statement lines returned in one page.
pub const STATEMENT_PAGE_LINES_MAX: usize = 1_000;
/// Shortest hold: one second, so that a hold admitted by a gateway is still in the future when
/// the shard applies it (expiry is stamped at admission, checked against log time).
pub const HOLD_DURATION_MS_MIN: u64 = 1_000;
/// Longest hold: 90 days.
pub const HOLD_DURATION_MS_MAX: u64 = 90 * 24 * 3_600_000;
/// Default idempotency retention: 7 days of log time.
pub const IDEMPOTENCY_RETENTION_MS_DEFAULT: u64 = 7 * 24 * 3_600_000;
/// Shortest retention an operator may configure: one hour, so retries inside any sane
/// client deadline are always deduplicated.
pub const IDEMPOTENCY_RETENTION_MS_MIN: u64 = 3_600_000;
/// Exchange rates are integer ratios; both parts are bounded so products fit in u128 easily.
pub const RATE_PART_MAX: u64 = 1_000_000_000;

const _: () = assert!(BATCH_COMMANDS_MAX <= SUBMIT_BATCH_OPERATIONS_MAX);
const _: () = assert!(IDEMPOTENCY_RETENTION_MS_MIN <= IDEMPOTENCY_RETENTION_MS_DEFAULT);
