//! The Job kind: run instances to completion, `completions` times, at most
//! `parallelism` at once, giving up after `backoffLimit` failures.

use serde::{Deserialize, Serialize};

use crate::instance::{InstanceTemplate, RestartPolicy};
use crate::labels::Selector;
use crate::meta::{condition_is_true, Condition, ObjectMeta};
use crate::validation::{check_timestamp, ValidationErrors};

/// Condition type: the job reached its completions.
pub const CONDITION_COMPLETE: &str = "Complete";
/// Condition type: the job failed (reason `BackoffLimitExceeded` or `DeadlineExceeded`).
pub const CONDITION_FAILED: &str = "Failed";
/// Label the defaults put on a job's template and selector: the job's name.
pub const LABEL_JOB_NAME: &str = "job-name";

/// A job (Kubernetes' `Job`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Job {
    /// Standard metadata.
    pub metadata: ObjectMeta,
    /// Completions, parallelism, limits and template.
    pub spec: JobSpec,
    /// Counts and outcome, written by the job controller.
    pub status: JobStatus,
}

/// Desired state of a job.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
pub struct JobSpec {
    /// Successful instances needed (default 1).
    pub completions: u32,
    /// Instances running at once at most (default 1; 0 suspends the job).
    pub parallelism: u32,
    /// Failed instances tolerated before the job fails (default 6).
    pub backoff_limit: u32,
    /// Seconds the job may run in total before it is failed.
    pub active_deadline_seconds: Option<u64>,
    /// Seconds after the job finishes before it is deleted.
    pub ttl_seconds_after_finished: Option<u32>,
    /// Which instances belong to the job; defaults to `job-name: <name>`.
    pub selector: Selector,
    /// Instances to run; restartPolicy must be OnFailure or Never.
    pub template: InstanceTemplate,
}

impl Default for JobSpec {
    fn default() -> Self {
        Self {
            completions: 1,
            parallelism: 1,
            backoff_limit: 6,
            active_deadline_seconds: None,
            ttl_seconds_after_finished: None,
            selector: Selector::default(),
            template: InstanceTemplate::default(),
        }
    }
}

/// Observed state of a job.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
pub struct JobStatus {
    /// The `metadata.generation` this status describes.
    pub observed_generation: u64,
    /// Instances running or pending.
    pub active: u32,
    /// Instances that succeeded.
    pub succeeded: u32,
    /// Instances that failed.
    pub failed: u32,
    /// RFC 3339 time the job started.
    pub start_time: String,
    /// RFC 3339 time the job completed successfully.
    pub completion_time: String,
    /// `Complete` or `Failed`, with the reason.
    pub conditions: Vec<Condition>,
}

impl Job {
    /// True once the job completed or failed.
    pub fn is_finished(&self) -> bool {
        condition_is_true(&self.status.conditions, CONDITION_COMPLETE)
            || condition_is_true(&self.status.conditions, CONDITION_FAILED)
    }

    pub(crate) fn apply_defaults(&mut self) {
        self.spec.template.apply_defaults();
        if self.spec.selector.is_empty() && !self.metadata.name.is_empty() {
            let name = self.metadata.name.clone();
            self.spec
                .selector
                .match_labels
                .insert(LABEL_JOB_NAME.to_owned(), name.clone());
            self.spec
                .template
                .metadata
                .labels
                .entry(LABEL_JOB_NAME.to_owned())
                .or_insert(name);
        }
    }

    pub(crate) fn validate_into(&self, errs: &mut ValidationErrors) {
        let spec = &self.spec;
        if spec.completions == 0 {
            errs.push("spec.completions", "must be >= 1");
        }
        if spec.active_deadline_seconds == Some(0) {
            errs.push("spec.activeDeadlineSeconds", "must be >= 1 when set");
        }
        if spec.selector.is_empty() {
            // Defaults fill it in from the job's name; only reached without defaults.
            spec.template.check(errs, "spec.template");
        } else {
            crate::deployment::check_selector_and_template(errs, &spec.selector, &spec.template);
        }
        if spec.template.spec.restart_policy == RestartPolicy::Always {
            errs.push(
                "spec.template.spec.restartPolicy",
                "must be OnFailure or Never for a Job (Always is the default when unset)",
            );
        }
        check_timestamp(errs, "status.startTime", &self.status.start_time);
        check_timestamp(errs, "status.completionTime", &self.status.completion_time);
    }
}
