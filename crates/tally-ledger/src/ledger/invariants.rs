//! The audit: every property the ledger promises, checked over the whole state. Tests and
//! debug builds run it after every batch; a broken invariant means a bug, never bad input.

use std::collections::{BTreeMap, BTreeSet};

use super::{CurrencyTotals, Ledger};
use crate::command::{HoldStatus, TransferStatus};
use crate::ids::CurrencyCode;
use crate::keyed::KeyedSet;
use crate::state::{AccountKey, ItemKey, KeyFingerprint, RetainedRecord};

impl Ledger {
    pub fn currency_totals(&self) -> BTreeMap<CurrencyCode, CurrencyTotals> {
        let mut totals: BTreeMap<CurrencyCode, CurrencyTotals> = BTreeMap::new();
        for (key, account) in self.accounts.sorted() {
            let total = totals.entry(key.currency().clone()).or_default();
            // u128 sums of u64 counters cannot overflow below 2^64 accounts.
            total.debits_points += u128::from(account.debits_points);
            total.credits_points += u128::from(account.credits_points);
        }
        totals
    }

    /// Checks every invariant; `Err` names the first broken one.
    pub fn check_invariants(&self) -> Result<(), String> {
        self.check_balanced()?;
        self.check_accounts()?;
        self.check_holds()?;
        self.check_records()?;
        self.check_indexes()
    }

    fn check_balanced(&self) -> Result<(), String> {
        for (currency, total) in self.currency_totals() {
            if total.debits_points != total.credits_points {
                return Err(format!(
                    "{currency} is unbalanced: debits {} != credits {}",
                    total.debits_points, total.credits_points
                ));
            }
        }
        Ok(())
    }

    fn check_accounts(&self) -> Result<(), String> {
        for (key, account) in self.accounts.sorted() {
            if key.is_member() && account.credits_points < account.debits_points {
                return Err(format!("member account {key} is negative: {account:?}"));
            }
            if account.held_points > account.balance_points() {
                return Err(format!("account {key} holds more than its balance: {account:?}"));
            }
            if !key.is_member() && (account.held_points != 0 || account.statement_lines != 0) {
                return Err(format!("system account {key} has holds or statement lines: {account:?}"));
            }
        }
        Ok(())
    }

    /// The held points of every account are exactly the open holds on it.
    fn check_holds(&self) -> Result<(), String> {
        let mut held: BTreeMap<AccountKey, u64> = BTreeMap::new();
        for ((partner_id, key), record) in self.holds.sorted() {
            let hold = &record.hold;
            if &hold.hold_key != key || hold.captured_points > hold.authorized_points {
                return Err(format!("hold {partner_id}/{key} is inconsistent: {hold:?}"));
            }
            if (hold.status == HoldStatus::Captured) != (hold.captured_points > 0) {
                return Err(format!(
                    "hold {partner_id}/{key} captured points do not match its status: {hold:?}"
                ));
            }
            if hold.status != HoldStatus::Open {
                continue;
            }
            if hold.expires_at_ms <= self.log_time_ms {
                return Err(format!(
                    "hold {partner_id}/{key} is open past its expiry {}",
                    hold.expires_at_ms
                ));
            }
            let total = held.entry(AccountKey::member(&hold.member_id, &hold.currency)).or_default();
            *total = total.checked_add(hold.authorized_points).ok_or("held points overflow")?;
        }
        for (key, account) in self.accounts.sorted() {
            let open = held.remove(key).unwrap_or(0);
            if open != account.held_points {
                return Err(format!(
                    "account {key} holds {} but its open holds total {open}",
                    account.held_points
                ));
            }
        }
        match held.into_iter().next() {
            Some((key, points)) => Err(format!("open holds of {points} points on missing account {key}")),
            None => Ok(()),
        }
    }

    fn check_records(&self) -> Result<(), String> {
        self.retained.check()?;
        for record in self.retained.sorted_records() {
            let RetainedRecord { partner_id, key, answer, earn } = &record;
            if answer.outcome.replay {
                return Err(format!("idempotency record {partner_id}/{key} stores a replay"));
            }
            if let Some(earn) = earn {
                if earn.reversed_points > earn.earned_points {
                    return Err(format!("earn {partner_id}/{key} reversed more than earned: {earn:?}"));
                }
                if earn.expires_at_ms != answer.expires_at_ms {
                    return Err(format!("earn {partner_id}/{key} is not retained with its key"));
                }
            }
        }
        for ((partner_id, key), _) in self.holds.sorted() {
            if !self.retained.contains(&KeyFingerprint::of(partner_id, key)) {
                return Err(format!("hold {partner_id}/{key} outlived its idempotency record"));
            }
        }
        Ok(())
    }

    /// The expiry indexes name exactly the records that can expire, at their times.
    fn check_indexes(&self) -> Result<(), String> {
        let mut hold_expiry = BTreeSet::new();
        let mut forget: BTreeMap<u64, KeyedSet<ItemKey>> = BTreeMap::new();
        for (slot, record) in self.holds.sorted() {
            forget
                .entry(record.forget_at_ms)
                .or_default()
                .insert(ItemKey::Hold(slot.0.clone(), slot.1.clone()));
            if record.hold.status == HoldStatus::Open {
                hold_expiry.insert((record.hold.expires_at_ms, slot.clone()));
            }
        }
        for (id, record) in self.transfers.sorted() {
            if record.status != TransferStatus::Open {
                forget.entry(record.forget_at_ms).or_default().insert(ItemKey::Transfer(id.clone()));
            }
        }
        if hold_expiry != self.hold_expiry {
            return Err("the hold expiry index does not match the open holds".to_string());
        }
        if forget != self.forget {
            return Err("the forget index does not match the records".to_string());
        }
        Ok(())
    }
}
