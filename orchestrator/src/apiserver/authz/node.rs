//! Node restriction (Kubernetes' Node authorizer and NodeRestriction in
//! one): `node:X` reads what it needs to run and route its instances, and
//! writes only its own Node and Lease, the status of instances bound to X,
//! the mirrors of its static instances, and Events. Everything else, tokens,
//! members, binds and other nodes' objects included, is refused.
//!
//! Two halves: [`authorize`] decides from the request alone, before anything
//! is read; [`check_current`] decides what needs the stored object (which
//! node an instance is bound to), before anything is written.

use flotilla_api::fields::FieldSelector;
use flotilla_api::instance::MIRROR_ANNOTATION;
use flotilla_api::lease::NODE_LEASE_NAMESPACE;
use flotilla_api::object::Object;
use flotilla_api::rbac::Attributes;
use flotilla_client::wire::RequestV1;

use super::Change;

/// Why `node` may not make `req`, or `Ok` when the request itself is one a
/// node may make (the stored object may still refuse it).
pub(super) fn authorize(node: &str, req: &RequestV1, attrs: &Attributes) -> Result<(), String> {
    let verb = attrs.verb;
    let reads = matches!(verb, "get" | "list" | "watch");
    let own_name = attrs.name == node;
    match attrs.resource.as_str() {
        "nodes" if reads => Ok(()),
        "nodes" | "nodes/status" if own_name && matches!(verb, "create" | "update" | "patch") => {
            Ok(())
        }
        "nodes" | "nodes/status" => Err(format!("a node writes only its own Node \"{node}\"")),
        "leases"
            if attrs.namespace == NODE_LEASE_NAMESPACE
                && own_name
                && matches!(verb, "get" | "create" | "update") =>
        {
            Ok(())
        }
        "leases" => Err(format!(
            "a node reads and writes only its own Lease, {NODE_LEASE_NAMESPACE}/{node}"
        )),
        "instances" => match verb {
            "list" | "watch" => {
                if selected_node(req).as_deref() == Some(node) {
                    Ok(())
                } else {
                    Err(format!(
                        "a node lists and watches only the instances bound to it (field selector spec.nodeName={node})"
                    ))
                }
            }
            "get" | "delete" => Ok(()),
            "create" | "patch" => match body(req) {
                Some(Object::Instance(i))
                    if i.spec.node_name == node
                        && i.metadata.annotations.contains_key(MIRROR_ANNOTATION) =>
                {
                    Ok(())
                }
                _ => Err(format!(
                    "a node creates only the mirrors of its own static instances (bound to {node}, annotated {MIRROR_ANNOTATION})"
                )),
            },
            _ => Err(
                "a node writes only the status of the instances bound to it and the mirrors of its static instances"
                    .to_string(),
            ),
        },
        "instances/status" if verb == "update" => match body(req) {
            Some(Object::Instance(i)) if i.spec.node_name == node => Ok(()),
            _ => Err(format!(
                "a node writes the status only of instances bound to it ({node})"
            )),
        },
        "services" | "endpoints" | "namespaces" if reads => Ok(()),
        "events" if verb == "create" || verb == "update" => match body(req) {
            Some(Object::Event(e)) if e.source.host == node => Ok(()),
            _ => Err(format!(
                "a node writes only events whose source.host is itself ({node})"
            )),
        },
        "modules" if verb == "get" => Ok(()),
        _ => Err(
            "a node reads what it runs and routes, and writes only its own Node, Lease, instance status, static mirrors and Events"
                .to_string(),
        ),
    }
}

/// Why `node` may not make `change` to `current`, as stored.
pub(super) fn check_current(node: &str, change: Change, current: &Object) -> Result<(), String> {
    let i = match current {
        Object::Instance(i) => i,
        Object::Event(e) if e.source.host == node => return Ok(()),
        Object::Event(e) => {
            return Err(format!(
                "event \"{}\" comes from {}, not from {node}",
                e.metadata.name,
                if e.source.host.is_empty() {
                    "no node"
                } else {
                    &e.source.host
                }
            ))
        }
        _ => return Ok(()),
    };
    let bound_here = i.spec.node_name == node;
    let mirror = i.metadata.annotations.contains_key(MIRROR_ANNOTATION);
    match change {
        Change::Read | Change::Status if bound_here => Ok(()),
        Change::Read | Change::Status => Err(format!(
            "instance \"{}\" is bound to {}, not to {node}",
            i.metadata.name,
            if i.spec.node_name.is_empty() {
                "no node"
            } else {
                &i.spec.node_name
            }
        )),
        Change::Spec if bound_here && mirror => Ok(()),
        Change::Spec => Err(format!(
            "instance \"{}\" is not a mirror of a static instance of {node}; a node changes only those",
            i.metadata.name
        )),
    }
}

/// The node a list or watch of instances is limited to.
fn selected_node(req: &RequestV1) -> Option<String> {
    let selector = match req {
        RequestV1::List { field_selector, .. } | RequestV1::Watch { field_selector, .. } => {
            field_selector
        }
        _ => return None,
    };
    FieldSelector::parse(selector)
        .ok()?
        .node_name()
        .map(str::to_string)
}

fn body(req: &RequestV1) -> Option<&Object> {
    match req {
        RequestV1::Create { object }
        | RequestV1::Update { object }
        | RequestV1::UpdateStatus { object }
        | RequestV1::Apply { object } => Some(object),
        _ => None,
    }
}
