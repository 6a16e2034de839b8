//! Validated identifiers. Each type can only hold a value that passed its checks, so code
//! below the gateway never re-validates shape.
//!
//! Each holds a [`SmolStr`]: one command's ids are copied into many places (its idempotency
//! record and outcome, earn and hold records, expiry indexes, change sets, statement lines).
//! An id of up to 23 bytes (the usual member id, key, partner and currency) sits inside the
//! value, so a clone is a copy of 24 bytes and a compare reads no other memory; a longer one is
//! an `Arc<str>`, so its clone is a reference count, never an allocation. With `Arc<str>` for
//! every id, the atomic counts and the compares that followed pointers into the heap (in the
//! hash lookups of accounts) were a fifth of a node's CPU under SubmitBatch: see
//! docs/benchmarks.md.
//!
//! Deserializing runs the same checks as `parse`: ids also arrive as bincode (the node API,
//! Raft entries from a leader, values read back from the store), and a decoder must not be a
//! way around validation.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize};
use smol_str::SmolStr;

use crate::error::ValidationError;
use crate::limits::*;

fn check_text(field: &'static str, value: &str, bytes_max: usize) -> Result<(), ValidationError> {
    if value.is_empty() {
        return Err(ValidationError::new(field, "must not be empty"));
    }
    if value.len() > bytes_max {
        return Err(ValidationError::new(
            field,
            format!("is {} bytes long; the limit is {bytes_max}", value.len()),
        ));
    }
    if let Some(position) = value.chars().position(|c| c.is_control()) {
        return Err(ValidationError::new(
            field,
            format!("contains a control character at position {position}"),
        ));
    }
    Ok(())
}

/// Implements `parse` and `Deserialize` through the type's `checked`, so that a decoded id is
/// as valid as a parsed one; serialization stays the plain string (`#[serde(transparent)]`).
/// Decoding goes straight to a [`SmolStr`] (from the borrowed bytes when the decoder lends
/// them), not through a `String` allocated and freed per id.
macro_rules! deserialize_with_parse {
    ($name:ident) => {
        impl $name {
            pub fn parse(value: impl AsRef<str>) -> Result<Self, ValidationError> {
                Self::checked(SmolStr::new(value.as_ref()))
            }
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let value = SmolStr::deserialize(deserializer)?;
                Self::checked(value).map_err(serde::de::Error::custom)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

macro_rules! text_id {
    ($(#[$doc:meta])* $name:ident, $field:literal, $max:expr) => {
        $(#[$doc])*
        #[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
        #[serde(transparent)]
        pub struct $name(SmolStr);

        deserialize_with_parse!($name);

        impl $name {
            fn checked(value: SmolStr) -> Result<Self, ValidationError> {
                check_text($field, &value, $max)?;
                Ok(Self(value))
            }
        }
    };
}

text_id!(
    /// A member of a loyalty program; global across partners (one person, many currencies).
    MemberId, "member_id", MEMBER_ID_BYTES_MAX
);
text_id!(
    /// The caller's key for exactly-once; scoped by partner.
    IdempotencyKey, "idempotency_key", IDEMPOTENCY_KEY_BYTES_MAX
);
text_id!(
    /// Names one cross-shard transfer (derived from the partner and its idempotency key).
    TransferId, "transfer_id", PARTNER_ID_BYTES_MAX + IDEMPOTENCY_KEY_BYTES_MAX + 1
);

/// A partner brand: lower-case letters, digits, `-` and `_`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct PartnerId(SmolStr);

deserialize_with_parse!(PartnerId);

impl PartnerId {
    fn checked(value: SmolStr) -> Result<Self, ValidationError> {
        check_text("partner_id", &value, PARTNER_ID_BYTES_MAX)?;
        if !value.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_') {
            return Err(ValidationError::new(
                "partner_id",
                "may contain only lower-case letters, digits, '-' and '_'",
            ));
        }
        Ok(Self(value))
    }
}

/// A point currency such as `SKYMILES`: upper-case letters, digits and `_`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct CurrencyCode(SmolStr);

deserialize_with_parse!(CurrencyCode);

impl CurrencyCode {
    fn checked(value: SmolStr) -> Result<Self, ValidationError> {
        if value.len() < CURRENCY_CODE_BYTES_MIN || value.len() > CURRENCY_CODE_BYTES_MAX {
            return Err(ValidationError::new(
                "currency",
                format!(
                    "must be {CURRENCY_CODE_BYTES_MIN} to {CURRENCY_CODE_BYTES_MAX} characters, got {}",
                    value.len()
                ),
            ));
        }
        if !value.chars().all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_') {
            return Err(ValidationError::new(
                "currency",
                "may contain only upper-case letters, digits and '_' (for example SKYMILES)",
            ));
        }
        Ok(Self(value))
    }
}

/// Checks an operation amount: at least 1, at most [`AMOUNT_POINTS_MAX`].
pub fn check_amount(field: &'static str, amount_points: u64) -> Result<u64, ValidationError> {
    if amount_points == 0 {
        return Err(ValidationError::new(field, "must be at least 1 point"));
    }
    if amount_points > AMOUNT_POINTS_MAX {
        return Err(ValidationError::new(
            field,
            format!("is {amount_points}; the largest amount in one operation is {AMOUNT_POINTS_MAX}"),
        ));
    }
    Ok(amount_points)
}
