//! Spin variables: application variables (`[variables]`), component variables whose values
//! are templates over them (`"{{ openai_api_key }}"`, `"Bearer {{ key }}"`), and the
//! providers that give application variables their values, in Spin's order:
//!
//! 1. [`AppOptions::variables`](super::AppOptions::variables), an in-process map standing
//!    in for `SPIN_VARIABLE_<NAME>` so parallel tests need no process environment;
//! 2. the process environment `SPIN_VARIABLE_<NAME>` (when enabled);
//! 3. the variable's `default`.
//!
//! A required variable without a value stops the app from starting, naming the variable,
//! as `spin up` does.

use std::collections::{BTreeMap, HashMap};

use anyhow::{anyhow, bail, Result};

use super::manifest::Variable;

/// Checks a variable name the way Spin does: lowercase ASCII letters, digits and single
/// underscores; starts with a letter, ends with a letter or digit.
pub fn validate_name(key: &str) -> Result<()> {
    let reason = if key.is_empty() {
        "must not be empty"
    } else if key.chars().any(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')) {
        "may contain only lower-case letters, numbers, and underscores"
    } else if !key.as_bytes()[0].is_ascii_lowercase() {
        "must start with a lowercase ASCII letter"
    } else if !key.as_bytes()[key.len() - 1].is_ascii_alphanumeric() {
        "must end with a lowercase ASCII letter or digit"
    } else if key.contains("__") {
        "must not contain multiple consecutive underscores"
    } else {
        return Ok(());
    };
    bail!("invalid variable name {key:?}: {reason}")
}

/// A parsed template: literal text and `{{ name }}` references.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    parts: Vec<Part>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Lit(String),
    Var(String),
}

impl Template {
    pub fn parse(text: &str) -> Result<Self> {
        let mut parts = Vec::new();
        let mut rest = text;
        while let Some(start) = rest.find("{{") {
            if start > 0 {
                parts.push(Part::Lit(rest[..start].to_string()));
            }
            let after = &rest[start + 2..];
            let end = after.find("}}").ok_or_else(|| anyhow!("unterminated '{{{{' in template {text:?}"))?;
            let name = after[..end].trim();
            validate_name(name)?;
            parts.push(Part::Var(name.to_string()));
            rest = &after[end + 2..];
        }
        if !rest.is_empty() {
            parts.push(Part::Lit(rest.to_string()));
        }
        Ok(Template { parts })
    }

    /// The application variables this template uses.
    pub fn referenced(&self) -> impl Iterator<Item = &str> {
        self.parts.iter().filter_map(|p| match p {
            Part::Var(v) => Some(v.as_str()),
            Part::Lit(_) => None,
        })
    }

    fn render(&self, lookup: impl Fn(&str) -> Result<String>) -> Result<String> {
        let mut out = String::new();
        for part in &self.parts {
            match part {
                Part::Lit(l) => out.push_str(l),
                Part::Var(v) => out.push_str(&lookup(v)?),
            }
        }
        Ok(out)
    }
}

/// Gives application variables their values.
#[derive(Debug, Clone)]
pub struct Resolver {
    app: BTreeMap<String, Variable>,
    overrides: HashMap<String, String>,
    use_env: bool,
}

impl Resolver {
    /// `overrides` keys are variable names (`openai_api_key`); upper-case keys are
    /// accepted too, as `SPIN_VARIABLE_` suffixes are.
    pub fn new(app: BTreeMap<String, Variable>, overrides: &HashMap<String, String>, use_env: bool) -> Self {
        let overrides = overrides.iter().map(|(k, v)| (k.to_ascii_lowercase(), v.clone())).collect();
        Resolver { app, overrides, use_env }
    }

    /// The value of application variable `name`.
    pub fn variable(&self, name: &str) -> Result<String> {
        let var = self.app.get(name).ok_or_else(|| anyhow!("unknown application variable {name:?}"))?;
        if let Some(v) = self.overrides.get(name) {
            return Ok(v.clone());
        }
        if self.use_env {
            if let Ok(v) = std::env::var(format!("SPIN_VARIABLE_{}", name.to_ascii_uppercase())) {
                return Ok(v);
            }
        }
        var.default.clone().ok_or_else(|| {
            anyhow!("no provider resolved required variable {name:?} (set SPIN_VARIABLE_{})", name.to_ascii_uppercase())
        })
    }

    /// Renders a template against the application variables.
    pub fn render(&self, template: &Template) -> Result<String> {
        template.render(|name| self.variable(name))
    }

    /// Fails, naming every one, if a required variable has no value (Spin refuses to
    /// start then).
    pub fn check_required(&self) -> Result<()> {
        let missing: Vec<&str> =
            self.app.keys().filter(|name| self.variable(name).is_err()).map(String::as_str).collect();
        if !missing.is_empty() {
            bail!(
                "no provider resolved required variable(s): {} (set SPIN_VARIABLE_<NAME> for each)",
                missing.join(", ")
            );
        }
        Ok(())
    }

    /// All of a component's variables, rendered.
    pub fn component_values(&self, templates: &BTreeMap<String, String>) -> Result<HashMap<String, String>> {
        templates.iter().map(|(name, text)| Ok((name.clone(), self.render(&Template::parse(text)?)?))).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resolver(overrides: &[(&str, &str)]) -> Resolver {
        let mut app = BTreeMap::new();
        app.insert(
            "base".into(),
            Variable { default: Some("b".into()), required: false, secret: false, description: None },
        );
        app.insert("key".into(), Variable { default: None, required: true, secret: true, description: None });
        let overrides = overrides.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Resolver::new(app, &overrides, false)
    }

    #[test]
    fn names_follow_spin_rules() {
        for ok in ["a", "abc", "a1b2c3", "a_1", "a_1_b_3"] {
            validate_name(ok).unwrap();
        }
        for bad in ["", "aX", "1bc", "_x", "x.y", "x_", "a__b", "x-y"] {
            assert!(validate_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn templates_mix_text_and_variables() {
        let r = resolver(&[("key", "k")]);
        let t = Template::parse("pre-{{ base }}-{{key}}-post").unwrap();
        assert_eq!(r.render(&t).unwrap(), "pre-b-k-post");
        assert!(Template::parse("{{ base").is_err());
    }

    #[test]
    fn overrides_beat_defaults_and_required_is_enforced() {
        assert_eq!(resolver(&[("BASE", "o"), ("key", "k")]).variable("base").unwrap(), "o");
        let err = resolver(&[]).check_required().unwrap_err().to_string();
        assert!(err.contains("key"), "{err}");
    }
}
