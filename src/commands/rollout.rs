//! `flotilla rollout status|history|undo|pause|resume deploy/NAME` and
//! `flotilla scale deploy/NAME --replicas N`.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail};
use clap::{Args, Subcommand};
use flotilla_api::deployment::{Deployment, CONDITION_PROGRESSING};
use flotilla_api::meta::find_condition;
use flotilla_api::object::{Kind, Object};
use flotilla_client::Client;

use super::Context;

/// Splits `deploy/web` (or `deployment/web`) into kind and name.
pub fn parse_target(target: &str) -> anyhow::Result<(Kind, String)> {
    let (kind, name) = target
        .split_once('/')
        .ok_or_else(|| anyhow!("\"{target}\": expected KIND/NAME, e.g. deploy/web"))?;
    if name.is_empty() {
        bail!("\"{target}\": the name after the slash is empty");
    }
    Ok((Kind::parse(kind)?, name.to_string()))
}

fn deployment_target(target: &str) -> anyhow::Result<String> {
    match parse_target(target)? {
        (Kind::Deployment, name) => Ok(name),
        (kind, _) => bail!(
            "\"{target}\": rollouts are for deployments, not {}",
            kind.plural()
        ),
    }
}

/// The deployment, with its resource version cleared: the verbs here change
/// one spec field and should not fail because the controller just wrote status.
async fn get_deployment(
    client: &Client,
    namespace: &str,
    name: &str,
) -> anyhow::Result<Deployment> {
    match client.get(Kind::Deployment, namespace, name).await? {
        Object::Deployment(mut d) => {
            d.metadata.resource_version.clear();
            Ok(d)
        }
        other => bail!("expected a deployment, got a {}", other.kind().as_str()),
    }
}

#[derive(Args, Debug)]
pub struct RolloutArgs {
    #[command(subcommand)]
    command: RolloutCommand,
    /// Namespace (default: default).
    #[arg(short, long, default_value = "default", global = true)]
    namespace: String,
}

#[derive(Subcommand, Debug)]
enum RolloutCommand {
    /// Follow a rollout until it completes (exit 0) or misses its progress
    /// deadline (exit 1).
    Status {
        /// deploy/NAME
        target: String,
        /// Give up after this long (exit 1); default: wait as long as it takes.
        #[arg(long, value_parser = super::context::parse_duration)]
        timeout: Option<flotilla_api::duration::Duration>,
    },
    /// List the revisions kept for undo.
    History {
        /// deploy/NAME
        target: String,
    },
    /// Go back to the previous revision, or to --to-revision.
    Undo {
        /// deploy/NAME
        target: String,
        /// Revision to return to (default: the one before the current).
        #[arg(long)]
        to_revision: Option<u64>,
    },
    /// Stop rolling out template changes until resumed.
    Pause {
        /// deploy/NAME
        target: String,
    },
    /// Roll out template changes again.
    Resume {
        /// deploy/NAME
        target: String,
    },
}

/// What `rollout status` says about a deployment, and whether it is done.
enum Progress {
    Waiting(String),
    Done(String),
    Failed(String),
}

fn progress(d: &Deployment) -> Progress {
    let name = &d.metadata.name;
    let s = &d.status;
    let want = d.spec.replicas;
    if s.observed_generation < d.metadata.generation {
        return Progress::Waiting(
            "Waiting for the deployment spec update to be observed...".into(),
        );
    }
    if let Some(c) = find_condition(&s.conditions, CONDITION_PROGRESSING) {
        if c.reason == "ProgressDeadlineExceeded" {
            return Progress::Failed(format!(
                "deployment \"{name}\" exceeded its progress deadline: {}",
                c.message
            ));
        }
    }
    if s.updated_replicas < want {
        Progress::Waiting(format!(
            "Waiting for deployment \"{name}\" rollout to finish: {} of {want} new instances have been updated...",
            s.updated_replicas
        ))
    } else if s.replicas > s.updated_replicas {
        Progress::Waiting(format!(
            "Waiting for deployment \"{name}\" rollout to finish: {} old instances are pending termination...",
            s.replicas - s.updated_replicas
        ))
    } else if s.available_replicas < s.updated_replicas {
        Progress::Waiting(format!(
            "Waiting for deployment \"{name}\" rollout to finish: {} of {} updated instances are available...",
            s.available_replicas, s.updated_replicas
        ))
    } else {
        Progress::Done(format!("deployment \"{name}\" successfully rolled out"))
    }
}

impl RolloutArgs {
    pub async fn execute(self, ctx: &Context) -> anyhow::Result<ExitCode> {
        let client = ctx.connect().await?;
        let ns = &self.namespace;
        match self.command {
            RolloutCommand::Status { target, timeout } => {
                let name = deployment_target(&target)?;
                let deadline = timeout.map(|t| Instant::now() + t.as_std());
                let mut last = String::new();
                loop {
                    let d = get_deployment(&client, ns, &name).await?;
                    match progress(&d) {
                        Progress::Done(m) => {
                            println!("{m}");
                            return Ok(ExitCode::SUCCESS);
                        }
                        Progress::Failed(m) => bail!("{m}"),
                        Progress::Waiting(m) => {
                            if m != last {
                                println!("{m}");
                                last = m;
                            }
                        }
                    }
                    if deadline.is_some_and(|d| Instant::now() >= d) {
                        bail!("timed out waiting for deployment \"{name}\" to roll out");
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
            RolloutCommand::History { target } => {
                let name = deployment_target(&target)?;
                let d = get_deployment(&client, ns, &name).await?;
                println!("deployment/{name}");
                println!("{:<10}CHANGE-CAUSE", "REVISION");
                for h in &d.status.history {
                    let cause = if h.change_cause.is_empty() {
                        "<none>"
                    } else {
                        &h.change_cause
                    };
                    println!("{:<10}{cause}", h.revision);
                }
                Ok(ExitCode::SUCCESS)
            }
            RolloutCommand::Undo {
                target,
                to_revision,
            } => {
                let name = deployment_target(&target)?;
                let mut d = get_deployment(&client, ns, &name).await?;
                let current = d.status.revision;
                let entry = match to_revision {
                    Some(r) => d
                        .status
                        .history
                        .iter()
                        .find(|h| h.revision == r)
                        .ok_or_else(|| {
                            let kept: Vec<String> = d
                                .status
                                .history
                                .iter()
                                .map(|h| h.revision.to_string())
                                .collect();
                            anyhow!(
                                "deployment \"{name}\" has no revision {r} (kept: {})",
                                if kept.is_empty() {
                                    "none".into()
                                } else {
                                    kept.join(", ")
                                }
                            )
                        })?,
                    None => d
                        .status
                        .history
                        .iter()
                        .filter(|h| h.revision < current)
                        .max_by_key(|h| h.revision)
                        .ok_or_else(|| {
                            anyhow!("deployment \"{name}\" has no previous revision to go back to")
                        })?,
                }
                .clone();
                if entry.template == d.spec.template {
                    println!(
                        "deployment/{name} skipped rollback (revision {} is the current template)",
                        entry.revision
                    );
                    return Ok(ExitCode::SUCCESS);
                }
                d.spec.template = entry.template;
                client.update(Object::Deployment(d)).await?;
                println!(
                    "deployment/{name} rolled back to revision {}",
                    entry.revision
                );
                Ok(ExitCode::SUCCESS)
            }
            RolloutCommand::Pause { target } => set_paused(&client, ns, &target, true).await,
            RolloutCommand::Resume { target } => set_paused(&client, ns, &target, false).await,
        }
    }
}

async fn set_paused(
    client: &Client,
    ns: &str,
    target: &str,
    paused: bool,
) -> anyhow::Result<ExitCode> {
    let name = deployment_target(target)?;
    let mut d = get_deployment(client, ns, &name).await?;
    let word = if paused { "paused" } else { "resumed" };
    if d.spec.paused == paused {
        println!("deployment/{name} already {word}");
        return Ok(ExitCode::SUCCESS);
    }
    d.spec.paused = paused;
    client.update(Object::Deployment(d)).await?;
    println!("deployment/{name} {word}");
    Ok(ExitCode::SUCCESS)
}

#[derive(Args, Debug)]
pub struct ScaleArgs {
    /// deploy/NAME
    target: String,
    /// The new number of replicas.
    #[arg(long)]
    replicas: u32,
    /// Namespace (default: default).
    #[arg(short, long, default_value = "default")]
    namespace: String,
}

impl ScaleArgs {
    pub async fn execute(self, ctx: &Context) -> anyhow::Result<ExitCode> {
        let name = match parse_target(&self.target)? {
            (Kind::Deployment, name) => name,
            (kind, _) => bail!(
                "\"{}\": only deployments scale, not {}",
                self.target,
                kind.plural()
            ),
        };
        let client = ctx.connect().await?;
        let mut d = get_deployment(&client, &self.namespace, &name).await?;
        d.spec.replicas = self.replicas;
        client.update(Object::Deployment(d)).await?;
        println!("deployment/{name} scaled to {}", self.replicas);
        Ok(ExitCode::SUCCESS)
    }
}
