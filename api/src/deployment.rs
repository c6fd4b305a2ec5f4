//! The Deployment kind: a replicated set of identical instances rolled out from a
//! template, with revision history. Also [`IntOrPercent`], the `maxSurge: 1` /
//! `maxUnavailable: "25%"` amount that DaemonSets use too.

use std::fmt;

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};

use crate::instance::{InstanceTemplate, RestartPolicy};
use crate::labels::Selector;
use crate::meta::{Condition, ObjectMeta};
use crate::validation::ValidationErrors;

/// Condition type: at least `replicas - maxUnavailable` instances are available.
pub const CONDITION_AVAILABLE: &str = "Available";
/// Condition type: the rollout is making progress (False with reason
/// `ProgressDeadlineExceeded` when it stalls).
pub const CONDITION_PROGRESSING: &str = "Progressing";
/// Annotation on instances and in history: the revision number of their template.
pub const ANNOTATION_REVISION: &str = "deployment.flotilla.dev/revision";
/// Label on instances created from a template: its [`InstanceTemplate::template_hash`].
pub const LABEL_TEMPLATE_HASH: &str = "flotilla.dev/template-hash";

/// A deployment (Kubernetes' `Deployment`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Deployment {
    /// Standard metadata.
    pub metadata: ObjectMeta,
    /// Desired replicas, template and rollout strategy.
    pub spec: DeploymentSpec,
    /// Rollout progress, written by the deployment controller.
    pub status: DeploymentStatus,
}

/// Desired state of a deployment.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
pub struct DeploymentSpec {
    /// Desired number of instances (default 1).
    pub replicas: u32,
    /// Which instances belong to this deployment; must match the template's labels.
    pub selector: Selector,
    /// Instances to create.
    pub template: InstanceTemplate,
    /// How to replace old instances with new ones.
    pub strategy: DeploymentStrategy,
    /// Seconds a new instance must be Ready before it counts as available.
    pub min_ready_seconds: u32,
    /// Old revisions kept for `rollout undo` (default 10).
    pub revision_history_limit: u32,
    /// Seconds without progress before the rollout is reported failed (default 600).
    pub progress_deadline_seconds: u32,
    /// True while rollouts are paused.
    pub paused: bool,
}

impl Default for DeploymentSpec {
    fn default() -> Self {
        Self {
            replicas: 1,
            selector: Selector::default(),
            template: InstanceTemplate::default(),
            strategy: DeploymentStrategy::default(),
            min_ready_seconds: 0,
            revision_history_limit: 10,
            progress_deadline_seconds: 600,
            paused: false,
        }
    }
}

/// Kind of deployment strategy.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum DeploymentStrategyType {
    /// Replace instances gradually, within maxSurge / maxUnavailable.
    #[default]
    RollingUpdate,
    /// Delete all old instances before creating new ones.
    Recreate,
}

/// How a deployment replaces instances.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
pub struct DeploymentStrategy {
    /// RollingUpdate (default) or Recreate.
    #[serde(rename = "type")]
    pub type_: DeploymentStrategyType,
    /// Bounds of a rolling update (default 25% / 25%).
    pub rolling_update: RollingUpdate,
}

/// Bounds of a rolling update.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
pub struct RollingUpdate {
    /// Instances allowed above the desired count during an update (rounded up).
    pub max_surge: IntOrPercent,
    /// Instances allowed below the desired count during an update (rounded down).
    pub max_unavailable: IntOrPercent,
}

impl Default for RollingUpdate {
    fn default() -> Self {
        Self {
            max_surge: IntOrPercent::Percent(25),
            max_unavailable: IntOrPercent::Percent(25),
        }
    }
}

/// A count given as an absolute number (`1`) or a percentage (`"25%"`) of a total.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum IntOrPercent {
    /// An absolute count.
    Int(u32),
    /// A percentage of the total.
    Percent(u32),
}

impl IntOrPercent {
    /// The count for `total` instances; percentages round up when `round_up`
    /// (maxSurge) and down otherwise (maxUnavailable), as in Kubernetes.
    pub fn resolve(self, total: u32, round_up: bool) -> u32 {
        match self {
            Self::Int(n) => n,
            Self::Percent(p) => {
                let product = u64::from(total) * u64::from(p);
                let n = if round_up {
                    product.div_ceil(100)
                } else {
                    product / 100
                };
                u32::try_from(n).unwrap_or(u32::MAX)
            }
        }
    }

    /// True for `0` and `0%`.
    pub fn is_zero(self) -> bool {
        matches!(self, Self::Int(0) | Self::Percent(0))
    }

    /// Parses `3` or `25%`.
    pub fn parse(s: &str) -> Option<IntOrPercent> {
        let s = s.trim();
        match s.strip_suffix('%') {
            Some(p) if !p.is_empty() && p.chars().all(|c| c.is_ascii_digit()) => {
                p.parse().ok().map(Self::Percent)
            }
            Some(_) => None,
            None if !s.is_empty() && s.chars().all(|c| c.is_ascii_digit()) => {
                s.parse().ok().map(Self::Int)
            }
            None => None,
        }
    }
}

impl fmt::Display for IntOrPercent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Int(n) => write!(f, "{n}"),
            Self::Percent(p) => write!(f, "{p}%"),
        }
    }
}

/// The binary (postcard) shape of [`IntOrPercent`].
#[derive(Serialize, Deserialize)]
enum IntOrPercentRepr {
    Int(u32),
    Percent(u32),
}

impl Serialize for IntOrPercent {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match (s.is_human_readable(), *self) {
            (true, Self::Int(n)) => s.serialize_u32(n),
            (true, Self::Percent(_)) => s.serialize_str(&self.to_string()),
            (false, Self::Int(n)) => IntOrPercentRepr::Int(n).serialize(s),
            (false, Self::Percent(p)) => IntOrPercentRepr::Percent(p).serialize(s),
        }
    }
}

impl<'de> Deserialize<'de> for IntOrPercent {
    /// YAML/JSON accept a non-negative integer or a string `N` / `N%`.
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = IntOrPercent;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a non-negative integer or a percentage such as \"25%\"")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<IntOrPercent, E> {
                u32::try_from(v)
                    .map(IntOrPercent::Int)
                    .map_err(|_| E::custom(format!("{v} is too large")))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<IntOrPercent, E> {
                match u64::try_from(v) {
                    Ok(v) => self.visit_u64(v),
                    Err(_) => Err(E::custom(format!("must be >= 0, got {v}"))),
                }
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<IntOrPercent, E> {
                IntOrPercent::parse(v).ok_or_else(|| {
                    E::custom(format!(
                        "{v:?} is not a count or a percentage (e.g. 1 or \"25%\")"
                    ))
                })
            }
        }
        if d.is_human_readable() {
            d.deserialize_any(V)
        } else {
            Ok(match IntOrPercentRepr::deserialize(d)? {
                IntOrPercentRepr::Int(n) => IntOrPercent::Int(n),
                IntOrPercentRepr::Percent(p) => IntOrPercent::Percent(p),
            })
        }
    }
}

/// Checks a rolling update's bounds under `field`.
pub(crate) fn check_rolling_update(
    errs: &mut ValidationErrors,
    field: &str,
    max_surge: IntOrPercent,
    max_unavailable: IntOrPercent,
) {
    if let IntOrPercent::Percent(p) = max_unavailable {
        if p > 100 {
            errs.push(format!("{field}.maxUnavailable"), "must be at most 100%");
        }
    }
    if max_surge.is_zero() && max_unavailable.is_zero() {
        errs.push(
            format!("{field}.maxUnavailable"),
            "may not be 0 when maxSurge is 0 (the rollout could never progress)",
        );
    }
}

/// Checks that a workload's selector is set and matches its template's labels.
pub(crate) fn check_selector_and_template(
    errs: &mut ValidationErrors,
    selector: &Selector,
    template: &InstanceTemplate,
) {
    if selector.is_empty() {
        errs.push("spec.selector", "required (e.g. matchLabels: {app: web})");
    } else {
        selector.check(errs, "spec.selector");
        if !selector.matches(&template.metadata.labels) {
            errs.push(
                "spec.template.metadata.labels",
                format!(
                    "must match spec.selector ({}), so the workload can find its instances",
                    selector
                ),
            );
        }
    }
    template.check(errs, "spec.template");
}

/// Observed state of a deployment.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
pub struct DeploymentStatus {
    /// The `metadata.generation` this status describes.
    pub observed_generation: u64,
    /// Instances owned by the deployment (any revision).
    pub replicas: u32,
    /// Instances of the current template.
    pub updated_replicas: u32,
    /// Instances that are Ready.
    pub ready_replicas: u32,
    /// Instances Ready for at least `minReadySeconds`.
    pub available_replicas: u32,
    /// `replicas` minus available instances (never negative).
    pub unavailable_replicas: u32,
    /// Revision number of the current template.
    pub revision: u64,
    /// `Available` and `Progressing` conditions.
    pub conditions: Vec<Condition>,
    /// Previous templates, oldest first, for `rollout history` and `rollout undo`.
    pub history: Vec<DeploymentRevision>,
}

/// One revision of a deployment's template.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
pub struct DeploymentRevision {
    /// Revision number, increasing from 1.
    pub revision: u64,
    /// [`InstanceTemplate::template_hash`] of the template.
    pub template_hash: String,
    /// The template.
    pub template: InstanceTemplate,
    /// Why it changed (the `flotilla.dev/change-cause` annotation, if any).
    pub change_cause: String,
    /// RFC 3339 time the revision was first rolled out.
    pub created: String,
}

impl Deployment {
    pub(crate) fn apply_defaults(&mut self) {
        self.spec.template.apply_defaults();
    }

    pub(crate) fn validate_into(&self, errs: &mut ValidationErrors) {
        let spec = &self.spec;
        check_selector_and_template(errs, &spec.selector, &spec.template);
        if spec.template.spec.restart_policy != RestartPolicy::Always {
            errs.push(
                "spec.template.spec.restartPolicy",
                format!(
                    "must be Always for a Deployment (got {}); use a Job for run-to-completion work",
                    spec.template.spec.restart_policy.as_str()
                ),
            );
        }
        if spec.strategy.type_ == DeploymentStrategyType::RollingUpdate {
            let ru = &spec.strategy.rolling_update;
            check_rolling_update(
                errs,
                "spec.strategy.rollingUpdate",
                ru.max_surge,
                ru.max_unavailable,
            );
        }
        if spec.progress_deadline_seconds <= spec.min_ready_seconds {
            errs.push(
                "spec.progressDeadlineSeconds",
                format!(
                    "must be greater than spec.minReadySeconds ({})",
                    spec.min_ready_seconds
                ),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn int_or_percent_forms() {
        let v: IntOrPercent = serde_json::from_str("1").expect("int");
        assert_eq!(v, IntOrPercent::Int(1));
        let v: IntOrPercent = serde_json::from_str(r#""25%""#).expect("pct");
        assert_eq!(v, IntOrPercent::Percent(25));
        let v: IntOrPercent = serde_yaml_ng::from_str("'3'").expect("string int");
        assert_eq!(v, IntOrPercent::Int(3));
        assert!(serde_json::from_str::<IntOrPercent>("-1").is_err());
        assert!(serde_json::from_str::<IntOrPercent>(r#""x%""#).is_err());
        for v in [IntOrPercent::Int(2), IntOrPercent::Percent(30)] {
            let json = serde_json::to_string(&v).expect("json");
            assert_eq!(
                serde_json::from_str::<IntOrPercent>(&json).expect("back"),
                v
            );
            let bytes = postcard::to_stdvec(&v).expect("encode");
            assert_eq!(
                postcard::from_bytes::<IntOrPercent>(&bytes).expect("decode"),
                v
            );
        }
        assert_eq!(
            serde_json::to_string(&IntOrPercent::Percent(25)).expect("j"),
            r#""25%""#
        );
    }

    #[test]
    fn resolve_rounds_like_kubernetes() {
        assert_eq!(IntOrPercent::Percent(25).resolve(10, true), 3);
        assert_eq!(IntOrPercent::Percent(25).resolve(10, false), 2);
        assert_eq!(IntOrPercent::Int(4).resolve(10, false), 4);
        assert_eq!(IntOrPercent::Percent(100).resolve(0, true), 0);
    }

    #[test]
    fn selector_must_match_template() {
        let mut d = Deployment::default();
        d.spec
            .selector
            .match_labels
            .insert("app".into(), "web".into());
        d.spec
            .template
            .metadata
            .labels
            .insert("app".into(), "api".into());
        d.spec.template.spec.module = "./web.wasm".into();
        d.spec.strategy.rolling_update = RollingUpdate {
            max_surge: IntOrPercent::Int(0),
            max_unavailable: IntOrPercent::Percent(0),
        };
        let mut errs = ValidationErrors::new();
        d.validate_into(&mut errs);
        let text = errs.to_string();
        assert!(
            text.contains("spec.template.metadata.labels: must match spec.selector (app=web)"),
            "{text}"
        );
        assert!(
            text.contains("spec.strategy.rollingUpdate.maxUnavailable: may not be 0"),
            "{text}"
        );
    }
}
