//! Printing objects: tables, YAML and JSON shaped like manifests.

use std::fmt;

use flotilla_api::object::Object;

/// A plain aligned table, Kubernetes style.
pub struct Table {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(header: &[&str]) -> Self {
        Self {
            header: header.iter().map(|s| s.to_string()).collect(),
            rows: Vec::new(),
        }
    }

    pub fn row(&mut self, row: Vec<String>) {
        self.rows.push(row);
    }
}

impl fmt::Display for Table {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let cols = self.header.len();
        let mut widths: Vec<usize> = self.header.iter().map(|h| h.len()).collect();
        for row in &self.rows {
            for (i, cell) in row.iter().enumerate().take(cols) {
                widths[i] = widths[i].max(cell.chars().count());
            }
        }
        let line = |f: &mut fmt::Formatter<'_>, cells: &[String]| -> fmt::Result {
            let mut out = String::new();
            for (i, cell) in cells.iter().enumerate().take(cols) {
                if i + 1 == cols {
                    out.push_str(cell);
                } else {
                    out.push_str(&format!("{:<width$}   ", cell, width = widths[i]));
                }
            }
            writeln!(f, "{}", out.trim_end())
        };
        line(f, &self.header)?;
        for row in &self.rows {
            line(f, row)?;
        }
        Ok(())
    }
}

/// Output format of `get`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Table,
    Wide,
    Yaml,
    Json,
}

impl Format {
    pub fn parse(s: Option<&str>) -> anyhow::Result<Self> {
        Ok(match s {
            None => Format::Table,
            Some("wide") => Format::Wide,
            Some("yaml") => Format::Yaml,
            Some("json") => Format::Json,
            Some(other) => {
                anyhow::bail!("--output: \"{other}\" is not a format (expected wide, yaml or json)")
            }
        })
    }
}

/// A table of objects of one kind.
pub fn table(objects: &[Object], wide: bool, with_namespace: bool) -> Table {
    let header: Vec<&'static str> = match objects.first() {
        Some(o) => super::columns::columns(o, wide)
            .into_iter()
            .map(|(h, _)| h)
            .collect(),
        None => vec!["NAME"],
    };
    let mut full: Vec<&str> = Vec::new();
    if with_namespace {
        full.push("NAMESPACE");
    }
    full.extend(header.iter().copied());
    let mut t = Table::new(&full);
    for o in objects {
        let mut row = Vec::new();
        if with_namespace {
            row.push(o.meta().namespace.clone());
        }
        row.extend(super::columns::columns(o, wide).into_iter().map(|(_, v)| v));
        t.row(row);
    }
    t
}

/// A list as `{"kind":"List","items":[...]}`.
pub fn list_value(objects: &[Object]) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": flotilla_api::object::API_VERSION,
        "kind": "List",
        "items": objects.iter().map(Object::to_manifest).collect::<Vec<_>>(),
    })
}

pub fn print_value(value: &serde_json::Value, format: Format) -> anyhow::Result<()> {
    match format {
        Format::Json => println!("{}", serde_json::to_string_pretty(value)?),
        _ => print!("{}", serde_yaml_ng::to_string(value)?),
    }
    Ok(())
}

/// `kind/name` as apply and delete print it.
pub fn kind_name(o: &Object) -> String {
    format!("{}/{}", o.kind().as_str().to_lowercase(), o.meta().name)
}
