//! `flotilla describe KIND NAME`: one object in full.

use std::process::ExitCode;

use super::columns::format_age;
use clap::Args;
use flotilla_api::event::Event;
use flotilla_api::meta::{elapsed_since, ObjectMeta};
use flotilla_api::namespace::DEFAULT_NAMESPACE;
use flotilla_api::object::{Kind, Object};
use flotilla_client::Client;

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
        print_events(&client, kind, meta).await?;
        Ok(ExitCode::SUCCESS)
    }
}

/// The events about the object, oldest first, as Kubernetes' describe shows them.
async fn print_events(client: &Client, kind: Kind, meta: &ObjectMeta) -> anyhow::Result<()> {
    let namespace = if meta.namespace.is_empty() {
        DEFAULT_NAMESPACE
    } else {
        &meta.namespace
    };
    let (items, _) = client.list(Kind::Event, Some(namespace), "").await?;
    let mut events: Vec<Event> = items
        .into_iter()
        .filter_map(|o| match o {
            Object::Event(e)
                if e.involved_object.uid == meta.uid && e.involved_object.kind == kind.as_str() =>
            {
                Some(e)
            }
            _ => None,
        })
        .collect();
    if events.is_empty() {
        println!("Events:            <none>");
        return Ok(());
    }
    events.sort_by(|a, b| a.last_timestamp.cmp(&b.last_timestamp));
    println!("Events:");
    println!(
        "  {:<8} {:<26} {:<8} {:<20} MESSAGE",
        "TYPE", "REASON", "AGE", "FROM"
    );
    let now = time::OffsetDateTime::now_utc();
    for e in events {
        let age = elapsed_since(&e.last_timestamp, now)
            .map(format_age)
            .unwrap_or_else(|| "?".into());
        let count = if e.count > 1 {
            format!(" (x{})", e.count)
        } else {
            String::new()
        };
        println!(
            "  {:<8} {:<26} {:<8} {:<20} {}{count}",
            e.type_.to_string(),
            e.reason,
            age,
            e.source.component,
            e.message
        );
    }
    Ok(())
}
