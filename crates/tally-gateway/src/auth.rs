//! Authentication: the `authorization: Bearer <api key>` metadata names a partner.
//!
//! The cluster keeps only the hex SHA-256 of each key (in the meta group). The gateway indexes
//! the partners by that digest once per meta state ([`ApiKeyIndex`]), and a call costs one
//! SHA-256 of the presented key and one hash-map lookup, whatever the number of partners. The
//! lookup's timing depends on the digest, never on how many bytes of a stored key matched, so
//! it tells an attacker nothing they could use to build a key.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

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

/// The partners of one meta state by the SHA-256 of their API key.
#[derive(Debug, Default)]
pub struct ApiKeyIndex {
    callers: HashMap<[u8; 32], Caller>,
}

impl ApiKeyIndex {
    /// Indexes `meta`'s partners (a stored digest that is not 64 hex digits matches no key).
    pub fn build(meta: &MetaState) -> ApiKeyIndex {
        let mut callers = HashMap::with_capacity(meta.partners.len());
        for partner in meta.partners.values() {
            let mut digest = [0u8; 32];
            if hex::decode_to_slice(partner.api_key_sha256.as_bytes(), &mut digest).is_ok() {
                callers.insert(
                    digest,
                    Caller { partner_id: partner.partner_id.clone(), currency: partner.currency.clone() },
                );
            }
        }
        ApiKeyIndex { callers }
    }

    /// Finds the partner whose API key the request carries.
    pub fn authenticate(&self, metadata: &MetadataMap) -> Result<Caller, ApiError> {
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
        let presented: [u8; 32] = Sha256::digest(api_key.as_bytes()).into();
        self.callers.get(&presented).cloned().ok_or_else(|| {
            ApiError::Unauthenticated(
                "API key not recognised: check the key you send as `authorization: Bearer <api key>`; \
                 a rotated key stops working at once, so ask your operator for the current one"
                    .to_string(),
            )
        })
    }
}

/// The index of the latest meta state seen, rebuilt when the meta state changes (a partner
/// created or a key rotated makes a new `MetaState`).
#[derive(Default)]
pub(crate) struct ApiKeyCache {
    latest: Mutex<Option<(Arc<MetaState>, Arc<ApiKeyIndex>)>>,
}

impl ApiKeyCache {
    pub(crate) fn index(&self, meta: &Arc<MetaState>) -> Arc<ApiKeyIndex> {
        let mut latest = self.latest.lock().expect("API key cache lock poisoned");
        match &*latest {
            Some((indexed, index)) if Arc::ptr_eq(indexed, meta) => index.clone(),
            _ => {
                let index = Arc::new(ApiKeyIndex::build(meta));
                *latest = Some((meta.clone(), index.clone()));
                index
            }
        }
    }
}

/// Finds the partner whose API key the request carries (indexing `meta` for this one call; the
/// services use an `ApiKeyCache`).
pub fn authenticate(meta: &MetaState, metadata: &MetadataMap) -> Result<Caller, ApiError> {
    ApiKeyIndex::build(meta).authenticate(metadata)
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

    #[test]
    fn the_cached_index_follows_the_meta_state() {
        let cache = ApiKeyCache::default();
        let before = Arc::new(meta());
        assert!(cache.index(&before).authenticate(&with("Bearer tly_secret")).is_ok());
        assert!(Arc::ptr_eq(&cache.index(&before), &cache.index(&before)), "built once per meta state");
        // A rotated key: a new meta state, so the old key stops working at once.
        let mut rotated = meta();
        rotated.partners.values_mut().next().unwrap().api_key_sha256 = api_key_sha256("tly_rotated");
        let rotated = Arc::new(rotated);
        let error = cache.index(&rotated).authenticate(&with("Bearer tly_secret")).unwrap_err();
        assert_eq!(error.code(), Code::Unauthenticated);
        assert_eq!(
            cache.index(&rotated).authenticate(&with("Bearer tly_rotated")).unwrap().partner_id.as_str(),
            "sky"
        );
        // Digests stored in upper case (hex is case-blind) still match.
        let mut upper = meta();
        upper.partners.values_mut().next().unwrap().api_key_sha256 =
            api_key_sha256("tly_secret").to_uppercase();
        assert!(authenticate(&upper, &with("Bearer tly_secret")).is_ok());
    }
}
