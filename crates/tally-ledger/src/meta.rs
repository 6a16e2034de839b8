//! The meta group's state: partners (with hashed API keys) and exchange agreements.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::command::AgreementTerms;
use crate::error::ValidationError;
use crate::ids::{CurrencyCode, PartnerId};
use crate::limits::{AMOUNT_POINTS_MAX, RATE_PART_MAX};

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
    CreatePartner {
        partner_id: PartnerId,
        display_name: String,
        currency: CurrencyCode,
        api_key_sha256: String,
    },
    RotatePartnerKey {
        partner_id: PartnerId,
        api_key_sha256: String,
    },
    SetAgreement {
        from_currency: CurrencyCode,
        to_currency: CurrencyCode,
        terms: AgreementTerms,
    },
    RemoveAgreement {
        from_currency: CurrencyCode,
        to_currency: CurrencyCode,
    },
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
        match command {
            MetaCommand::CreatePartner { partner_id, display_name, currency, api_key_sha256 } => {
                let partner = Partner {
                    partner_id: partner_id.clone(),
                    display_name: display_name.clone(),
                    currency: currency.clone(),
                    api_key_sha256: api_key_sha256.clone(),
                    created_at_ms: log_time_ms,
                };
                self.create_partner(partner).map(MetaResult::PartnerCreated)
            }
            MetaCommand::RotatePartnerKey { partner_id, api_key_sha256 } => {
                let partner = self
                    .partners
                    .get_mut(partner_id)
                    .ok_or_else(|| MetaError::PartnerNotFound(partner_id.to_string()))?;
                partner.api_key_sha256.clone_from(api_key_sha256);
                Ok(MetaResult::PartnerKeyRotated(partner.clone()))
            }
            MetaCommand::SetAgreement { from_currency, to_currency, terms } => {
                let agreement = Agreement {
                    from_currency: from_currency.clone(),
                    to_currency: to_currency.clone(),
                    terms: terms.clone(),
                    updated_at_ms: log_time_ms,
                };
                self.set_agreement(agreement).map(MetaResult::AgreementSet)
            }
            MetaCommand::RemoveAgreement { from_currency, to_currency } => self
                .agreements
                .remove(&(from_currency.clone(), to_currency.clone()))
                .map(MetaResult::AgreementRemoved)
                .ok_or_else(|| MetaError::AgreementNotFound {
                    from_currency: from_currency.to_string(),
                    to_currency: to_currency.to_string(),
                }),
        }
    }

    pub fn partner_by_currency(&self, currency: &CurrencyCode) -> Option<&Partner> {
        self.partners.values().find(|partner| &partner.currency == currency)
    }

    /// The agreement that lets points of `from_currency` become points of `to_currency`.
    pub fn agreement(&self, from_currency: &CurrencyCode, to_currency: &CurrencyCode) -> Option<&Agreement> {
        self.agreements.get(&(from_currency.clone(), to_currency.clone()))
    }

    fn create_partner(&mut self, partner: Partner) -> Result<Partner, MetaError> {
        if self.partners.contains_key(&partner.partner_id) {
            return Err(MetaError::PartnerExists(partner.partner_id.to_string()));
        }
        // One issuer per currency: a partner may only move points of its own currency, so two
        // issuers of one code would each be allowed to spend the other's liability.
        if let Some(issuer) = self.partner_by_currency(&partner.currency) {
            return Err(MetaError::CurrencyTaken {
                currency: partner.currency.to_string(),
                partner_id: issuer.partner_id.to_string(),
            });
        }
        self.partners.insert(partner.partner_id.clone(), partner.clone());
        Ok(partner)
    }

    fn set_agreement(&mut self, agreement: Agreement) -> Result<Agreement, MetaError> {
        for currency in [&agreement.from_currency, &agreement.to_currency] {
            if self.partner_by_currency(currency).is_none() {
                return Err(MetaError::CurrencyNotFound(currency.to_string()));
            }
        }
        if agreement.from_currency == agreement.to_currency {
            return Err(MetaError::InvalidAgreement(format!(
                "from_currency and to_currency are both {}; an exchange needs two currencies",
                agreement.from_currency
            )));
        }
        validate_terms(&agreement.terms).map_err(|error| MetaError::InvalidAgreement(error.to_string()))?;
        let pair = (agreement.from_currency.clone(), agreement.to_currency.clone());
        self.agreements.insert(pair, agreement.clone());
        Ok(agreement)
    }
}

/// Checks agreement terms: a positive rate with both parts at most `RATE_PART_MAX`,
/// `minimum <= maximum` when both are set, a fee below the minimum when one is set, and a fee
/// below the maximum when one is set (else no amount could ever be exchanged).
pub fn validate_terms(terms: &AgreementTerms) -> Result<(), ValidationError> {
    check_rate_part("rate_numerator", terms.rate_numerator)?;
    check_rate_part("rate_denominator", terms.rate_denominator)?;
    let (minimum, maximum, fee) = (terms.minimum_points, terms.maximum_points, terms.fee_points);
    if minimum > 0 && maximum > 0 && minimum > maximum {
        return Err(ValidationError::new(
            "maximum_points",
            format!("is {maximum}, below minimum_points {minimum}"),
        ));
    }
    if minimum > 0 && fee >= minimum {
        return Err(ValidationError::new(
            "fee_points",
            format!("is {fee}; it must be below minimum_points {minimum} so any amount converts"),
        ));
    }
    if maximum > 0 && fee >= maximum {
        return Err(ValidationError::new(
            "fee_points",
            format!("is {fee}; it must be below maximum_points {maximum} so some amount converts"),
        ));
    }
    Ok(())
}

fn check_rate_part(field: &str, value: u64) -> Result<(), ValidationError> {
    if value == 0 || value > RATE_PART_MAX {
        return Err(ValidationError::new(field, format!("is {value}; it must be 1 to {RATE_PART_MAX}")));
    }
    Ok(())
}

/// The exchange arithmetic, documented in docs/api.md: `credited = floor((amount - fee) *
/// rate_numerator / rate_denominator)` computed in u128; returns `(fee, credited)` or the
/// reason the amount is outside the agreement.
pub fn exchange_quote(terms: &AgreementTerms, amount_points: u64) -> Result<(u64, u64), String> {
    validate_terms(terms).map_err(|error| format!("the agreement's terms are invalid: {error}"))?;
    check_bounds(terms, amount_points)?;
    let fee_points = terms.fee_points;
    let Some(net_points) = amount_points.checked_sub(fee_points).filter(|net| *net > 0) else {
        return Err(format!(
            "amount {amount_points} does not exceed the agreement's fee of {fee_points} points"
        ));
    };
    // Rounds down: the member never receives a fraction the rate does not cover, so the two
    // settlement accounts never owe each other a point nobody paid for.
    let (numerator, denominator) = (terms.rate_numerator, terms.rate_denominator);
    let credited = u128::from(net_points) * u128::from(numerator) / u128::from(denominator);
    if credited == 0 {
        return Err(format!(
            "amount {amount_points} converts to less than one point at the rate \
             {numerator}/{denominator}"
        ));
    }
    match u64::try_from(credited) {
        Ok(credited_points) if credited_points <= AMOUNT_POINTS_MAX => Ok((fee_points, credited_points)),
        _ => Err(format!(
            "amount {amount_points} converts to {credited} points, above the largest amount in one \
             operation ({AMOUNT_POINTS_MAX}); exchange fewer points"
        )),
    }
}

fn check_bounds(terms: &AgreementTerms, amount_points: u64) -> Result<(), String> {
    let (minimum, maximum, block) = (terms.minimum_points, terms.maximum_points, terms.block_size_points);
    if minimum > 0 && amount_points < minimum {
        return Err(format!("amount {amount_points} is below the agreement's minimum of {minimum}"));
    }
    if maximum > 0 && amount_points > maximum {
        return Err(format!("amount {amount_points} is above the agreement's maximum of {maximum}"));
    }
    if block > 1 && !amount_points.is_multiple_of(block) {
        return Err(format!(
            "amount {amount_points} is not a multiple of the agreement's block size of {block}"
        ));
    }
    Ok(())
}
