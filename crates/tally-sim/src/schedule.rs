//! The fault schedule of a run: partitions, heals, crashes and restarts at times drawn from the
//! seed before the run starts (so a replay injects the same faults at the same offsets).

use std::collections::BTreeSet;

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::Rng;
use tally_raft::NodeId;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// Cuts these nodes off from the others.
    Partition(BTreeSet<NodeId>),
    Heal,
    Crash(NodeId),
    Restart(NodeId),
}

/// Events and the offset (ms from the start of the workload) at which each happens. Every
/// schedule has at least one partition, heal, crash and restart; at most `(n - 1) / 2` nodes
/// are down at once (at least one may go down).
pub fn generate(rng: &mut StdRng, node_ids: &[NodeId], workload_ms: u64) -> Vec<(u64, Event)> {
    let max_down = ((node_ids.len() - 1) / 2).max(1);
    let mut events = Vec::new();
    let mut down: BTreeSet<NodeId> = BTreeSet::new();
    let mut partitioned = false;
    let mut at_ms = rng.gen_range(100..=300);
    // The first two events are a crash and a partition, in either order, so every kind happens.
    let mut forced = vec![0u8, 1u8];
    forced.shuffle(rng);
    while at_ms < workload_ms {
        let was_forced = !forced.is_empty();
        let mut choice = forced.pop().unwrap_or_else(|| rng.gen_range(0..2));
        // A crash during a partition often leaves no side with a quorum; let that happen
        // sometimes, but mostly heal first so that runs also get work done between faults.
        if !was_forced && choice == 0 && partitioned && down.is_empty() && rng.gen_bool(0.7) {
            choice = 1;
        }
        let event = if choice == 0 {
            if down.len() < max_down && (down.is_empty() || rng.gen_bool(0.3)) {
                let up: Vec<NodeId> = node_ids.iter().copied().filter(|id| !down.contains(id)).collect();
                let node = *up.choose(rng).expect("a node is up");
                down.insert(node);
                Event::Crash(node)
            } else {
                let node = *down.iter().copied().collect::<Vec<_>>().choose(rng).expect("a node is down");
                down.remove(&node);
                Event::Restart(node)
            }
        } else if partitioned {
            partitioned = false;
            Event::Heal
        } else {
            partitioned = true;
            let size = rng.gen_range(1..node_ids.len());
            let mut nodes = node_ids.to_vec();
            nodes.shuffle(rng);
            Event::Partition(nodes.into_iter().take(size).collect())
        };
        events.push((at_ms, event));
        at_ms += rng.gen_range(150..=700);
    }
    // Whatever is still broken at the end is repaired by the run itself before quiescence;
    // make sure each kind of repair also happens inside the schedule.
    if !events.iter().any(|(_, event)| *event == Event::Heal) && partitioned {
        events.push((workload_ms, Event::Heal));
    }
    if !events.iter().any(|(_, event)| matches!(event, Event::Restart(_))) {
        if let Some(node) = down.iter().next() {
            events.push((workload_ms, Event::Restart(*node)));
        }
    }
    events
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;

    use super::*;

    #[test]
    fn every_schedule_has_every_kind_and_is_a_function_of_the_seed() {
        for seed in 0..200 {
            let events = generate(&mut StdRng::seed_from_u64(seed), &[1, 2, 3], 2_500);
            let has = |wanted: fn(&Event) -> bool| events.iter().any(|(_, event)| wanted(event));
            assert!(has(|event| matches!(event, Event::Partition(_))), "seed {seed}: {events:?}");
            assert!(has(|event| matches!(event, Event::Crash(_))), "seed {seed}: {events:?}");
            assert!(has(|event| matches!(event, Event::Heal)), "seed {seed}: {events:?}");
            assert!(has(|event| matches!(event, Event::Restart(_))), "seed {seed}: {events:?}");
            assert_eq!(events, generate(&mut StdRng::seed_from_u64(seed), &[1, 2, 3], 2_500));
            // Never more than one of three nodes down, and partitions are proper subsets.
            let mut down = BTreeSet::new();
            for (_, event) in &events {
                match event {
                    Event::Crash(node) => assert!(down.insert(*node) && down.len() == 1, "seed {seed}"),
                    Event::Restart(node) => assert!(down.remove(node), "seed {seed}"),
                    Event::Partition(side) => assert!(!side.is_empty() && side.len() < 3, "seed {seed}"),
                    Event::Heal => {}
                }
            }
        }
    }
}
