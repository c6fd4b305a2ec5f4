//! `flotilla cluster members|remove`: the store's peers.

use std::process::ExitCode;

use clap::{Args, Subcommand};
use flotilla_client::wire::{RequestV1, ResponseV1};

use super::output::Table;
use super::Context;

#[derive(Args, Debug)]
pub struct ClusterArgs {
    #[command(subcommand)]
    command: ClusterCommand,
}

#[derive(Subcommand, Debug)]
enum ClusterCommand {
    /// List the store's peers and their roles.
    Members {
        /// Output format: table (default) or json.
        #[arg(short, long)]
        output: Option<String>,
    },
    /// Remove a peer from the store.
    Remove {
        /// The peer's id.
        id: u64,
    },
}

impl ClusterArgs {
    pub async fn execute(self, ctx: &Context) -> anyhow::Result<ExitCode> {
        let client = ctx.connect().await?;
        match self.command {
            ClusterCommand::Members { output } => {
                let ResponseV1::Members(members) = client.call(RequestV1::Members).await? else {
                    anyhow::bail!("unexpected response to members");
                };
                match output.as_deref() {
                    Some("json") => {
                        let items: Vec<serde_json::Value> = members
                            .iter()
                            .map(|m| {
                                serde_json::json!({
                                    "id": m.id,
                                    "address": m.address,
                                    "role": m.role,
                                    "matchedIndex": m.matched_index,
                                })
                            })
                            .collect();
                        println!("{}", serde_json::to_string_pretty(&items)?);
                    }
                    None | Some("table") => {
                        let mut t = Table::new(&["ID", "ADDRESS", "ROLE", "MATCHED"]);
                        for m in &members {
                            t.row(vec![
                                m.id.to_string(),
                                m.address.clone(),
                                m.role.clone(),
                                m.matched_index.map_or("-".into(), |i| i.to_string()),
                            ]);
                        }
                        print!("{t}");
                    }
                    Some(other) => anyhow::bail!(
                        "--output: \"{other}\" is not a format (expected table or json)"
                    ),
                }
            }
            ClusterCommand::Remove { id } => {
                client.call(RequestV1::RemoveMember { id }).await?;
                println!("peer {id} removed");
            }
        }
        Ok(ExitCode::SUCCESS)
    }
}
