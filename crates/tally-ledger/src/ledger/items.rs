//! The ledger as persisted items: snapshots, restore, and the digest replicas compare.
//!
//! Items come out in [`ItemKey`] order, which is also the order the digest hashes them in, so a
//! storage layer holding the same items can recompute the same digest without a `Ledger`.

use serde::Serialize;
use sha2::{Digest, Sha256};

use super::Ledger;
use crate::ids::{IdempotencyKey, PartnerId, TransferId};
use crate::state::{Account, AccountKey, ChangeSet, HoldRecord, ItemKey, StateItem, TransferRecord};

/// A borrowed [`StateItem`]: serializes to exactly the same bytes, so the digest needs no
/// copy of the state. A retained record is held encoded already: the digest hashes the
/// variant's tag and those bytes (see [`RETAINED_TAG`]), and it is never serialized from here.
#[derive(Serialize)]
#[serde(rename = "StateItem")]
enum ItemRef<'a> {
    Account(&'a AccountKey, &'a Account),
    #[serde(skip)]
    Retained(&'a [u8]),
    Hold(&'a PartnerId, &'a IdempotencyKey, &'a HoldRecord),
    Transfer(&'a TransferId, &'a TransferRecord),
    Clock {
        log_time_ms: u64,
    },
}

impl ItemRef<'_> {
    fn to_item(&self) -> StateItem {
        match *self {
            ItemRef::Account(key, account) => StateItem::Account(key.clone(), account.clone()),
            ItemRef::Retained(encoded) => StateItem::Retained(
                bincode::deserialize(encoded)
                    .expect("a retained record decodes: memory holds what it encoded"),
            ),
            ItemRef::Hold(partner_id, key, record) => {
                StateItem::Hold(partner_id.clone(), key.clone(), record.clone())
            }
            ItemRef::Transfer(id, record) => StateItem::Transfer(id.clone(), record.clone()),
            ItemRef::Clock { log_time_ms } => StateItem::Clock { log_time_ms },
        }
    }
}

use crate::state::RETAINED_ITEM_TAG as RETAINED_TAG;

impl Ledger {
    /// Visits every item in [`ItemKey`] order.
    fn for_each_item(&self, mut visit: impl FnMut(ItemRef<'_>)) {
        for (key, account) in self.accounts.sorted() {
            visit(ItemRef::Account(key, account));
        }
        for (_, encoded) in self.retained.sorted_encoded() {
            visit(ItemRef::Retained(&encoded));
        }
        for ((partner_id, key), record) in self.holds.sorted() {
            visit(ItemRef::Hold(partner_id, key, record));
        }
        for (id, record) in self.transfers.sorted() {
            visit(ItemRef::Transfer(id, record));
        }
        visit(ItemRef::Clock { log_time_ms: self.log_time_ms });
    }

    /// Every item of the state, in a deterministic order (for snapshots and digests).
    pub fn items(&self) -> Vec<StateItem> {
        let count = self.accounts.len() + self.retained.len() + self.holds.len();
        let mut items = Vec::with_capacity(count + self.transfers.len() + 1);
        self.for_each_item(|item| items.push(item.to_item()));
        items
    }

    /// SHA-256 over every item's [`StateItem::canonical_bytes`], in [`Ledger::items`] order:
    /// equal on replicas at the same applied index.
    pub fn digest(&self) -> [u8; 32] {
        let mut hasher = Sha256::new();
        self.for_each_item(|item| match item {
            ItemRef::Retained(encoded) => {
                hasher.update(RETAINED_TAG);
                hasher.update(encoded);
            }
            item => bincode::serialize_into(&mut hasher, &item).expect("a state item always encodes"),
        });
        hasher.finalize().into()
    }

    /// The current value of one item, or `None` if it no longer exists.
    pub fn item(&self, key: &ItemKey) -> Option<StateItem> {
        let item = match key {
            ItemKey::Account(account_key) => ItemRef::Account(account_key, self.accounts.get(account_key)?),
            ItemKey::Retained(fingerprint) => return self.retained.get(fingerprint).map(StateItem::Retained),
            ItemKey::Hold(partner_id, key) => {
                ItemRef::Hold(partner_id, key, self.holds.get(&(partner_id.clone(), key.clone()))?)
            }
            ItemKey::Transfer(id) => ItemRef::Transfer(id, self.transfers.get(id)?),
            ItemKey::Clock => ItemRef::Clock { log_time_ms: self.log_time_ms },
        };
        Some(item.to_item())
    }

    /// Rebuilds a ledger, indexes included, from persisted items (any order; a later item with
    /// the same key wins). It does not audit them: call [`Ledger::check_invariants`] to.
    pub fn from_items(items: impl IntoIterator<Item = StateItem>) -> Self {
        let mut ledger = Ledger::new();
        // Loading is not a change to persist; the put helpers record one anyway.
        let mut scratch = ChangeSet::default();
        for item in items {
            match item {
                StateItem::Account(key, account) => {
                    ledger.accounts.insert(key, account);
                }
                StateItem::Retained(record) => ledger.put_retained(record, &mut scratch),
                StateItem::Hold(partner_id, key, record) => {
                    ledger.put_hold((partner_id, key), record, &mut scratch)
                }
                StateItem::Transfer(id, record) => ledger.put_transfer(id, record, &mut scratch),
                StateItem::Clock { log_time_ms } => ledger.log_time_ms = log_time_ms,
            }
            scratch.clear();
        }
        ledger
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::{CommandOutcome, HoldStatus, HoldView, Operation, OperationResult, TransferStatus};
    use crate::ids::{CurrencyCode, MemberId};
    use crate::state::{EarnRecord, IdempotencyRecord, RetainedRecord, SystemAccountKind};

    fn sample_items() -> Vec<StateItem> {
        let partner_id = PartnerId::parse("skyair").unwrap();
        let key = IdempotencyKey::parse("k1").unwrap();
        let member_id = MemberId::parse("alice").unwrap();
        let currency = CurrencyCode::parse("SKYMILES").unwrap();
        let outcome = CommandOutcome {
            result: Ok(OperationResult::Enrolled {
                balance: crate::BalanceView::of(&member_id, &currency, &Account::default()),
            }),
            replay: false,
            log_index: 3,
            log_time_ms: 4,
        };
        let hold = HoldView {
            hold_key: key.clone(),
            member_id: member_id.clone(),
            currency: currency.clone(),
            authorized_points: 5,
            captured_points: 0,
            expires_at_ms: 6,
            status: HoldStatus::Open,
        };
        vec![
            StateItem::Account(AccountKey::system(SystemAccountKind::Transit, &currency), Account::default()),
            StateItem::Retained(RetainedRecord {
                partner_id: partner_id.clone(),
                key: key.clone(),
                answer: IdempotencyRecord {
                    operation: Operation::Enrol { member_id: member_id.clone(), currency: currency.clone() },
                    outcome,
                    expires_at_ms: 9,
                },
                earn: Some(EarnRecord {
                    member_id: member_id.clone(),
                    currency: currency.clone(),
                    earned_points: 1,
                    reversed_points: 0,
                    expires_at_ms: 9,
                }),
            }),
            StateItem::Hold(partner_id.clone(), key, HoldRecord { hold, forget_at_ms: 7 }),
            StateItem::Transfer(
                TransferId::parse("t1").unwrap(),
                TransferRecord {
                    partner_id,
                    from_member_id: member_id.clone(),
                    to_member_id: member_id,
                    currency,
                    amount_points: 8,
                    status: TransferStatus::Open,
                    opened_at_ms: 1,
                    forget_at_ms: u64::MAX,
                },
            ),
            StateItem::Clock { log_time_ms: 11 },
        ]
    }

    /// The digest hashes borrowed items; they must encode exactly like the owned ones a store
    /// would hash.
    #[test]
    fn borrowed_items_encode_like_owned_items() {
        let ledger = Ledger::from_items(sample_items());
        let mut visited = 0;
        ledger.for_each_item(|item| {
            let owned = item.to_item();
            let borrowed_bytes = match item {
                ItemRef::Retained(encoded) => [&RETAINED_TAG[..], encoded].concat(),
                item => bincode::serialize(&item).unwrap(),
            };
            assert_eq!(borrowed_bytes, owned.canonical_bytes());
            let decoded: StateItem = bincode::deserialize(&owned.canonical_bytes()).unwrap();
            assert_eq!(decoded, owned);
            visited += 1;
        });
        assert_eq!(visited, sample_items().len());
        assert_eq!(ledger.items(), sample_items());
    }
}
