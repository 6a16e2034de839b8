//! The cluster token: a secret shared by a cluster's nodes, gateways and operators' CLI, sent
//! with every call of the internal services (the node API and the Raft transport) and checked
//! by the node that serves them.
//!
//! Why: those services trust their caller completely (a node API `Submit` carries a partner id
//! that nothing re-checks, a Raft `AppendEntries` writes the log), so whoever can reach a
//! node's address could otherwise move any partner's points. The token closes that to anyone
//! who does not hold it; it does not encrypt the traffic (TLS on the private network does).
//! A node without a token configured serves the internal services to anyone, as before, and
//! says so in its log when it starts.

use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tonic::metadata::{AsciiMetadataValue, MetadataMap};
use tonic::{Request, Status};

/// The request header that carries the token.
pub const CLUSTER_TOKEN_HEADER: &str = "x-tally-cluster-token";

/// Shortest token accepted: 16 characters of visible ASCII (a random 16-character token from
/// `openssl rand -hex 16` has 64 bits at the least; that command gives 32).
pub const CLUSTER_TOKEN_LENGTH_MIN: usize = 16;

/// Longest token accepted, so that a header stays small.
pub const CLUSTER_TOKEN_LENGTH_MAX: usize = 256;

/// A validated cluster token. Its `Debug` does not show it, so that it stays out of logs;
/// configuration files hold it as a string.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ClusterToken {
    header_value: AsciiMetadataValue,
    text: Arc<str>,
}

impl ClusterToken {
    /// A token of 16 to 256 visible ASCII characters (no spaces or control characters, so
    /// that it is sent as it was typed).
    pub fn parse(text: &str) -> Result<ClusterToken, String> {
        let length = text.len();
        if !(CLUSTER_TOKEN_LENGTH_MIN..=CLUSTER_TOKEN_LENGTH_MAX).contains(&length) {
            return Err(format!(
                "cluster_token is {length} characters long; it must be {CLUSTER_TOKEN_LENGTH_MIN} to \
                 {CLUSTER_TOKEN_LENGTH_MAX} (for example the output of `openssl rand -hex 16`)"
            ));
        }
        if let Some(position) = text.bytes().position(|byte| !byte.is_ascii_graphic()) {
            return Err(format!(
                "cluster_token has a character that is not visible ASCII at position {position}; use \
                 letters, digits and punctuation only"
            ));
        }
        let header_value = AsciiMetadataValue::try_from(text)
            .map_err(|error| format!("cluster_token cannot be sent as a header: {error}"))?;
        Ok(ClusterToken { header_value, text: text.into() })
    }

    /// Puts the token on an outgoing internal call.
    pub fn attach<T>(&self, request: &mut Request<T>) {
        request.metadata_mut().insert(CLUSTER_TOKEN_HEADER, self.header_value.clone());
    }

    /// Whether `presented` is this token, in time that does not depend on where they differ
    /// (so that the token cannot be guessed a character at a time from answer times).
    fn matches(&self, presented: &[u8]) -> bool {
        let expected = self.text.as_bytes();
        let differences = expected
            .iter()
            .zip(presented)
            .fold(0u8, |differences, (left, right)| differences | (left ^ right));
        differences == 0 && expected.len() == presented.len()
    }
}

impl fmt::Debug for ClusterToken {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("ClusterToken(<redacted>)")
    }
}

impl TryFrom<String> for ClusterToken {
    type Error = String;

    fn try_from(text: String) -> Result<ClusterToken, String> {
        ClusterToken::parse(&text)
    }
}

impl From<ClusterToken> for String {
    fn from(token: ClusterToken) -> String {
        token.text.to_string()
    }
}

/// Checks the token of an incoming internal call, first thing in every method of the internal
/// services: any call when `expected` is `None`, else only a call that presents the same
/// token. The refusal is UNAUTHENTICATED and says what to configure; it never echoes what was
/// presented.
pub fn check_cluster_token(expected: Option<&ClusterToken>, metadata: &MetadataMap) -> Result<(), Status> {
    let Some(expected) = expected else { return Ok(()) };
    match metadata.get(CLUSTER_TOKEN_HEADER) {
        None => Err(Status::unauthenticated(format!(
            "this node's internal services need the cluster token: send it in the \
             {CLUSTER_TOKEN_HEADER} header (nodes, gateways and the CLI send the token configured as \
             cluster_token, --cluster-token or TALLY_CLUSTER_TOKEN)"
        ))),
        Some(presented) if expected.matches(presented.as_bytes()) => Ok(()),
        Some(_) => Err(Status::unauthenticated(
            "the cluster token sent does not match this node's: give every node, gateway and CLI \
             of the cluster the same cluster_token",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Code;

    const TOKEN: &str = "0123456789abcdef-secret";

    fn metadata_with(value: Option<&'static str>) -> MetadataMap {
        let mut metadata = MetadataMap::new();
        if let Some(value) = value {
            metadata.insert(CLUSTER_TOKEN_HEADER, AsciiMetadataValue::from_static(value));
        }
        metadata
    }

    #[test]
    fn tokens_are_validated() {
        assert!(ClusterToken::parse(TOKEN).is_ok());
        let short = ClusterToken::parse("fifteen-chars!!").unwrap_err();
        assert!(short.contains("15 characters long; it must be 16 to 256"), "{short}");
        assert!(ClusterToken::parse(&"x".repeat(257)).is_err());
        let space = ClusterToken::parse("0123456789 abcdef").unwrap_err();
        assert!(space.contains("not visible ASCII at position 10"), "{space}");
        assert!(ClusterToken::parse("0123456789abcdef\u{e9}").is_err());
        assert_eq!(format!("{:?}", ClusterToken::parse(TOKEN).unwrap()), "ClusterToken(<redacted>)");
    }

    #[test]
    fn only_the_same_token_passes() {
        let token = ClusterToken::parse(TOKEN).unwrap();
        assert!(check_cluster_token(Some(&token), &metadata_with(Some(TOKEN))).is_ok());
        for presented in [None, Some("0123456789abcdef-secreT"), Some("0123456789abcdef-secret2"), Some("")] {
            let refused = check_cluster_token(Some(&token), &metadata_with(presented)).unwrap_err();
            assert_eq!(refused.code(), Code::Unauthenticated, "{presented:?}");
            assert!(!refused.message().contains(TOKEN), "the refusal echoes the token: {refused:?}");
        }
        let missing = check_cluster_token(Some(&token), &metadata_with(None)).unwrap_err();
        assert!(missing.message().contains(CLUSTER_TOKEN_HEADER), "{missing:?}");
        // Without a configured token every call passes, with or without one.
        assert!(check_cluster_token(None, &metadata_with(None)).is_ok());
        assert!(check_cluster_token(None, &metadata_with(Some(TOKEN))).is_ok());
    }

    #[test]
    fn an_attached_token_is_accepted_by_the_check() {
        let token = ClusterToken::parse(TOKEN).unwrap();
        let mut request = Request::new(());
        token.attach(&mut request);
        assert!(check_cluster_token(Some(&token), request.metadata()).is_ok());
        let other = ClusterToken::parse("fedcba9876543210-other").unwrap();
        assert!(check_cluster_token(Some(&other), request.metadata()).is_err());
    }
}
