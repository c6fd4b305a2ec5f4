//! `flotilla delete KIND NAME` and `flotilla delete -f FILE`.

use std::process::ExitCode;

use clap::Args;
use flotilla_api::object::Kind;
use flotilla_client::wire::Propagation;

use super::apply::load_manifests;
use super::Context;

#[derive(Args, Debug)]
pub struct DeleteArgs {
    /// Kind (omit with -f).
    kind: Option<String>,
    /// Name.
    name: Option<String>,
    /// Delete the objects in these manifests.
    #[arg(short = 'f', long = "filename", conflicts_with_all = ["kind", "name"])]
    files: Vec<String>,
    /// Namespace (default: default).
    #[arg(short, long)]
    namespace: Option<String>,
    /// What happens to dependents: background, foreground or orphan.
    #[arg(long, default_value = "background")]
    cascade: String,
}

impl DeleteArgs {
    pub async fn execute(self, ctx: &Context) -> anyhow::Result<ExitCode> {
        let propagation = match self.cascade.as_str() {
            "background" | "true" => Propagation::Background,
            "foreground" => Propagation::Foreground,
            "orphan" | "false" => Propagation::Orphan,
            other => anyhow::bail!("--cascade: \"{other}\" is not a policy (expected background, foreground or orphan)"),
        };
        let targets: Vec<(Kind, String, String)> = if !self.files.is_empty() {
            load_manifests(&self.files, self.namespace.as_deref())?
                .into_iter()
                .map(|o| (o.kind(), o.meta().namespace.clone(), o.meta().name.clone()))
                .collect()
        } else {
            let (Some(kind), Some(name)) = (&self.kind, &self.name) else {
                anyhow::bail!(
                    "say what to delete: `flotilla delete KIND NAME` or `flotilla delete -f FILE`"
                );
            };
            let ns = self.namespace.clone().unwrap_or_else(|| "default".into());
            vec![(Kind::parse(kind)?, ns, name.clone())]
        };
        // Namespaces last: deleting one first would take its objects with it and
        // turn their own deletes into "not found".
        let mut targets = targets;
        targets.sort_by_key(|(kind, _, _)| *kind == Kind::Namespace);
        let client = ctx.connect().await?;
        let mut outcomes = super::Outcomes::default();
        for (kind, ns, name) in targets {
            match client.delete(kind, &ns, &name, propagation).await {
                Ok((_, true)) => println!("{} \"{name}\" deleted", kind.as_str().to_lowercase()),
                Ok((_, false)) => println!(
                    "{} \"{name}\" marked for deletion (waiting on finalizers)",
                    kind.as_str().to_lowercase()
                ),
                Err(e) => {
                    eprintln!("error: {e}");
                    outcomes.failed(&e);
                }
            }
        }
        Ok(outcomes.exit_code())
    }
}
