//! The placement pipeline, composed in one place: for one instance, every
//! node through the [`FILTERS`](super::filters::FILTERS) in order, the fitting
//! ones through the weighted [`SCORERS`](super::scorers::SCORERS), the best
//! one wins (ties by name); nowhere, and the reasons per node say why. It
//! runs on a [`World`] snapshot, so a test runs it on a fixed one.

use std::collections::BTreeMap;

use flotilla_api::instance::Instance;

use super::filters::{Candidate, Unfit, FILTERS};
use super::scorers::score;
use super::snapshot::{enough_feasible, Terms, World};

/// The decision for one instance.
#[derive(Debug, PartialEq)]
pub enum Placement {
    /// Bind to this node.
    Node(String),
    /// Nowhere: the message says why.
    Unschedulable(String),
}

/// Runs the pipeline for one instance over the world as it stands; also
/// returns how many nodes were examined (the next placement starts after them,
/// as Kubernetes does, so partial scans take turns).
pub(super) fn place_scanning(i: &Instance, world: &World) -> (Placement, usize) {
    let terms = Terms::new(i, world);
    let spread = i
        .metadata
        .controller_ref()
        .and_then(|r| world.spread.get(&r.uid))
        .map(|per_node| (per_node, per_node.iter().copied().max().unwrap_or(0)));
    let count = world.nodes.len();
    let enough = enough_feasible(count);
    let mut feasible = 0;
    let mut best: Option<(f64, usize)> = None;
    let mut reasons: BTreeMap<Unfit, usize> = BTreeMap::new();
    let mut examined = 0;
    for k in 0..count {
        examined = k + 1;
        let n = (world.start + k) % count;
        let node = &world.nodes[n];
        let c = Candidate {
            i,
            n: node,
            ready: world.ready[n],
            used: world.usage[n],
            terms: &terms,
            spread: spread.map(|(per_node, max)| (per_node[n], max)),
        };
        match FILTERS.iter().try_for_each(|f| f(&c)) {
            Ok(()) => {
                let s = score(&c);
                let better = best.is_none_or(|(b, m)| {
                    s > b || (s == b && node.metadata.name < world.nodes[m].metadata.name)
                });
                if better {
                    best = Some((s, n));
                }
                feasible += 1;
                if feasible >= enough {
                    break;
                }
            }
            Err(why) => *reasons.entry(why).or_default() += 1,
        }
    }
    let placement = match best {
        Some((_, n)) => Placement::Node(world.nodes[n].metadata.name.clone()),
        None => {
            let parts: Vec<String> = reasons.iter().map(|(r, c)| r.describe(*c)).collect();
            let detail = if parts.is_empty() {
                "no nodes registered".to_string()
            } else {
                parts.join(", ")
            };
            Placement::Unschedulable(format!("0/{count} nodes are available: {detail}."))
        }
    };
    (placement, examined)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use flotilla_api::manifest::parse_manifests;
    use flotilla_api::meta::{set_condition, Condition, ConditionStatus};
    use flotilla_api::node::Node;
    use flotilla_api::object::Object;

    fn place(i: &Instance, world: &World) -> Placement {
        place_scanning(i, world).0
    }

    fn node(name: &str, mem: &str, taints: &str) -> Node {
        let text = format!("apiVersion: flotilla.dev/v1\nkind: Node\nmetadata:\n  name: {name}\n  labels: {{zone: a}}\nspec:\n  taints: [{taints}]\n");
        let Object::Node(mut n) = parse_manifests(&text).unwrap().remove(0) else {
            unreachable!()
        };
        n.status.allocatable.memory = flotilla_api::quantity::Quantity::parse(mem).unwrap();
        n.status.allocatable.cpu = flotilla_api::quantity::Quantity::parse("2").unwrap();
        n.status.allocatable.instances = 10;
        set_condition(
            &mut n.status.conditions,
            Condition::new("Ready", ConditionStatus::True, "", ""),
        );
        n
    }

    fn instance(mem: &str) -> Instance {
        let text = format!("apiVersion: flotilla.dev/v1\nkind: Instance\nmetadata:\n  name: i\nspec:\n  module: sha256:{}\n  resources:\n    requests: {{memory: {mem}}}\n", "a".repeat(64));
        let Object::Instance(i) = parse_manifests(&text).unwrap().remove(0) else {
            unreachable!()
        };
        i
    }

    #[test]
    fn picks_the_least_allocated_fitting_node_and_explains_refusals() {
        let nodes = vec![
            node("small", "64Mi", ""),
            node("big", "1Gi", ""),
            node(
                "edge",
                "4Gi",
                "{key: edge, value: 'true', effect: NoSchedule}",
            ),
        ];
        let world = World::new(nodes);
        assert_eq!(
            place(&instance("32Mi"), &world),
            Placement::Node("big".into())
        );
        match place(&instance("2Gi"), &world) {
            Placement::Unschedulable(m) => assert_eq!(
                m,
                "0/3 nodes are available: 1 node had untolerated taint {edge=true:NoSchedule}, 2 insufficient memory."
            ),
            other => panic!("{other:?}"),
        }
    }

    fn owned(name: &str, extra_spec: &str) -> Instance {
        let text = format!("apiVersion: flotilla.dev/v1\nkind: Instance\nmetadata:\n  name: {name}\n  labels: {{app: web}}\n  ownerReferences:\n  - {{apiVersion: flotilla.dev/v1, kind: Deployment, name: web, uid: u1, controller: true}}\nspec:\n  module: sha256:{}\n{extra_spec}", "a".repeat(64));
        let Object::Instance(i) = parse_manifests(&text).unwrap().remove(0) else {
            unreachable!()
        };
        i
    }

    fn place_all(world: &mut World, instances: Vec<Instance>) -> Vec<Placement> {
        instances
            .into_iter()
            .map(|i| {
                let p = place(&i, world);
                if let Placement::Node(name) = &p {
                    world.add(i, name);
                }
                p
            })
            .collect()
    }

    #[test]
    fn one_controllers_instances_spread_evenly() {
        let nodes = vec![
            node("a", "1Gi", ""),
            node("b", "1Gi", ""),
            node("c", "1Gi", ""),
        ];
        let mut world = World::new(nodes);
        let placed = place_all(
            &mut world,
            (0..6).map(|n| owned(&format!("w{n}"), "")).collect(),
        );
        let mut per_node: BTreeMap<String, usize> = BTreeMap::new();
        for p in placed {
            let Placement::Node(name) = p else {
                panic!("{p:?}")
            };
            *per_node.entry(name).or_default() += 1;
        }
        assert_eq!(
            per_node.values().copied().collect::<Vec<_>>(),
            vec![2, 2, 2]
        );
    }

    #[test]
    fn required_anti_affinity_keeps_instances_apart_and_says_why() {
        let nodes = vec![node("a", "1Gi", ""), node("b", "1Gi", "")];
        let mut world = World::new(nodes);
        let anti = "  affinity:\n    instanceAntiAffinity:\n      requiredDuringSchedulingIgnoredDuringExecution:\n      - labelSelector: {matchLabels: {app: web}}\n        topologyKey: zone-of-node\n";
        // Both nodes are in zone a (label zone: a) under the key "zone".
        let anti = anti.replace("zone-of-node", "zone");
        let placed = place_all(&mut world, vec![owned("w0", &anti), owned("w1", &anti)]);
        assert!(matches!(placed[0], Placement::Node(_)));
        assert_eq!(
            placed[1],
            Placement::Unschedulable(
                "0/2 nodes are available: 2 nodes didn't match instance anti-affinity rules."
                    .into()
            )
        );
    }
}
