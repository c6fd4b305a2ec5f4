//! Label selectors: the `-l app=web,tier!=db` string form ([`LabelSelector`]) and
//! the `selector: {matchLabels, matchExpressions}` form used in specs ([`Selector`]).
//!
//! Both reduce to a list of [`Requirement`]s that must all hold.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::validation::{
    check_labels, is_label_value, is_qualified_name, ValidationErrors, LABEL_VALUE_RULE,
    QUALIFIED_NAME_RULE,
};

/// Why a selector string could not be parsed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid label selector {selector:?}: {reason}")]
pub struct LabelSelectorError {
    /// The selector text as given.
    pub selector: String,
    /// What is wrong with it.
    pub reason: String,
}

/// How a [`Requirement`] relates a label key to its values.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Operator {
    /// The label is present and its value is one of `values` (`k=v`, `k in (a,b)`).
    #[default]
    In,
    /// The label is absent or its value is none of `values` (`k!=v`, `k notin (a,b)`).
    NotIn,
    /// The label is present (`k`).
    Exists,
    /// The label is absent (`!k`).
    DoesNotExist,
}

/// One condition on one label key (Kubernetes' `LabelSelectorRequirement`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
pub struct Requirement {
    /// Label key.
    pub key: String,
    /// Relation between the key and the values.
    pub operator: Operator,
    /// Values for `In` and `NotIn`; empty for `Exists` and `DoesNotExist`.
    pub values: Vec<String>,
}

impl Requirement {
    /// True when `labels` satisfy this requirement.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        let value = labels.get(&self.key);
        match self.operator {
            Operator::In => value.is_some_and(|v| self.values.contains(v)),
            Operator::NotIn => value.is_none_or(|v| !self.values.contains(v)),
            Operator::Exists => value.is_some(),
            Operator::DoesNotExist => value.is_none(),
        }
    }

    fn check(&self, errs: &mut ValidationErrors, field: &str) {
        if !is_qualified_name(&self.key) {
            errs.push(
                format!("{field}.key"),
                format!(
                    "{:?} is not a valid label key ({QUALIFIED_NAME_RULE})",
                    self.key
                ),
            );
        }
        match self.operator {
            Operator::In | Operator::NotIn if self.values.is_empty() => errs.push(
                format!("{field}.values"),
                "must not be empty for operator In or NotIn",
            ),
            Operator::Exists | Operator::DoesNotExist if !self.values.is_empty() => errs.push(
                format!("{field}.values"),
                "must be empty for operator Exists or DoesNotExist",
            ),
            _ => {}
        }
        for (i, v) in self.values.iter().enumerate() {
            if !is_label_value(v) {
                errs.push(
                    format!("{field}.values[{i}]"),
                    format!("{v:?} is not a valid label value ({LABEL_VALUE_RULE})"),
                );
            }
        }
    }
}

impl fmt::Display for Requirement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.operator, self.values.as_slice()) {
            (Operator::In, [v]) => write!(f, "{}={v}", self.key),
            (Operator::NotIn, [v]) => write!(f, "{}!={v}", self.key),
            (Operator::In, vs) => write!(f, "{} in ({})", self.key, vs.join(",")),
            (Operator::NotIn, vs) => write!(f, "{} notin ({})", self.key, vs.join(",")),
            (Operator::Exists, _) => f.write_str(&self.key),
            (Operator::DoesNotExist, _) => write!(f, "!{}", self.key),
        }
    }
}

/// A parsed `-l` selector; every requirement must hold. The empty selector
/// matches everything.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LabelSelector {
    /// The requirements, all of which must hold.
    pub requirements: Vec<Requirement>,
}

impl LabelSelector {
    /// Parses `a=b,c!=d,e,!f,g in (x,y),h notin (z)`; `==` is accepted for `=`.
    pub fn parse(s: &str) -> Result<Self, LabelSelectorError> {
        let err = |reason: String| LabelSelectorError {
            selector: s.to_owned(),
            reason,
        };
        let mut requirements = Vec::new();
        for term in split_terms(s).map_err(err)? {
            let term = term.trim();
            if term.is_empty() {
                if s.trim().is_empty() {
                    continue;
                }
                return Err(err("empty requirement".into()));
            }
            let req = parse_term(term).map_err(err)?;
            requirements.push(req);
        }
        Ok(LabelSelector { requirements })
    }

    /// A selector requiring every `key=value` pair of `labels`.
    pub fn from_match_labels(labels: &BTreeMap<String, String>) -> Self {
        LabelSelector {
            requirements: labels
                .iter()
                .map(|(k, v)| Requirement {
                    key: k.clone(),
                    operator: Operator::In,
                    values: vec![v.clone()],
                })
                .collect(),
        }
    }

    /// True when `labels` satisfy every requirement.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.requirements.iter().all(|r| r.matches(labels))
    }

    /// True when this selector has no requirements (and so matches everything).
    pub fn is_empty(&self) -> bool {
        self.requirements.is_empty()
    }
}

impl fmt::Display for LabelSelector {
    /// The selector in the string form [`LabelSelector::parse`] reads.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, r) in self.requirements.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{r}")?;
        }
        Ok(())
    }
}

impl std::str::FromStr for LabelSelector {
    type Err = LabelSelectorError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        LabelSelector::parse(s)
    }
}

/// Splits at commas outside parentheses.
fn split_terms(s: &str) -> Result<Vec<&str>, String> {
    let mut terms = Vec::new();
    let mut depth = 0usize;
    let mut start = 0;
    for (i, c) in s.char_indices() {
        match c {
            '(' => {
                if depth > 0 {
                    return Err("nested parentheses".into());
                }
                depth += 1;
            }
            ')' => {
                depth = depth
                    .checked_sub(1)
                    .ok_or_else(|| "unbalanced ')'".to_owned())?;
            }
            ',' if depth == 0 => {
                terms.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    if depth != 0 {
        return Err("missing ')'".into());
    }
    terms.push(&s[start..]);
    Ok(terms)
}

fn check_key(key: &str) -> Result<String, String> {
    if is_qualified_name(key) {
        Ok(key.to_owned())
    } else {
        Err(format!(
            "{key:?} is not a valid label key ({QUALIFIED_NAME_RULE})"
        ))
    }
}

fn check_value(value: &str) -> Result<String, String> {
    if is_label_value(value) {
        Ok(value.to_owned())
    } else {
        Err(format!(
            "{value:?} is not a valid label value ({LABEL_VALUE_RULE})"
        ))
    }
}

fn parse_term(term: &str) -> Result<Requirement, String> {
    if let Some(key) = term.strip_prefix('!') {
        return Ok(Requirement {
            key: check_key(key.trim())?,
            operator: Operator::DoesNotExist,
            values: Vec::new(),
        });
    }
    if let Some(open) = term.find('(') {
        let head = term[..open].trim();
        let list = term[open + 1..]
            .strip_suffix(')')
            .ok_or_else(|| format!("unexpected text after ')' in {term:?}"))?;
        let (key, op) = head
            .rsplit_once(char::is_whitespace)
            .ok_or_else(|| format!("expected 'KEY in (...)' or 'KEY notin (...)' in {term:?}"))?;
        let operator = match op {
            "in" => Operator::In,
            "notin" => Operator::NotIn,
            other => return Err(format!("unknown operator {other:?} (expected in or notin)")),
        };
        let values = list
            .split(',')
            .map(|v| check_value(v.trim()))
            .collect::<Result<Vec<_>, _>>()?;
        return Ok(Requirement {
            key: check_key(key.trim())?,
            operator,
            values,
        });
    }
    let (key, operator, value) = if let Some((k, v)) = term.split_once("!=") {
        (k, Operator::NotIn, v)
    } else if let Some((k, v)) = term.split_once("==") {
        (k, Operator::In, v)
    } else if let Some((k, v)) = term.split_once('=') {
        (k, Operator::In, v)
    } else {
        return Ok(Requirement {
            key: check_key(term)?,
            operator: Operator::Exists,
            values: Vec::new(),
        });
    };
    Ok(Requirement {
        key: check_key(key.trim())?,
        operator,
        values: vec![check_value(value.trim())?],
    })
}

/// The selector of a workload spec: `{matchLabels: {...}, matchExpressions: [...]}`.
/// An empty selector matches everything; workload validation requires one.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
pub struct Selector {
    /// Labels that must be present with exactly these values.
    pub match_labels: BTreeMap<String, String>,
    /// Further requirements.
    pub match_expressions: Vec<Requirement>,
}

impl Selector {
    /// A selector with only `matchLabels`.
    pub fn from_labels(labels: BTreeMap<String, String>) -> Self {
        Selector {
            match_labels: labels,
            match_expressions: Vec::new(),
        }
    }

    /// True when `labels` satisfy `matchLabels` and every expression.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.match_labels
            .iter()
            .all(|(k, v)| labels.get(k) == Some(v))
            && self.match_expressions.iter().all(|r| r.matches(labels))
    }

    /// True when there is nothing to match.
    pub fn is_empty(&self) -> bool {
        self.match_labels.is_empty() && self.match_expressions.is_empty()
    }

    /// The same selector as a [`LabelSelector`] (e.g. for a list request).
    pub fn to_label_selector(&self) -> LabelSelector {
        let mut s = LabelSelector::from_match_labels(&self.match_labels);
        s.requirements
            .extend(self.match_expressions.iter().cloned());
        s
    }

    /// Records problems with this selector under `field`.
    pub fn check(&self, errs: &mut ValidationErrors, field: &str) {
        check_labels(errs, &format!("{field}.matchLabels"), &self.match_labels);
        for (i, r) in self.match_expressions.iter().enumerate() {
            r.check(errs, &format!("{field}.matchExpressions[{i}]"));
        }
    }
}

impl fmt::Display for Selector {
    /// The selector in `-l` string form, e.g. `app=web,tier in (a,b)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.to_label_selector().fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn parse_and_match() {
        let web = labels(&[("app", "web"), ("tier", "front"), ("env", "prod")]);
        let db = labels(&[("app", "db"), ("tier", "back")]);
        let cases: &[(&str, bool, bool)] = &[
            ("", true, true),
            ("app=web", true, false),
            ("app==web", true, false),
            ("app!=web", false, true),
            ("env", true, false),
            ("!env", false, true),
            ("app=web,tier=front", true, false),
            ("app in (web,db)", true, true),
            ("app notin (web)", false, true),
            ("tier in (front, back),!missing", true, true),
            (" app = web , env ", true, false),
            ("flotilla.dev/role!=x", true, true),
        ];
        for (sel, want_web, want_db) in cases {
            let s = LabelSelector::parse(sel).unwrap_or_else(|e| panic!("{sel}: {e}"));
            assert_eq!(s.matches(&web), *want_web, "{sel} vs web");
            assert_eq!(s.matches(&db), *want_db, "{sel} vs db");
            // The display form parses back to the same selector.
            assert_eq!(LabelSelector::parse(&s.to_string()).expect("reparse"), s);
        }
    }

    #[test]
    fn parse_errors() {
        for sel in [
            "app=web,",
            "a b",
            "app in (web",
            "app in web)",
            "app foo (x)",
            "Bad Key=x",
            "app=has space",
            "=x",
            "app in ((a))",
        ] {
            let err = LabelSelector::parse(sel);
            assert!(err.is_err(), "{sel:?} should not parse: {err:?}");
        }
        let err = LabelSelector::parse("app=-x").unwrap_err();
        assert!(err
            .to_string()
            .starts_with("invalid label selector \"app=-x\""));
    }

    #[test]
    fn spec_selector() {
        let s: Selector = serde_json::from_str(
            r#"{"matchLabels":{"app":"web"},"matchExpressions":[{"key":"tier","operator":"NotIn","values":["db"]}]}"#,
        )
        .expect("json");
        assert!(s.matches(&labels(&[("app", "web")])));
        assert!(!s.matches(&labels(&[("app", "web"), ("tier", "db")])));
        assert!(!s.matches(&labels(&[("app", "api")])));
        assert_eq!(s.to_string(), "app=web,tier!=db");
        let ls = s.to_label_selector();
        assert!(ls.matches(&labels(&[("app", "web")])));
        let from = LabelSelector::from_match_labels(&labels(&[("a", "1")]));
        assert_eq!(from.to_string(), "a=1");
        let bytes = postcard::to_stdvec(&s).expect("encode");
        assert_eq!(postcard::from_bytes::<Selector>(&bytes).expect("decode"), s);
        let bytes = postcard::to_stdvec(&ls).expect("encode");
        assert_eq!(
            postcard::from_bytes::<LabelSelector>(&bytes).expect("decode"),
            ls
        );
    }

    #[test]
    fn selector_validation() {
        let s = Selector {
            match_labels: labels(&[("app", "bad value")]),
            match_expressions: vec![Requirement {
                key: "tier".into(),
                operator: Operator::In,
                values: vec![],
            }],
        };
        let mut errs = ValidationErrors::new();
        s.check(&mut errs, "spec.selector");
        let text = errs.to_string();
        assert!(text.contains("spec.selector.matchLabels.app:"), "{text}");
        assert!(
            text.contains("spec.selector.matchExpressions[0].values:"),
            "{text}"
        );
    }
}
