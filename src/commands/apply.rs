//! `flotilla apply -f FILE|DIR|-`: create or update every object in the
//! manifests. Every file is parsed and validated before anything is sent, so a
//! bad document anywhere writes nothing.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{anyhow, Context as _};
use clap::Args;
use flotilla_api::manifest::parse_manifests;
use flotilla_api::object::{Kind, Object};

use super::output::kind_name;
use super::Context;

#[derive(Args, Debug)]
pub struct ApplyArgs {
    /// Manifest file, directory of manifests (*.yaml, *.yml, *.json), or - for stdin.
    #[arg(short = 'f', long = "filename", required = true)]
    files: Vec<String>,
    /// Namespace for objects that name none.
    #[arg(short, long)]
    namespace: Option<String>,
}

/// Reads and parses every manifest named; errors name the file, document and field.
pub fn load_manifests(files: &[String], namespace: Option<&str>) -> anyhow::Result<Vec<Object>> {
    let mut objects = Vec::new();
    for f in files {
        for (source, text) in read_sources(f)? {
            let parsed = parse_manifests(&text).map_err(|e| anyhow!("{source}: {e}"))?;
            objects.extend(parsed);
        }
    }
    if let Some(ns) = namespace {
        for o in &mut objects {
            if o.kind().namespaced()
                && (o.meta().namespace.is_empty() || o.meta().namespace == "default")
            {
                o.meta_mut().namespace = ns.to_string();
            }
        }
    }
    Ok(objects)
}

fn read_sources(f: &str) -> anyhow::Result<Vec<(String, String)>> {
    if f == "-" {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .context("reading manifests from stdin")?;
        return Ok(vec![("<stdin>".into(), text)]);
    }
    let path = Path::new(f);
    if path.is_dir() {
        let mut files: Vec<PathBuf> = std::fs::read_dir(path)
            .with_context(|| format!("reading directory {f}"))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                matches!(
                    p.extension().and_then(|e| e.to_str()),
                    Some("yaml" | "yml" | "json")
                )
            })
            .collect();
        files.sort();
        files
            .into_iter()
            .map(|p| {
                let text = std::fs::read_to_string(&p)
                    .with_context(|| format!("reading {}", p.display()))?;
                Ok((p.display().to_string(), text))
            })
            .collect()
    } else {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {f}"))?;
        Ok(vec![(f.to_string(), text)])
    }
}

impl ApplyArgs {
    pub async fn execute(self, ctx: &Context) -> anyhow::Result<ExitCode> {
        let mut objects = load_manifests(&self.files, self.namespace.as_deref())?;
        if objects.is_empty() {
            anyhow::bail!("no objects found in {}", self.files.join(", "));
        }
        // Namespaces first, so objects in a new namespace can be created in one go.
        objects.sort_by_key(|o| o.kind() != Kind::Namespace);
        let client = ctx.connect().await?;
        let mut failed = false;
        for object in objects {
            let name = kind_name(&object);
            match client.apply(object).await {
                Ok((_, outcome)) => println!("{name} {outcome}"),
                Err(e) => {
                    eprintln!("error: {name}: {e}");
                    failed = true;
                }
            }
        }
        Ok(if failed {
            ExitCode::FAILURE
        } else {
            ExitCode::SUCCESS
        })
    }
}
