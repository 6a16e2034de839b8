//! The meta group's state: partners (with hashed API keys), exchange agreements, and the
//! cluster layout (nodes and the placement of every shard's replicas).

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
    /// Records the nodes and the initial placement. Applying the same layout again is a no-op
    /// (so `tally cluster init` can be re-run); a different one is refused.
    InitCluster {
        layout: ClusterLayout,
    },
    AddNode {
        node_id: u64,
        address: String,
    },
    /// Records the incarnation of a layout node's data folder (a random id made with the
    /// folder). Peers refuse Raft traffic from and to a folder with another incarnation, so a
    /// node whose folder was wiped or replaced cannot vote or acknowledge as the old member.
    /// Recording the same value again is a no-op; a different one is refused.
    RecordIncarnation {
        node_id: u64,
        incarnation: u64,
    },
    /// Refused while the node still holds a replica.
    RemoveNode {
        node_id: u64,
    },
    /// Records a shard's new replica set after a move; `expected_version` guards against two
    /// concurrent moves of one shard.
    SetShardReplicas {
        shard: u32,
        replicas: Vec<u64>,
        expected_version: u64,
    },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MetaResult {
    PartnerCreated(Partner),
    PartnerKeyRotated(Partner),
    AgreementSet(Agreement),
    AgreementRemoved(Agreement),
    Layout(ClusterLayout),
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
    #[error("cluster layout: {0}")]
    Layout(String),
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetaState {
    pub partners: BTreeMap<PartnerId, Partner>,
    pub agreements: BTreeMap<(CurrencyCode, CurrencyCode), Agreement>,
    /// `None` until `tally cluster init` (or dev mode) records it.
    pub layout: Option<ClusterLayout>,
}

/// A node of the cluster as the meta group knows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    pub node_id: u64,
    /// host:port serving the node's gRPC (Raft transport and node API).
    pub address: String,
}

/// Where one shard's replicas live.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardPlacement {
    /// Voters of the shard's group. The first is the node that bootstrapped the group (and so
    /// its first leader).
    pub replicas: Vec<u64>,
    /// Bumped by every recorded move; 0 means the initial placement.
    pub version: u64,
}

/// Nodes and shard placement: what gateways route by and what SRE operations change.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterLayout {
    pub shard_count: u32,
    pub replication_factor: u32,
    pub nodes: BTreeMap<u64, NodeInfo>,
    /// Indexed by shard number.
    pub shards: Vec<ShardPlacement>,
    /// Ids of removed nodes: never given to another node (a node id names one data folder).
    pub retired_node_ids: Vec<u64>,
    /// Per node, the incarnation of the data folder it joined with (see
    /// `MetaCommand::RecordIncarnation`); a node without one is not checked.
    pub incarnations: BTreeMap<u64, u64>,
}

impl ClusterLayout {
    /// The initial layout: shard `k` on `replication_factor` consecutive nodes starting at the
    /// `k mod n`-th node (in id order), so that first leaders and replicas are spread evenly.
    pub fn initial(
        nodes: Vec<NodeInfo>,
        shard_count: u32,
        replication_factor: u32,
    ) -> Result<ClusterLayout, MetaError> {
        let layout_error = |reason: String| MetaError::Layout(reason);
        if nodes.is_empty() {
            return Err(layout_error("at least one node is needed".into()));
        }
        if replication_factor == 0 {
            return Err(layout_error("replication_factor must be at least 1".into()));
        }
        if shard_count == 0 {
            return Err(layout_error("shard_count must be at least 1".into()));
        }
        let mut by_id = BTreeMap::new();
        for node in nodes {
            if node.node_id == 0 {
                return Err(layout_error("node ids start at 1".into()));
            }
            if let Some(previous) = by_id.insert(node.node_id, node.clone()) {
                return Err(layout_error(format!(
                    "node id {} is used by both {} and {}",
                    node.node_id, previous.address, node.address
                )));
            }
        }
        let ids: Vec<u64> = by_id.keys().copied().collect();
        let replicas_per_shard = (replication_factor as usize).min(ids.len());
        let shards = (0..shard_count as usize)
            .map(|shard| ShardPlacement {
                replicas: (0..replicas_per_shard).map(|offset| ids[(shard + offset) % ids.len()]).collect(),
                version: 0,
            })
            .collect();
        Ok(ClusterLayout {
            shard_count,
            replication_factor,
            nodes: by_id,
            shards,
            retired_node_ids: Vec::new(),
            incarnations: BTreeMap::new(),
        })
    }

    /// Shards (by number) that have a replica on `node_id`.
    pub fn shards_on(&self, node_id: u64) -> Vec<u32> {
        (0..self.shard_count)
            .filter(|shard| self.shards[*shard as usize].replicas.contains(&node_id))
            .collect()
    }

    pub fn address(&self, node_id: u64) -> Option<&str> {
        self.nodes.get(&node_id).map(|node| node.address.as_str())
    }

    /// The incarnation recorded for `node_id`'s data folder, if any.
    pub fn incarnation(&self, node_id: u64) -> Option<u64> {
        self.incarnations.get(&node_id).copied()
    }

    fn record_incarnation(&mut self, node_id: u64, incarnation: u64) -> Result<(), MetaError> {
        if !self.nodes.contains_key(&node_id) {
            return Err(MetaError::Layout(format!("node {node_id} is not part of the cluster")));
        }
        if incarnation == 0 {
            return Err(MetaError::Layout("incarnation 0 means unknown and cannot be recorded".into()));
        }
        match self.incarnations.get(&node_id) {
            Some(recorded) if *recorded != incarnation => {
                Err(MetaError::Layout(replaced_folder_message(node_id, incarnation, *recorded)))
            }
            _ => {
                self.incarnations.insert(node_id, incarnation);
                Ok(())
            }
        }
    }

    fn check_replicas(&self, shard: u32, replicas: &[u64]) -> Result<(), MetaError> {
        if shard >= self.shard_count {
            return Err(MetaError::Layout(format!(
                "no shard {shard}; shards are 0 to {}",
                self.shard_count - 1
            )));
        }
        if replicas.is_empty() {
            return Err(MetaError::Layout(format!("shard {shard} needs at least one replica")));
        }
        for (index, node_id) in replicas.iter().enumerate() {
            if !self.nodes.contains_key(node_id) {
                return Err(MetaError::Layout(format!("node {node_id} is not part of the cluster")));
            }
            if replicas[..index].contains(node_id) {
                return Err(MetaError::Layout(format!("node {node_id} is listed twice")));
            }
        }
        Ok(())
    }
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
            MetaCommand::InitCluster { layout } => self.init_cluster(layout).map(MetaResult::Layout),
            MetaCommand::AddNode { node_id, address } => {
                let layout = self.layout_mut()?;
                if *node_id == 0 {
                    return Err(MetaError::Layout("node ids start at 1".into()));
                }
                if layout.retired_node_ids.contains(node_id) {
                    return Err(MetaError::Layout(format!(
                        "node id {node_id} belonged to a removed node; start the new node with a new id and an empty data folder"
                    )));
                }
                match layout.nodes.get(node_id) {
                    Some(existing) if existing.address == *address => {}
                    Some(existing) => {
                        return Err(MetaError::Layout(format!(
                            "node {node_id} is already in the cluster at {}; remove it first",
                            existing.address
                        )))
                    }
                    None => {
                        layout
                            .nodes
                            .insert(*node_id, NodeInfo { node_id: *node_id, address: address.clone() });
                    }
                }
                Ok(MetaResult::Layout(layout.clone()))
            }
            MetaCommand::RecordIncarnation { node_id, incarnation } => {
                let layout = self.layout_mut()?;
                layout.record_incarnation(*node_id, *incarnation)?;
                Ok(MetaResult::Layout(layout.clone()))
            }
            MetaCommand::RemoveNode { node_id } => {
                let layout = self.layout_mut()?;
                if !layout.nodes.contains_key(node_id) {
                    return Err(MetaError::Layout(format!("node {node_id} is not part of the cluster")));
                }
                let held = layout.shards_on(*node_id);
                if !held.is_empty() {
                    return Err(MetaError::Layout(format!(
                        "node {node_id} still holds replicas of shards {held:?}; move them first"
                    )));
                }
                layout.nodes.remove(node_id);
                layout.incarnations.remove(node_id);
                layout.retired_node_ids.push(*node_id);
                Ok(MetaResult::Layout(layout.clone()))
            }
            MetaCommand::SetShardReplicas { shard, replicas, expected_version } => {
                let layout = self.layout_mut()?;
                layout.check_replicas(*shard, replicas)?;
                let placement = &mut layout.shards[*shard as usize];
                if placement.version != *expected_version {
                    return Err(MetaError::Layout(format!(
                        "shard {shard} placement is at version {}, not {expected_version}: another \
                         change came first; read the status and retry",
                        placement.version
                    )));
                }
                placement.replicas.clone_from(replicas);
                placement.version += 1;
                Ok(MetaResult::Layout(layout.clone()))
            }
        }
    }

    fn layout_mut(&mut self) -> Result<&mut ClusterLayout, MetaError> {
        self.layout.as_mut().ok_or_else(|| {
            MetaError::Layout("the cluster is not initialized; run `tally cluster init`".into())
        })
    }

    fn init_cluster(&mut self, layout: &ClusterLayout) -> Result<ClusterLayout, MetaError> {
        if let Some(existing) = &self.layout {
            for (node_id, incarnation) in &layout.incarnations {
                if let Some(recorded) =
                    existing.incarnation(*node_id).filter(|recorded| recorded != incarnation)
                {
                    return Err(MetaError::Layout(replaced_folder_message(*node_id, *incarnation, recorded)));
                }
            }
        }
        match &self.layout {
            // The same cluster, initialized before (its placement may have changed since).
            Some(existing)
                if existing.nodes == layout.nodes
                    && existing.shard_count == layout.shard_count
                    && existing.replication_factor == layout.replication_factor =>
            {
                Ok(existing.clone())
            }
            Some(existing) => Err(MetaError::Layout(format!(
                "the cluster is already initialized with nodes {:?}",
                existing.nodes.keys().collect::<Vec<_>>()
            ))),
            None => {
                if layout.shards.len() != layout.shard_count as usize {
                    return Err(MetaError::Layout("one placement per shard is needed".into()));
                }
                for (shard, placement) in layout.shards.iter().enumerate() {
                    layout.check_replicas(shard as u32, &placement.replicas)?;
                }
                self.layout = Some(layout.clone());
                Ok(layout.clone())
            }
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
/// What an operator reads when a node's data folder is not the one the layout recorded.
pub fn replaced_folder_message(node_id: u64, found: u64, recorded: u64) -> String {
    format!(
        "node {node_id}'s data folder was replaced (incarnation {found:016x}, the layout expects \
         {recorded:016x}): it lost what it had acknowledged, so it must not rejoin as node {node_id}; \
         stop it, start it with a new node id and an empty data folder, run `tally cluster add-node`, \
         then `tally cluster remove-node --id {node_id}`"
    )
}

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

#[cfg(test)]
mod tests {
    use super::*;

    fn three_nodes() -> MetaState {
        let nodes = (1..=3)
            .map(|node_id| NodeInfo { node_id, address: format!("127.0.0.1:{}", 7100 + node_id) })
            .collect();
        let mut layout = ClusterLayout::initial(nodes, 2, 3).unwrap();
        layout.incarnations = BTreeMap::from([(1, 11), (2, 22), (3, 33)]);
        let mut meta = MetaState::default();
        meta.apply(1, &MetaCommand::InitCluster { layout }).unwrap();
        meta
    }

    #[test]
    fn a_recorded_incarnation_is_never_replaced() {
        let mut meta = three_nodes();
        let again = MetaCommand::RecordIncarnation { node_id: 3, incarnation: 33 };
        assert!(meta.apply(2, &again).is_ok(), "recording the same value again is a no-op");
        let replaced = meta.apply(3, &MetaCommand::RecordIncarnation { node_id: 3, incarnation: 34 });
        let message = replaced.unwrap_err().to_string();
        assert!(message.contains("node 3's data folder was replaced"), "{message}");
        assert!(message.contains("tally cluster remove-node --id 3"), "{message}");
        assert_eq!(meta.layout.as_ref().unwrap().incarnation(3), Some(33));
        let unknown = meta.apply(4, &MetaCommand::RecordIncarnation { node_id: 9, incarnation: 1 });
        assert!(unknown.unwrap_err().to_string().contains("not part of the cluster"));
        let zero = meta.apply(5, &MetaCommand::RecordIncarnation { node_id: 1, incarnation: 0 });
        assert!(zero.is_err(), "0 means unknown");
    }

    #[test]
    fn init_again_with_a_replaced_folder_is_refused_and_removal_forgets_the_incarnation() {
        let mut meta = three_nodes();
        let mut layout = meta.layout.clone().unwrap();
        layout.incarnations.insert(2, 23);
        let refused = meta.apply(2, &MetaCommand::InitCluster { layout }).unwrap_err().to_string();
        assert!(refused.contains("node 2's data folder was replaced"), "{refused}");
        let layout = meta.layout.as_mut().unwrap();
        layout.shards.iter_mut().for_each(|placement| placement.replicas.retain(|node_id| *node_id != 2));
        meta.apply(3, &MetaCommand::RemoveNode { node_id: 2 }).unwrap();
        assert_eq!(meta.layout.as_ref().unwrap().incarnation(2), None);
    }
}
