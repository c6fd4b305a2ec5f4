//! `flotilla user create NAME`: a user's client certificate, signed by the
//! cluster CA, as a client configuration (written with `-o`, else printed).
//! The key is made here and never leaves this machine.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand};
use flotilla_api::duration::Duration;
use flotilla_client::tls;
use flotilla_client::wire::{RequestV1, ResponseV1};
use flotilla_client::ClientConfig;

use super::Context;

#[derive(Args, Debug)]
pub struct UserArgs {
    #[command(subcommand)]
    command: UserCommand,
}

#[derive(Subcommand, Debug)]
enum UserCommand {
    /// Sign a client certificate for user:NAME and make its client
    /// configuration (needs cluster-admin). The user can do nothing until a
    /// RoleBinding or ClusterRoleBinding grants it a role.
    Create {
        /// The user's name (the identity is user:NAME), or component:scheduler
        /// or component:controllers for `flotilla scheduler|controllers` run on
        /// their own.
        name: String,
        /// A group to put the user in (bindings may name groups); repeatable.
        #[arg(long = "group")]
        groups: Vec<String>,
        /// How long the certificate is valid.
        #[arg(long, default_value = "8760h", value_parser = super::context::parse_duration)]
        ttl: Duration,
        /// Write the client configuration here (mode 0600) instead of
        /// printing it.
        #[arg(short = 'o', long = "output")]
        output: Option<PathBuf>,
    },
}

impl UserArgs {
    pub async fn execute(self, ctx: &Context) -> anyhow::Result<ExitCode> {
        let UserCommand::Create {
            name,
            groups,
            ttl,
            output,
        } = self.command;
        let mine = ctx.client_config()?;
        let identity = if name.starts_with("component:") {
            name.clone()
        } else {
            format!("user:{name}")
        };
        let (key_pem, csr_pem) = tls::generate_csr(&identity)?;
        let client = ctx.connect().await?;
        let resp = client
            .call(RequestV1::SignUser {
                name,
                groups,
                csr_pem,
                ttl_seconds: ttl.as_std().as_secs().max(1),
            })
            .await?;
        let ResponseV1::UserCertificate { cert_pem } = resp else {
            anyhow::bail!("unexpected response: {resp:?}");
        };
        let config = ClientConfig {
            server: ctx.server().map_or(mine.server, str::to_string),
            identity,
            ca_cert: mine.ca_cert,
            client_cert: cert_pem,
            client_key: key_pem,
        };
        match output {
            Some(path) => {
                config.save(&path)?;
                eprintln!(
                    "wrote the client configuration of {} to {}",
                    config.identity,
                    path.display()
                );
            }
            None => print!("{}", serde_yaml_ng::to_string(&config)?),
        }
        Ok(ExitCode::SUCCESS)
    }
}
