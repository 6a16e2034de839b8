//! The in-memory state of one shard and the items it is persisted as.
//!
//! The whole working set (accounts, holds, retained keys with their earns, open transfers)
//! lives in memory; statement lines do not (they only grow) and are handed to
//! the storage layer as they are produced. After each batch, [`ChangeSet`] names the items the
//! batch changed, so the storage layer writes exactly those, with the applied log id, in one
//! atomic write.

use std::fmt;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::command::{BalanceView, CommandOutcome, HoldView, Operation, OperationKind, TransferStatus};
use crate::ids::{CurrencyCode, IdempotencyKey, MemberId, PartnerId, TransferId};

/// System accounts exist per currency and per shard; a partner's global figure is their sum
/// over shards.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum SystemAccountKind {
    /// Debited by earns: its negative balance is the points issued and not yet redeemed.
    Issuance,
    /// Credited by redeems and captures.
    Redemption,
    /// The partner's side of exchanges.
    Settlement,
    /// Points between shards during a cross-shard transfer.
    Transit,
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum AccountKey {
    Member { member_id: MemberId, currency: CurrencyCode },
    System { kind: SystemAccountKind, currency: CurrencyCode },
}

impl SystemAccountKind {
    pub fn as_str(self) -> &'static str {
        match self {
            SystemAccountKind::Issuance => "issuance",
            SystemAccountKind::Redemption => "redemption",
            SystemAccountKind::Settlement => "settlement",
            SystemAccountKind::Transit => "transit",
        }
    }
}

impl AccountKey {
    pub fn member(member_id: &MemberId, currency: &CurrencyCode) -> Self {
        AccountKey::Member { member_id: member_id.clone(), currency: currency.clone() }
    }

    pub fn system(kind: SystemAccountKind, currency: &CurrencyCode) -> Self {
        AccountKey::System { kind, currency: currency.clone() }
    }

    pub fn currency(&self) -> &CurrencyCode {
        match self {
            AccountKey::Member { currency, .. } | AccountKey::System { currency, .. } => currency,
        }
    }

    pub fn is_member(&self) -> bool {
        matches!(self, AccountKey::Member { .. })
    }

    /// The account's name as [`fmt::Display`] writes it, built without the formatter: apply
    /// names a counterparty on every statement line (the formatter was 1.7 % of a node's CPU).
    pub fn name(&self) -> String {
        let (kind, member_id, currency) = match self {
            AccountKey::Member { member_id, currency } => ("member", Some(member_id), currency),
            AccountKey::System { kind, currency } => (kind.as_str(), None, currency),
        };
        let member_bytes = member_id.map_or(0, |member_id| member_id.as_str().len() + 1);
        let mut name = String::with_capacity(kind.len() + 1 + member_bytes + currency.as_str().len());
        name.push_str(kind);
        name.push(':');
        if let Some(member_id) = member_id {
            name.push_str(member_id.as_str());
            name.push(':');
        }
        name.push_str(currency.as_str());
        name
    }
}

/// The name statements show as a counterparty: `member:bob:SKYMILES`, `issuance:SKYMILES`.
impl fmt::Display for AccountKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AccountKey::Member { member_id, currency } => write!(f, "member:{member_id}:{currency}"),
            AccountKey::System { kind, currency } => write!(f, "{}:{currency}", kind.as_str()),
        }
    }
}

/// Double entry: an account's balance is `credits_points - debits_points`. Member accounts
/// never have more debits than credits; system accounts may.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Account {
    pub debits_points: u64,
    pub credits_points: u64,
    /// Points reserved by open holds (member accounts only); `held_points <= balance`.
    pub held_points: u64,
    /// Number of statement lines written for this account; the next line's sequence number.
    pub statement_lines: u64,
}

impl Account {
    /// `credits - debits`. Exact for member accounts, which are never in debit; a system
    /// account in debit reads 0 here (use [`Account::net_points`] for those).
    pub fn balance_points(&self) -> u64 {
        self.credits_points.saturating_sub(self.debits_points)
    }

    /// `credits - debits` with its sign, for any account.
    pub fn net_points(&self) -> i128 {
        i128::from(self.credits_points) - i128::from(self.debits_points)
    }

    /// Points a member can spend now: the balance less what open holds reserve.
    pub fn available_points(&self) -> u64 {
        self.balance_points().saturating_sub(self.held_points)
    }
}

impl BalanceView {
    pub fn of(member_id: &MemberId, currency: &CurrencyCode, account: &Account) -> Self {
        BalanceView {
            member_id: member_id.clone(),
            currency: currency.clone(),
            balance_points: account.balance_points(),
            held_points: account.held_points,
            available_points: account.available_points(),
        }
    }
}

/// The stored answer for `(partner, key)`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdempotencyRecord {
    pub operation: Operation,
    /// The first answer, with `replay == false`.
    pub outcome: CommandOutcome,
    /// Log time after which the record is dropped.
    pub expires_at_ms: u64,
}

/// An earn that can still be reversed (kept with its key's [`RetainedRecord`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EarnRecord {
    pub member_id: MemberId,
    pub currency: CurrencyCode,
    pub earned_points: u64,
    pub reversed_points: u64,
    pub expires_at_ms: u64,
}

/// bincode's tag of [`StateItem::Retained`] (its variant index, little-endian u32): a retained
/// item's canonical bytes are this tag followed by the record's encoding, which lets storage
/// lay records out itself and still write what decodes as `StateItem`s.
pub const RETAINED_ITEM_TAG: [u8; 4] = 1u32.to_le_bytes();

/// Names a retained idempotency key in memory: 16 bytes of SHA-256 over the partner id, a zero
/// byte and the key. Fixed-size whatever the key's length, and hashed once per command; the
/// full record it names is compared exactly on every hit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct KeyFingerprint(pub [u8; 16]);

/// The bytes' order, compared as one big-endian integer: the derived order called `memcmp`
/// for every probe of the retained-key index's binary searches (9 % of a follower's CPU
/// under SubmitBatch, with the search itself).
impl Ord for KeyFingerprint {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        u128::from_be_bytes(self.0).cmp(&u128::from_be_bytes(other.0))
    }
}

impl PartialOrd for KeyFingerprint {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl KeyFingerprint {
    pub fn of(partner_id: &PartnerId, key: &IdempotencyKey) -> Self {
        let mut hasher = Sha256::new();
        hasher.update(partner_id.as_str().as_bytes());
        hasher.update([0]);
        hasher.update(key.as_str().as_bytes());
        let digest = hasher.finalize();
        let mut bytes = [0; 16];
        bytes.copy_from_slice(&digest[..16]);
        Self(bytes)
    }
}

impl fmt::Display for KeyFingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.iter().try_for_each(|byte| write!(f, "{byte:02x}"))
    }
}

/// Everything a shard remembers of one idempotency key until its retention ends: the first
/// request and its answer, and the earn it created (which a reversal updates).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetainedRecord {
    pub partner_id: PartnerId,
    pub key: IdempotencyKey,
    pub answer: IdempotencyRecord,
    /// Present when the key's request was a successful earn.
    pub earn: Option<EarnRecord>,
}

impl RetainedRecord {
    pub fn fingerprint(&self) -> KeyFingerprint {
        KeyFingerprint::of(&self.partner_id, &self.key)
    }

    /// Log time after which the whole record is dropped.
    pub fn expires_at_ms(&self) -> u64 {
        self.answer.expires_at_ms
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HoldRecord {
    pub hold: HoldView,
    /// Log time after which a closed hold is forgotten (its key's retention).
    pub forget_at_ms: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransferRecord {
    pub partner_id: PartnerId,
    pub from_member_id: MemberId,
    pub to_member_id: MemberId,
    pub currency: CurrencyCode,
    pub amount_points: u64,
    pub status: TransferStatus,
    pub opened_at_ms: u64,
    /// Log time after which a closed record (or an applied transfer-in marker) is forgotten.
    pub forget_at_ms: u64,
}

/// One line of a member account's statement.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatementLine {
    /// Position in the account's statement, from 0.
    pub sequence: u64,
    pub log_index: u64,
    pub log_time_ms: u64,
    pub partner_id: PartnerId,
    pub idempotency_key: IdempotencyKey,
    pub kind: OperationKind,
    /// The other side of the entry, for example `issuance:SKYMILES` or `member:bob:SKYMILES`.
    pub counterparty: String,
    pub credit_points: u64,
    pub debit_points: u64,
    pub balance_after_points: u64,
}

/// One persisted piece of shard state.
// Items are built one at a time for storage, not kept in bulk, so the size of the largest
// variant costs nothing worth a box in this public shape.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum StateItem {
    Account(AccountKey, Account),
    /// An idempotency key's record (its request, answer and earn).
    Retained(RetainedRecord),
    Hold(PartnerId, IdempotencyKey, HoldRecord),
    /// Source-side records (TransferOut) and destination-side markers (TransferIn) share the
    /// id space: a shard may be both for different transfers but never for one.
    Transfer(TransferId, TransferRecord),
    /// The log time of the last applied batch (log time never goes backwards).
    Clock {
        log_time_ms: u64,
    },
}

/// Names a [`StateItem`]; used for change tracking and, encoded, as the storage key.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum ItemKey {
    Account(AccountKey),
    Retained(KeyFingerprint),
    Hold(PartnerId, IdempotencyKey),
    Transfer(TransferId),
    Clock,
}

impl StateItem {
    pub fn key(&self) -> ItemKey {
        match self {
            StateItem::Account(key, _) => ItemKey::Account(key.clone()),
            StateItem::Retained(record) => ItemKey::Retained(record.fingerprint()),
            StateItem::Hold(partner, key, _) => ItemKey::Hold(partner.clone(), key.clone()),
            StateItem::Transfer(id, _) => ItemKey::Transfer(id.clone()),
            StateItem::Clock { .. } => ItemKey::Clock,
        }
    }

    /// The encoding [`crate::Ledger::digest`] hashes: bincode 1 with default options
    /// (fixed-width little-endian integers), the same on every platform. A store holding the
    /// items can recompute a ledger's digest by hashing these bytes in [`ItemKey`] order.
    pub fn canonical_bytes(&self) -> Vec<u8> {
        bincode::serialize(self).expect("a state item always encodes")
    }
}

/// What one `apply_batch` changed: the items to rewrite (or delete, when
/// [`Ledger::item`](crate::Ledger::item) no longer has them) and the new statement lines.
#[derive(Clone, Debug, Default)]
pub struct ChangeSet {
    /// In the order apply changed them; an item changed twice is named twice (the store
    /// deduplicates: a push here is cheaper than a set insert for five or so keys a command).
    pub dirty: Vec<ItemKey>,
    pub statement_lines: Vec<(AccountKey, StatementLine)>,
}

impl ChangeSet {
    pub fn clear(&mut self) {
        self.dirty.clear();
        self.statement_lines.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Statement lines store `name()`; statements and docs show the `Display` form.
    #[test]
    fn an_account_name_is_its_display_form() {
        let currency = CurrencyCode::parse("SKYMILES").unwrap();
        let member = MemberId::parse("bob:the-member-with-a-long-id-0123456789").unwrap();
        let mut accounts = vec![AccountKey::member(&member, &currency)];
        for kind in [
            SystemAccountKind::Issuance,
            SystemAccountKind::Redemption,
            SystemAccountKind::Settlement,
            SystemAccountKind::Transit,
        ] {
            accounts.push(AccountKey::system(kind, &currency));
        }
        for account in accounts {
            assert_eq!(account.name(), account.to_string());
        }
        assert_eq!(
            AccountKey::member(&member, &currency).name(),
            "member:bob:the-member-with-a-long-id-0123456789:SKYMILES"
        );
    }

    proptest! {
        /// Storage, buckets and prefix listings rely on fingerprints sorting as their bytes do.
        #[test]
        fn fingerprints_sort_as_their_bytes(
            first in any::<[u8; 16]>(),
            other in any::<[u8; 16]>(),
            shared_bytes in 0usize..=16,
        ) {
            // The second shares a prefix with the first, as neighbours in a bucket do.
            let mut second = other;
            second[..shared_bytes].copy_from_slice(&first[..shared_bytes]);
            prop_assert_eq!(KeyFingerprint(first).cmp(&KeyFingerprint(second)), first.cmp(&second));
            prop_assert_eq!(KeyFingerprint(first).partial_cmp(&KeyFingerprint(second)), Some(first.cmp(&second)));
        }
    }
}
