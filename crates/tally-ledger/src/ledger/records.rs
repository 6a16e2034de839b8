//! Record writes and log-time expiry. Every write of a record goes through one `put_*` here,
//! which keeps the expiry indexes and the change set in step with the maps, so expiry reads
//! only what is due and never scans the state.

use super::{Ledger, Slot};
use crate::command::{HoldStatus, TransferStatus};
use crate::ids::TransferId;
use crate::state::{AccountKey, ChangeSet, HoldRecord, ItemKey, RetainedRecord, TransferRecord};

fn hold_item(slot: &Slot) -> ItemKey {
    ItemKey::Hold(slot.0.clone(), slot.1.clone())
}

impl Ledger {
    pub(super) fn put_retained(&mut self, record: RetainedRecord, changes: &mut ChangeSet) {
        assert!(!record.answer.outcome.replay, "the stored outcome is the first answer");
        if let Some(earn) = &record.earn {
            assert!(earn.reversed_points <= earn.earned_points, "an earn is reversed at most once over");
            assert_eq!(earn.expires_at_ms, record.expires_at_ms(), "an earn is retained with its key");
        }
        let fingerprint = self.retained.put(&record);
        changes.dirty.push(ItemKey::Retained(fingerprint));
    }

    pub(super) fn put_hold(&mut self, slot: Slot, record: HoldRecord, changes: &mut ChangeSet) {
        assert!(record.hold.captured_points <= record.hold.authorized_points);
        assert!(
            record.forget_at_ms >= record.hold.expires_at_ms,
            "a hold is forgotten only after it expires"
        );
        let item = hold_item(&slot);
        if let Some((forget_at_ms, expires_at_ms)) =
            self.holds.get(&slot).map(|old| (old.forget_at_ms, old.hold.expires_at_ms))
        {
            self.unschedule_forget(forget_at_ms, &item);
            self.hold_expiry.remove(&(expires_at_ms, slot.clone()));
        }
        self.schedule_forget(record.forget_at_ms, item.clone());
        if record.hold.status == HoldStatus::Open {
            self.hold_expiry.insert((record.hold.expires_at_ms, slot.clone()));
        }
        self.holds.insert(slot, record);
        changes.dirty.push(item);
    }

    pub(super) fn put_transfer(&mut self, id: TransferId, record: TransferRecord, changes: &mut ChangeSet) {
        let item = ItemKey::Transfer(id.clone());
        if let Some(old) = self.transfers.get(&id) {
            self.unschedule_forget(old.forget_at_ms, &item);
        }
        if record.status != TransferStatus::Open {
            self.schedule_forget(record.forget_at_ms, item.clone());
        }
        self.transfers.insert(id, record);
        changes.dirty.push(item);
    }

    /// Runs at the start of every batch, with the batch's log time already set: first releases
    /// holds that expired, then drops records whose retention ended. Holds go first because a
    /// hold's forget time is never before its expiry, so no open hold is ever dropped; a hold
    /// key's retention never ends before the hold is forgotten.
    pub(super) fn expire_due(&mut self, changes: &mut ChangeSet) {
        let now_ms = self.log_time_ms;
        while self.hold_expiry.first().is_some_and(|(expires_at_ms, _)| *expires_at_ms <= now_ms) {
            let Some((_, slot)) = self.hold_expiry.pop_first() else {
                break;
            };
            self.expire_hold(&slot, changes);
        }
        while self.forget.first_key_value().is_some_and(|(forget_at_ms, _)| *forget_at_ms <= now_ms) {
            let Some((_, items)) = self.forget.pop_first() else {
                break;
            };
            for item in items.into_sorted() {
                self.forget_item(&item);
                changes.dirty.push(item);
            }
        }
        self.retained.expire_due(now_ms, |fingerprint| changes.dirty.push(ItemKey::Retained(fingerprint)));
    }

    /// Releases an open hold whose expiry log time has passed; the record stays, as Expired,
    /// so a late capture gets `HoldExpired` rather than `HoldNotFound`.
    pub(super) fn expire_hold(&mut self, slot: &Slot, changes: &mut ChangeSet) {
        let mut record = self.holds.get(slot).cloned().expect("the expiry index names only existing holds");
        assert_eq!(record.hold.status, HoldStatus::Open, "only open holds expire");
        assert!(record.hold.expires_at_ms <= self.log_time_ms, "a hold expires only at its expiry time");
        let account_key = AccountKey::member(&record.hold.member_id, &record.hold.currency);
        self.release_held(&account_key, record.hold.authorized_points, changes);
        record.hold.status = HoldStatus::Expired;
        self.put_hold(slot.clone(), record, changes);
    }

    /// Gives back points an open hold reserved, outside of any posting.
    pub(super) fn release_held(&mut self, key: &AccountKey, amount_points: u64, changes: &mut ChangeSet) {
        let account = self.accounts.get_mut(key).expect("a hold's account exists");
        assert!(account.held_points >= amount_points, "releasing more than {key} holds");
        account.held_points -= amount_points;
        changes.dirty.push(ItemKey::Account(key.clone()));
    }

    fn schedule_forget(&mut self, forget_at_ms: u64, item: ItemKey) {
        self.forget.entry(forget_at_ms).or_default().insert(item);
    }

    fn unschedule_forget(&mut self, forget_at_ms: u64, item: &ItemKey) {
        if let Some(items) = self.forget.get_mut(&forget_at_ms) {
            items.remove(item);
            if items.is_empty() {
                self.forget.remove(&forget_at_ms);
            }
        }
    }

    fn forget_item(&mut self, item: &ItemKey) {
        match item {
            ItemKey::Hold(partner_id, key) => {
                let removed = self.holds.remove(&(partner_id.clone(), key.clone()));
                let removed = removed.expect("the forget index names only existing records");
                assert_ne!(removed.hold.status, HoldStatus::Open, "an open hold still reserves points");
            }
            ItemKey::Transfer(id) => {
                let removed =
                    self.transfers.remove(id).expect("the forget index names only existing records");
                assert_ne!(removed.status, TransferStatus::Open, "an open transfer is never forgotten");
            }
            ItemKey::Account(_) | ItemKey::Clock | ItemKey::Retained(_) => {
                panic!("{item:?} is not in the forget index")
            }
        }
    }
}
