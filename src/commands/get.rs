//! `flotilla get KIND [NAME]`: tables, YAML or JSON; `-w` follows changes.

use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use flotilla_api::object::Kind;
use flotilla_client::wire::ErrorCode;
use flotilla_client::ClientError;

use super::output::{list_value, print_value, table, Format};
use super::Context;

#[derive(Args, Debug)]
pub struct GetArgs {
    /// Kind: instance|inst, deployment|deploy, service|svc, namespace|ns, node|no, ...
    kind: String,
    /// One object's name.
    name: Option<String>,
    /// Namespace (default: default).
    #[arg(short, long)]
    namespace: Option<String>,
    /// Every namespace.
    #[arg(short = 'A', long, conflicts_with = "namespace")]
    all_namespaces: bool,
    /// Label selector, e.g. app=web,tier!=db.
    #[arg(short = 'l', long, default_value = "")]
    selector: String,
    /// Field selector, e.g. spec.nodeName=edge-1,status.phase!=Running.
    #[arg(long, default_value = "")]
    field_selector: String,
    /// Output: wide, yaml or json.
    #[arg(short, long)]
    output: Option<String>,
    /// After listing, print every change.
    #[arg(short, long)]
    watch: bool,
}

impl GetArgs {
    pub async fn execute(self, ctx: &Context) -> anyhow::Result<ExitCode> {
        let kind = Kind::parse(&self.kind)?;
        let format = Format::parse(self.output.as_deref())?;
        let client = ctx.connect().await?;
        let namespace = self.namespace.clone().unwrap_or_else(|| "default".into());
        let ns_filter = if self.all_namespaces || !kind.namespaced() {
            None
        } else {
            Some(namespace.as_str())
        };
        let revision;
        if let Some(name) = &self.name {
            let obj = client.get(kind, &namespace, name).await?;
            revision = obj.meta().revision();
            match format {
                Format::Json | Format::Yaml => print_value(&obj.to_manifest(), format)?,
                Format::Table | Format::Wide => {
                    print!(
                        "{}",
                        table(std::slice::from_ref(&obj), format == Format::Wide, false)
                    )
                }
            }
        } else {
            let (items, rev) = client
                .list_selected(
                    kind,
                    ns_filter,
                    &self.selector,
                    &self.field_selector,
                    flotilla_client::wire::Consistency::Linearizable,
                )
                .await?;
            revision = rev;
            match format {
                Format::Json | Format::Yaml => print_value(&list_value(&items), format)?,
                Format::Table | Format::Wide => {
                    if items.is_empty() && !self.watch {
                        match ns_filter {
                            Some(ns) => eprintln!("No {} found in namespace {ns}.", kind.plural()),
                            None => eprintln!("No {} found.", kind.plural()),
                        }
                    } else {
                        print!(
                            "{}",
                            table(&items, format == Format::Wide, self.all_namespaces)
                        );
                    }
                }
            }
        }
        if !self.watch {
            return Ok(ExitCode::SUCCESS);
        }
        self.follow(ctx, kind, ns_filter, revision, format).await
    }

    async fn follow(
        &self,
        ctx: &Context,
        kind: Kind,
        ns_filter: Option<&str>,
        mut revision: u64,
        format: Format,
    ) -> anyhow::Result<ExitCode> {
        use std::io::Write;
        loop {
            let client = match ctx.connect().await {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("warning: {e}; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            let mut stream = client
                .watch_selected(
                    Some(kind),
                    ns_filter,
                    &self.selector,
                    &self.field_selector,
                    revision,
                )
                .await?;
            loop {
                match stream.next().await {
                    Ok(Some(event)) => {
                        revision = event.revision;
                        if let Some(name) = &self.name {
                            if &event.object.meta().name != name {
                                continue;
                            }
                        }
                        match format {
                            Format::Json => {
                                let v = serde_json::json!({
                                    "type": event.event_type.to_string(),
                                    "revision": event.revision,
                                    "object": event.object.to_manifest(),
                                });
                                println!("{}", serde_json::to_string(&v)?);
                            }
                            Format::Yaml => {
                                println!("---");
                                print_value(&event.object.to_manifest(), format)?;
                            }
                            Format::Table | Format::Wide => {
                                let t = table(
                                    std::slice::from_ref(&event.object),
                                    format == Format::Wide,
                                    self.all_namespaces,
                                );
                                let text = t.to_string();
                                let row = text.lines().nth(1).unwrap_or_default();
                                println!("{:<9} {row}", event.event_type.to_string());
                            }
                        }
                        std::io::stdout().flush()?;
                    }
                    Ok(None) => break,
                    Err(ClientError::Api(e)) if e.code == ErrorCode::TooOld => {
                        anyhow::bail!("{e}")
                    }
                    Err(e) => {
                        eprintln!("warning: watch interrupted: {e}; reconnecting");
                        break;
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}
