//! The meta group's state: partners (with hashed API keys) and exchange agreements.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::command::AgreementTerms;
use crate::ids::{CurrencyCode, PartnerId};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Partner {
    pub partner_id: PartnerId,
    pub display_name: String,
    pub currency: CurrencyCode,
    /// Hex SHA-256 of the API key; the key itself is shown once at creation and never stored.
    pub api_key_sha256: String,
    pub created_at_ms: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Agreement {
    pub from_currency: CurrencyCode,
    pub to_currency: CurrencyCode,
    pub terms: AgreementTerms,
    pub updated_at_ms: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MetaCommand {
    CreatePartner { partner_id: PartnerId, display_name: String, currency: CurrencyCode, api_key_sha256: String },
    RotatePartnerKey { partner_id: PartnerId, api_key_sha256: String },
    SetAgreement { from_currency: CurrencyCode, to_currency: CurrencyCode, terms: AgreementTerms },
    RemoveAgreement { from_currency: CurrencyCode, to_currency: CurrencyCode },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MetaResult {
    PartnerCreated(Partner),
    PartnerKeyRotated(Partner),
    AgreementSet(Agreement),
    AgreementRemoved(Agreement),
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum MetaError {
    #[error("partner {0} already exists")]
    PartnerExists(String),
    #[error("currency {currency} is already issued by partner {partner_id}")]
    CurrencyTaken { currency: String, partner_id: String },
    #[error("no partner {0}")]
    PartnerNotFound(String),
    #[error("no partner issues currency {0}; create the partner first")]
    CurrencyNotFound(String),
    #[error("no exchange agreement from {from_currency} to {to_currency}")]
    AgreementNotFound { from_currency: String, to_currency: String },
    #[error("invalid agreement: {0}")]
    InvalidAgreement(String),
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetaState {
    pub partners: BTreeMap<PartnerId, Partner>,
    pub agreements: BTreeMap<(CurrencyCode, CurrencyCode), Agreement>,
}

impl MetaState {
    pub fn apply(&mut self, log_time_ms: u64, command: &MetaCommand) -> Result<MetaResult, MetaError> {
        let _ = (log_time_ms, command);
        todo!()
    }

    pub fn partner_by_currency(&self, currency: &CurrencyCode) -> Option<&Partner> {
        self.partners.values().find(|partner| &partner.currency == currency)
    }
}

/// Checks agreement terms: a positive rate with both parts at most `RATE_PART_MAX`,
/// `minimum <= maximum` when both are set, a fee below the minimum when one is set.
pub fn validate_terms(terms: &AgreementTerms) -> Result<(), crate::error::ValidationError> {
    let _ = terms;
    todo!()
}

/// The exchange arithmetic, documented in docs/api.md: `credited = floor((amount - fee) *
/// rate_numerator / rate_denominator)` computed in u128; returns `(fee, credited)` or the
/// reason the amount is outside the agreement.
pub fn exchange_quote(terms: &AgreementTerms, amount_points: u64) -> Result<(u64, u64), String> {
    let _ = (terms, amount_points);
    todo!()
}
