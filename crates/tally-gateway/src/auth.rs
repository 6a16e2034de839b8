//! Authentication: the `authorization: Bearer <api key>` metadata names a partner.
//!
//! The cluster keeps only the hex SHA-256 of each key (in the meta group); the gateway hashes
//! the presented key and compares it with every partner's hash in constant time, so neither
//! the answer's timing nor an early exit tells which bytes matched.

use sha2::{Digest, Sha256};
use tally_ledger::meta::MetaState;
use tally_ledger::{CurrencyCode, PartnerId};
use tonic::metadata::MetadataMap;

use crate::status::ApiError;

/// Metadata key carrying the API key.
pub const AUTHORIZATION: &str = "authorization";

/// The authenticated partner. Its currency is the currency of every operation it sends.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caller {
    pub partner_id: PartnerId,
    pub currency: CurrencyCode,
}

/// Hex SHA-256 of an API key, as stored in the meta group.
pub fn api_key_sha256(api_key: &str) -> String {
    hex::encode(Sha256::digest(api_key.as_bytes()))
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |difference, (x, y)| difference | (x ^ y)) == 0
}

/// Finds the partner whose API key the request carries.
pub fn authenticate(meta: &MetaState, metadata: &MetadataMap) -> Result<Caller, ApiError> {
    let Some(value) = metadata.get(AUTHORIZATION) else {
        return Err(ApiError::Unauthenticated(
            "missing authorization metadata: send `authorization: Bearer <api key>`".to_string(),
        ));
    };
    let malformed = || {
        ApiError::Unauthenticated(
            "malformed authorization metadata: send `authorization: Bearer <api key>`".to_string(),
        )
    };
    let value = value.to_str().map_err(|_| malformed())?.trim();
    let (scheme, api_key) = value.split_once(' ').ok_or_else(malformed)?;
    let api_key = api_key.trim();
    if !scheme.eq_ignore_ascii_case("bearer") || api_key.is_empty() {
        return Err(malformed());
    }
    let presented = api_key_sha256(api_key);
    let mut found = None;
    for partner in meta.partners.values() {
        // No early exit: every stored hash is compared.
        let matches =
            constant_time_eq(presented.as_bytes(), partner.api_key_sha256.to_ascii_lowercase().as_bytes());
        if matches && found.is_none() {
            found = Some(partner);
        }
    }
    let partner = found.ok_or_else(|| {
        ApiError::Unauthenticated(
            "API key not recognised: check the key you send as `authorization: Bearer <api key>`; \
             a rotated key stops working at once, so ask your operator for the current one"
                .to_string(),
        )
    })?;
    Ok(Caller { partner_id: partner.partner_id.clone(), currency: partner.currency.clone() })
}

#[cfg(test)]
mod tests {
    use tally_ledger::meta::Partner;
    use tonic::Code;

    use super::*;

    fn meta() -> MetaState {
        let mut meta = MetaState::default();
        let partner_id = PartnerId::parse("sky").unwrap();
        meta.partners.insert(
            partner_id.clone(),
            Partner {
                partner_id,
                display_name: "Sky".into(),
                currency: CurrencyCode::parse("SKYMILES").unwrap(),
                api_key_sha256: api_key_sha256("tly_secret"),
                created_at_ms: 1,
            },
        );
        meta
    }

    fn with(value: &str) -> MetadataMap {
        let mut metadata = MetadataMap::new();
        metadata.insert(AUTHORIZATION, value.parse().unwrap());
        metadata
    }

    #[test]
    fn accepts_the_right_key() {
        let caller = authenticate(&meta(), &with("Bearer tly_secret")).unwrap();
        assert_eq!(caller.partner_id.as_str(), "sky");
        assert_eq!(caller.currency.as_str(), "SKYMILES");
        assert!(authenticate(&meta(), &with("bearer  tly_secret ")).is_ok());
    }

    #[test]
    fn rejects_missing_malformed_and_wrong_keys() {
        let error = authenticate(&meta(), &MetadataMap::new()).unwrap_err();
        assert_eq!(error.code(), Code::Unauthenticated);
        assert!(error.to_string().starts_with("missing authorization metadata"));
        for value in ["tly_secret", "Basic tly_secret", "Bearer "] {
            assert_eq!(authenticate(&meta(), &with(value)).unwrap_err().code(), Code::Unauthenticated);
        }
        let error = authenticate(&meta(), &with("Bearer tly_other")).unwrap_err();
        assert!(error.to_string().starts_with("API key not recognised"));
    }
}
