//! `flotilla token create|list|revoke`: join tokens. A node token admits a
//! node; a peer token a store peer (which receives the CA key). `create`
//! prints the token alone on stdout.

use std::process::ExitCode;

use clap::{Args, Subcommand, ValueEnum};
use flotilla_api::duration::Duration;
use flotilla_client::wire::{RequestV1, ResponseV1, TokenKind};

use super::output::Table;
use super::Context;

#[derive(Args, Debug)]
pub struct TokenArgs {
    #[command(subcommand)]
    command: TokenCommand,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Kind {
    /// Joins a node (`flotilla node --token`).
    Node,
    /// Joins a store peer (`flotilla server --join --token`).
    Peer,
}

#[derive(Subcommand, Debug)]
enum TokenCommand {
    /// Make a join token that pins this cluster's CA.
    Create {
        /// Whom the token admits.
        #[arg(long, value_enum, default_value = "node")]
        kind: Kind,
        /// How long the token stays valid.
        #[arg(long, default_value = "24h", value_parser = super::context::parse_duration)]
        ttl: Duration,
        /// How many joins it admits (0: any number until it expires).
        #[arg(long, default_value_t = 0)]
        uses: u32,
    },
    /// List the join tokens (never their secrets).
    List,
    /// Revoke a join token: it admits no one from now on.
    Revoke {
        /// The token's id (`token list`, or the third part of its text).
        id: String,
    },
}

impl TokenArgs {
    pub async fn execute(self, ctx: &Context) -> anyhow::Result<ExitCode> {
        let client = ctx.connect().await?;
        match self.command {
            TokenCommand::Create { kind, ttl, uses } => {
                let resp = client
                    .call(RequestV1::CreateJoinToken {
                        kind: match kind {
                            Kind::Node => TokenKind::Node,
                            Kind::Peer => TokenKind::Peer,
                        },
                        ttl_seconds: ttl.as_std().as_secs().max(1),
                        uses,
                    })
                    .await?;
                match resp {
                    ResponseV1::Token(t) => println!("{t}"),
                    other => anyhow::bail!("unexpected response: {other:?}"),
                }
            }
            TokenCommand::List => {
                let resp = client.call(RequestV1::ListTokens).await?;
                let ResponseV1::Tokens(tokens) = resp else {
                    anyhow::bail!("unexpected response: {resp:?}");
                };
                let mut table =
                    Table::new(&["ID", "KIND", "EXPIRES", "USES LEFT", "USED", "STATUS"]);
                for t in tokens {
                    let expires = time::OffsetDateTime::from_unix_timestamp(t.expires_unix)
                        .map(flotilla_api::meta::format_timestamp)
                        .unwrap_or_else(|_| t.expires_unix.to_string());
                    let status = if t.revoked {
                        "revoked"
                    } else if t.uses_left == Some(0) {
                        "used-up"
                    } else {
                        "valid"
                    };
                    table.row(vec![
                        t.id,
                        t.kind.to_string(),
                        expires,
                        t.uses_left
                            .map_or("unlimited".to_string(), |n| n.to_string()),
                        t.used.to_string(),
                        status.to_string(),
                    ]);
                }
                print!("{table}");
            }
            TokenCommand::Revoke { id } => {
                client
                    .call(RequestV1::RevokeToken { id: id.clone() })
                    .await?;
                println!("token {id} revoked");
            }
        }
        Ok(ExitCode::SUCCESS)
    }
}
