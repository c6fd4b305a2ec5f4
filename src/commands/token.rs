//! `flotilla token create`: a join token, alone on stdout.

use std::process::ExitCode;

use clap::{Args, Subcommand};
use flotilla_api::duration::Duration;
use flotilla_client::wire::{RequestV1, ResponseV1};

use super::Context;

#[derive(Args, Debug)]
pub struct TokenArgs {
    #[command(subcommand)]
    command: TokenCommand,
}

#[derive(Subcommand, Debug)]
enum TokenCommand {
    /// Make a join token that pins this cluster's CA.
    Create {
        /// How long the token stays valid.
        #[arg(long, default_value = "24h", value_parser = super::context::parse_duration)]
        ttl: Duration,
    },
}

impl TokenArgs {
    pub async fn execute(self, ctx: &Context) -> anyhow::Result<ExitCode> {
        match self.command {
            TokenCommand::Create { ttl } => {
                let client = ctx.connect().await?;
                let resp = client
                    .call(RequestV1::CreateToken {
                        ttl_seconds: ttl.as_std().as_secs().max(1),
                    })
                    .await?;
                match resp {
                    ResponseV1::Token(t) => println!("{t}"),
                    other => anyhow::bail!("unexpected response: {other:?}"),
                }
                Ok(ExitCode::SUCCESS)
            }
        }
    }
}
