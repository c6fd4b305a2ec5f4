//! `flotilla auth whoami` and `flotilla auth can-i`: who this client is, and
//! whether the server would allow a request, asked of the server itself so
//! the answer is the authorizer's.

use std::process::ExitCode;

use clap::{Args, Subcommand};
use flotilla_api::object::Kind;
use flotilla_api::rbac::CLUSTER_RESOURCES;
use flotilla_client::wire::{RequestV1, ResponseV1};

use super::Context;

#[derive(Args, Debug)]
pub struct AuthArgs {
    #[command(subcommand)]
    command: AuthCommand,
}

#[derive(Subcommand, Debug)]
enum AuthCommand {
    /// Print this client's identity and groups, as the server sees them.
    Whoami,
    /// Ask whether a request would be allowed: prints yes (exit 0) or no
    /// (exit 1), and why with -v.
    CanI {
        /// get, list, watch, create, update, patch or delete.
        verb: String,
        /// A kind (instances, deploy, svc, …), a subresource
        /// (instances/logs), or tokens, members, users; KIND/NAME names one.
        resource: String,
        /// The namespace (default: default; ignored for cluster-scoped kinds).
        #[arg(short = 'n', long, default_value = "default")]
        namespace: String,
        /// Ask across all namespaces.
        #[arg(short = 'A', long)]
        all_namespaces: bool,
        /// Ask about another identity (user:NAME); needs cluster-admin.
        #[arg(long = "as")]
        as_identity: Option<String>,
        /// A group of the --as identity; repeatable.
        #[arg(long = "as-group", requires = "as_identity")]
        as_groups: Vec<String>,
        /// Print why.
        #[arg(short, long)]
        verbose: bool,
    },
}

/// `instances`, `deploy/web`, `instances/logs`, `tokens` as (resource, name).
fn resource_and_name(text: &str) -> anyhow::Result<(String, String)> {
    let (head, tail) = match text.split_once('/') {
        Some((h, t)) => (h, Some(t)),
        None => (text, None),
    };
    if CLUSTER_RESOURCES.contains(&head) {
        return Ok((head.to_string(), tail.unwrap_or_default().to_string()));
    }
    let kind = Kind::parse(head)?;
    let plural = kind.plural();
    Ok(match tail {
        Some(sub) if ["status", "logs", "portforward", "bind", "tunnel"].contains(&sub) => {
            (format!("{plural}/{sub}"), String::new())
        }
        Some(name) => (plural.to_string(), name.to_string()),
        None => (plural.to_string(), String::new()),
    })
}

impl AuthArgs {
    pub async fn execute(self, ctx: &Context) -> anyhow::Result<ExitCode> {
        let client = ctx.connect().await?;
        match self.command {
            AuthCommand::Whoami => {
                let resp = client.call(RequestV1::SelfSubjectReview).await?;
                let ResponseV1::Subject { identity, groups } = resp else {
                    anyhow::bail!("unexpected response: {resp:?}");
                };
                println!("IDENTITY\t{identity}");
                println!("GROUPS\t{}", groups.join(","));
                Ok(ExitCode::SUCCESS)
            }
            AuthCommand::CanI {
                verb,
                resource,
                namespace,
                all_namespaces,
                as_identity,
                as_groups,
                verbose,
            } => {
                let (resource, name) = resource_and_name(&resource)?;
                let resp = client
                    .call(RequestV1::AccessReview {
                        identity: as_identity.unwrap_or_default(),
                        groups: as_groups,
                        verb,
                        resource,
                        namespace: if all_namespaces {
                            String::new()
                        } else {
                            namespace
                        },
                        name,
                    })
                    .await?;
                let ResponseV1::Access { allowed, reason } = resp else {
                    anyhow::bail!("unexpected response: {resp:?}");
                };
                let answer = if allowed { "yes" } else { "no" };
                if verbose {
                    println!("{answer} - {reason}");
                } else {
                    println!("{answer}");
                }
                Ok(if allowed {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::FAILURE
                })
            }
        }
    }
}
