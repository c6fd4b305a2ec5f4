//! Field selectors: `spec.nodeName=edge-1,status.phase!=Running`, matched
//! against a few well-known fields, as Kubernetes' `--field-selector`.

use crate::object::Object;

/// Fields a selector may name.
pub const SUPPORTED_FIELDS: &[&str] = &[
    "metadata.name",
    "metadata.namespace",
    "spec.nodeName",
    "status.phase",
];

/// A parsed field selector; empty matches everything.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FieldSelector {
    requirements: Vec<(String, bool, String)>,
}

/// Why a field selector text was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FieldSelectorError {
    /// Not `field=value` or `field!=value`.
    #[error("{0:?} is not field=value or field!=value")]
    Syntax(String),
    /// A field no selector supports.
    #[error("unsupported field {0:?} (supported: metadata.name, metadata.namespace, spec.nodeName, status.phase)")]
    Field(String),
}

impl FieldSelector {
    /// Parses comma-separated `field=value` / `field==value` / `field!=value`.
    pub fn parse(s: &str) -> Result<Self, FieldSelectorError> {
        let mut requirements = Vec::new();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (field, equal, value) = if let Some((f, v)) = part.split_once("!=") {
                (f, false, v)
            } else if let Some((f, v)) = part.split_once("==") {
                (f, true, v)
            } else if let Some((f, v)) = part.split_once('=') {
                (f, true, v)
            } else {
                return Err(FieldSelectorError::Syntax(part.to_string()));
            };
            let field = field.trim();
            if !SUPPORTED_FIELDS.contains(&field) {
                return Err(FieldSelectorError::Field(field.to_string()));
            }
            requirements.push((field.to_string(), equal, value.trim().to_string()));
        }
        Ok(Self { requirements })
    }

    /// The node a `spec.nodeName=NODE` requirement asks for, if there is one.
    pub fn node_name(&self) -> Option<&str> {
        self.requirements
            .iter()
            .find(|(f, equal, _)| f == "spec.nodeName" && *equal)
            .map(|(_, _, v)| v.as_str())
    }

    /// True when there are no requirements.
    pub fn is_empty(&self) -> bool {
        self.requirements.is_empty()
    }

    /// True when every requirement holds for `object` (a field the kind does
    /// not have reads as empty).
    pub fn matches(&self, object: &Object) -> bool {
        self.requirements.iter().all(|(field, equal, value)| {
            let actual = field_value(object, field);
            (actual.as_deref().unwrap_or("") == value) == *equal
        })
    }
}

fn field_value(object: &Object, field: &str) -> Option<String> {
    match field {
        "metadata.name" => Some(object.meta().name.clone()),
        "metadata.namespace" => Some(object.meta().namespace.clone()),
        "spec.nodeName" => match object {
            Object::Instance(i) => Some(i.spec.node_name.clone()),
            _ => None,
        },
        "status.phase" => match object {
            Object::Instance(i) => Some(i.status.phase.as_str().to_string()),
            _ => None,
        },
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::instance::Instance;

    #[test]
    fn node_name_and_phase() {
        let mut i = Instance::default();
        i.spec.node_name = "edge-1".into();
        let o = Object::Instance(i);
        assert!(FieldSelector::parse("spec.nodeName=edge-1")
            .unwrap()
            .matches(&o));
        assert!(!FieldSelector::parse("spec.nodeName=edge-2")
            .unwrap()
            .matches(&o));
        assert!(
            FieldSelector::parse("spec.nodeName!=edge-2,status.phase=Pending")
                .unwrap()
                .matches(&o)
        );
        assert!(FieldSelector::parse("").unwrap().matches(&o));
        assert_eq!(
            FieldSelector::parse("spec.foo=x"),
            Err(FieldSelectorError::Field("spec.foo".into()))
        );
        assert!(FieldSelector::parse("nodeName").is_err());
    }
}
