//! `flotilla apply -f FILE|DIR|-`: create or update every object in the
//! manifests. Every file is parsed and validated before anything is sent, so a
//! bad document anywhere writes nothing.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{anyhow, Context as _};
use clap::Args;
use flotilla_api::manifest::{manifest_files, parse_manifests};
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
    Ok(load_with_dirs(files, namespace)?
        .into_iter()
        .map(|(o, _)| o)
        .collect())
}

/// Like [`load_manifests`], with the directory each object's manifest is in
/// (module paths are relative to it).
pub fn load_with_dirs(
    files: &[String],
    namespace: Option<&str>,
) -> anyhow::Result<Vec<(Object, PathBuf)>> {
    let mut objects = Vec::new();
    for f in files {
        for (source, text) in read_sources(f)? {
            let parsed = parse_manifests(&text).map_err(|e| anyhow!("{source}: {e}"))?;
            let dir = if source == "<stdin>" {
                PathBuf::from(".")
            } else {
                Path::new(&source)
                    .parent()
                    .map(Path::to_path_buf)
                    .unwrap_or_else(|| PathBuf::from("."))
            };
            objects.extend(parsed.into_iter().map(|o| (o, dir.clone())));
        }
    }
    if let Some(ns) = namespace {
        for (o, _) in &mut objects {
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
        let files = manifest_files(path).with_context(|| format!("reading directory {f}"))?;
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

/// The module references of an object: its own spec's or its template's.
fn module_refs(o: &mut Object) -> Vec<&mut String> {
    match o {
        Object::Instance(i) => vec![&mut i.spec.module],
        Object::Deployment(d) => vec![&mut d.spec.template.spec.module],
        Object::DaemonSet(d) => vec![&mut d.spec.template.spec.module],
        Object::Job(j) => vec![&mut j.spec.template.spec.module],
        _ => Vec::new(),
    }
}

/// Reads a module file; `.wat` text is converted to binary here.
fn read_module(path: &Path) -> anyhow::Result<Vec<u8>> {
    let bytes =
        std::fs::read(path).with_context(|| format!("reading module {}", path.display()))?;
    if path.extension().and_then(|e| e.to_str()) == Some("wat") {
        return wat::parse_bytes(&bytes)
            .map(|b| b.into_owned())
            .map_err(|e| anyhow!("{}: {e}", path.display()));
    }
    Ok(bytes)
}

/// Uploads every module named by a local path and puts its digest in the spec.
async fn upload_modules(
    client: &flotilla_client::Client,
    objects: &mut [(Object, PathBuf)],
) -> anyhow::Result<()> {
    let mut uploaded: std::collections::HashMap<PathBuf, String> = Default::default();
    for (object, dir) in objects.iter_mut() {
        let name = kind_name(object);
        for module in module_refs(object) {
            if module.starts_with("sha256:") || module.is_empty() {
                continue;
            }
            let path = dir.join(module.as_str());
            let digest = match uploaded.get(&path) {
                Some(d) => d.clone(),
                None => {
                    let bytes =
                        read_module(&path).with_context(|| format!("{name}: spec.module"))?;
                    let source = path.display().to_string();
                    let stored = client
                        .upload_module(&bytes, &source)
                        .await
                        .map_err(|e| anyhow!("{name}: spec.module: {e}"))?;
                    let Object::Module(m) = stored else {
                        anyhow::bail!(
                            "{name}: the server answered the upload with a {}",
                            stored.kind().as_str()
                        );
                    };
                    uploaded.insert(path.clone(), m.spec.digest.clone());
                    m.spec.digest
                }
            };
            *module = digest;
        }
    }
    Ok(())
}

impl ApplyArgs {
    pub async fn execute(self, ctx: &Context) -> anyhow::Result<ExitCode> {
        let mut with_dirs = load_with_dirs(&self.files, self.namespace.as_deref())?;
        if with_dirs.is_empty() {
            anyhow::bail!("no objects found in {}", self.files.join(", "));
        }
        let client = ctx.connect().await?;
        upload_modules(&client, &mut with_dirs).await?;
        let mut objects: Vec<Object> = with_dirs.into_iter().map(|(o, _)| o).collect();
        // Namespaces first, so objects in a new namespace can be created in one go.
        objects.sort_by_key(|o| o.kind() != Kind::Namespace);
        let mut outcomes = super::Outcomes::default();
        for object in objects {
            let name = kind_name(&object);
            match client.apply(object).await {
                Ok((_, outcome)) => println!("{name} {outcome}"),
                Err(e) => {
                    eprintln!("error: {name}: {e}");
                    outcomes.failed(&e);
                }
            }
        }
        Ok(outcomes.exit_code())
    }
}
