//! `flotilla describe KIND NAME`: one object in full.

use std::process::ExitCode;

use clap::Args;
use flotilla_api::object::Kind;

use super::Context;

#[derive(Args, Debug)]
pub struct DescribeArgs {
    /// Kind.
    kind: String,
    /// Name.
    name: String,
    /// Namespace (default: default).
    #[arg(short, long, default_value = "default")]
    namespace: String,
}

impl DescribeArgs {
    pub async fn execute(self, ctx: &Context) -> anyhow::Result<ExitCode> {
        let kind = Kind::parse(&self.kind)?;
        let client = ctx.connect().await?;
        let obj = client.get(kind, &self.namespace, &self.name).await?;
        let meta = obj.meta();
        println!("Name:              {}", meta.name);
        if kind.namespaced() {
            println!("Namespace:         {}", meta.namespace);
        }
        println!("Kind:              {}", kind.as_str());
        println!("UID:               {}", meta.uid);
        println!("Resource version:  {}", meta.resource_version);
        println!("Created:           {}", meta.creation_timestamp);
        if !meta.deletion_timestamp.is_empty() {
            println!("Deleting since:    {}", meta.deletion_timestamp);
        }
        let labels: Vec<String> = meta
            .labels
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        println!(
            "Labels:            {}",
            if labels.is_empty() {
                "<none>".into()
            } else {
                labels.join(",")
            }
        );
        let manifest = obj.to_manifest();
        for section in ["spec", "status", "subsets"] {
            if let Some(v) = manifest.get(section) {
                let title = format!("{}{}:", section[..1].to_uppercase(), &section[1..]);
                println!("{title}");
                for line in serde_yaml_ng::to_string(v)?.lines() {
                    println!("  {line}");
                }
            }
        }
        Ok(ExitCode::SUCCESS)
    }
}
