//! The part of Spin's manifest v2 (`spin.toml`) the Libero app uses: application
//! variables, HTTP triggers and components with their sources, variables and
//! `allowed_outbound_hosts`. Unknown fields are rejected where Spin rejects them, so a
//! typo in `spin.toml` fails here as it would under `spin up`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::Deserialize;

/// A parsed, validated manifest.
#[derive(Debug, Clone)]
pub struct Manifest {
    pub name: String,
    /// The directory holding `spin.toml`; component sources are relative to it.
    pub dir: PathBuf,
    pub variables: BTreeMap<String, Variable>,
    pub routes: Vec<HttpTrigger>,
    pub components: BTreeMap<String, Component>,
}

/// An application variable (`[variables]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Variable {
    #[serde(default)]
    pub default: Option<String>,
    #[serde(default)]
    pub required: bool,
    #[serde(default)]
    pub secret: bool,
    #[serde(default)]
    pub description: Option<String>,
}

/// An `[[trigger.http]]` entry.
#[derive(Debug, Clone)]
pub struct HttpTrigger {
    /// The route as written (`/session-complete`, `/functions/v1/...`).
    pub route: String,
    pub component: String,
}

/// A `[component.<id>]` table.
#[derive(Debug, Clone)]
pub struct Component {
    pub id: String,
    /// Absolute path of the `.wasm`.
    pub source: PathBuf,
    /// Entries as written (templates allowed).
    pub allowed_outbound_hosts: Vec<String>,
    /// Component variable name → template.
    pub variables: BTreeMap<String, String>,
    /// WASI environment variables.
    pub environment: BTreeMap<String, String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawManifest {
    spin_manifest_version: u32,
    application: RawApplication,
    #[serde(default)]
    variables: BTreeMap<String, Variable>,
    #[serde(default)]
    trigger: RawTriggers,
    #[serde(default)]
    component: BTreeMap<String, RawComponent>,
}

#[derive(Deserialize)]
struct RawApplication {
    name: String,
}

#[derive(Deserialize, Default)]
struct RawTriggers {
    #[serde(default)]
    http: Vec<RawHttpTrigger>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHttpTrigger {
    route: RawRoute,
    component: Option<String>,
    #[serde(default)]
    #[allow(dead_code)] // accepted for compatibility; only the default executor is supported
    executor: Option<toml::Value>,
    #[serde(default)]
    #[allow(dead_code)]
    id: Option<String>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum RawRoute {
    Path(String),
    Private {
        #[allow(dead_code)]
        private: bool,
    },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawComponent {
    source: RawSource,
    #[serde(default)]
    allowed_outbound_hosts: Vec<String>,
    #[serde(default)]
    variables: BTreeMap<String, String>,
    #[serde(default)]
    environment: BTreeMap<String, String>,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    build: Option<toml::Value>,
    #[serde(default)]
    files: Option<toml::Value>,
    #[serde(default)]
    exclude_files: Option<toml::Value>,
    #[serde(default)]
    key_value_stores: Option<Vec<String>>,
    #[serde(default)]
    sqlite_databases: Option<Vec<String>>,
    #[serde(default)]
    ai_models: Option<Vec<String>>,
    #[serde(default)]
    targets: Option<toml::Value>,
    #[serde(default)]
    tool: Option<toml::Value>,
    #[serde(default)]
    profile: Option<toml::Value>,
    #[serde(default)]
    dependencies: Option<toml::Value>,
    #[serde(default)]
    dependencies_inherit_configuration: Option<toml::Value>,
    #[serde(default)]
    allowed_http_hosts: Option<Vec<String>>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum RawSource {
    Path(String),
    Other(#[allow(dead_code)] toml::Value),
}

impl Manifest {
    /// Reads and validates `spin.toml`.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading manifest {}", path.display()))?;
        let dir = path.parent().map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from("."));
        let dir = if dir.as_os_str().is_empty() { PathBuf::from(".") } else { dir };
        Self::parse(&text, &dir).with_context(|| format!("invalid manifest {}", path.display()))
    }

    /// Parses manifest text; `dir` is where relative sources are resolved.
    pub fn parse(text: &str, dir: &Path) -> Result<Self> {
        let raw: RawManifest = toml::from_str(text)?;
        if raw.spin_manifest_version != 2 {
            bail!("spin_manifest_version must be 2");
        }
        for (name, var) in &raw.variables {
            super::variables::validate_name(name).with_context(|| format!("application variable {name:?}"))?;
            match (var.required, &var.default) {
                (true, Some(_)) => bail!("variable {name:?} has both `required = true` and a default"),
                (false, None) => bail!("variable {name:?} needs a `default` or `required = true`"),
                _ => {}
            }
        }

        let mut components = BTreeMap::new();
        for (id, raw_component) in raw.component {
            if raw_component.allowed_http_hosts.is_some() {
                bail!("component {id:?}: `allowed_http_hosts` is deprecated; use `allowed_outbound_hosts`");
            }
            let source = match raw_component.source {
                RawSource::Path(p) => dir.join(p),
                RawSource::Other(_) => {
                    bail!("component {id:?}: only local file sources are supported by this host")
                }
            };
            for (var, template) in &raw_component.variables {
                super::variables::validate_name(var).with_context(|| format!("component {id:?} variable {var:?}"))?;
                let template = super::variables::Template::parse(template)
                    .with_context(|| format!("component {id:?} variable {var:?}"))?;
                for name in template.referenced() {
                    if !raw.variables.contains_key(name) {
                        bail!("component {id:?} variable {var:?} refers to unknown application variable {name:?}");
                    }
                }
            }
            for entry in &raw_component.allowed_outbound_hosts {
                let template = super::variables::Template::parse(entry)
                    .with_context(|| format!("component {id:?} allowed_outbound_hosts entry {entry:?}"))?;
                for name in template.referenced() {
                    if !raw.variables.contains_key(name) {
                        bail!("component {id:?}: allowed_outbound_hosts entry {entry:?} refers to unknown variable {name:?}");
                    }
                }
            }
            let _ = (
                raw_component.description,
                raw_component.build,
                raw_component.files,
                raw_component.exclude_files,
                raw_component.key_value_stores,
                raw_component.sqlite_databases,
                raw_component.ai_models,
                raw_component.targets,
                raw_component.tool,
                raw_component.profile,
                raw_component.dependencies,
                raw_component.dependencies_inherit_configuration,
            );
            components.insert(
                id.clone(),
                Component {
                    id,
                    source,
                    allowed_outbound_hosts: raw_component.allowed_outbound_hosts,
                    variables: raw_component.variables,
                    environment: raw_component.environment,
                },
            );
        }

        let mut routes = Vec::new();
        for trigger in raw.trigger.http {
            let component = trigger
                .component
                .context("[[trigger.http]] without `component` (inline components are not supported)")?;
            if !components.contains_key(&component) {
                bail!("[[trigger.http]] refers to unknown component {component:?}");
            }
            match trigger.route {
                RawRoute::Path(route) => {
                    if !route.starts_with('/') {
                        bail!("route {route:?} must start with '/'");
                    }
                    routes.push(HttpTrigger { route, component });
                }
                // Private endpoints answer only service chaining, which this host does not do.
                RawRoute::Private { .. } => {}
            }
        }

        Ok(Manifest {
            name: raw.application.name,
            dir: dir.to_path_buf(),
            variables: raw.variables,
            routes,
            components,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MANIFEST: &str = r#"
spin_manifest_version = 2
[application]
name = "demo"
[variables]
api_key = { required = true, secret = true }
base = { default = "https://example.com" }
[[trigger.http]]
route = "/a/..."
component = "a"
[component.a]
source = "a.wasm"
allowed_outbound_hosts = ["{{ base }}"]
[component.a.variables]
key = "{{ api_key }}"
"#;

    #[test]
    fn parses_the_fields_the_app_uses() {
        let m = Manifest::parse(MANIFEST, Path::new("/app")).unwrap();
        assert_eq!(m.routes[0].route, "/a/...");
        assert_eq!(m.components["a"].source, Path::new("/app/a.wasm"));
        assert!(m.variables["api_key"].required);
    }

    #[test]
    fn rejects_unknown_variables_and_fields() {
        let bad = MANIFEST.replace("{{ api_key }}", "{{ nope }}");
        assert!(Manifest::parse(&bad, Path::new("/")).is_err());
        let bad = MANIFEST.replace("source = \"a.wasm\"", "source = \"a.wasm\"\nsorce = 1");
        assert!(Manifest::parse(&bad, Path::new("/")).is_err());
    }
}
