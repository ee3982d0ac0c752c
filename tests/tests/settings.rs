//! `spin.toml`, the deployment files and `docs/configuration.md` held to the registry of
//! settings (`shared/src/settings.rs`): a variable added, renamed, defaulted or made
//! secret in one place and not the other fails here, as does a component whose
//! `[component.X.variables]` block lacks a setting it reads (under Spin that read would
//! quietly see nothing and fall back to the default).

use std::collections::BTreeSet;
use std::path::Path;

use libero_shared::settings::{self, ALL, COMPONENTS};
use libero_tests::repo_root;

fn manifest() -> toml::Table {
    let text = std::fs::read_to_string(repo_root().join("spin.toml")).expect("spin.toml is readable");
    text.parse().expect("spin.toml is TOML")
}

fn registry_names() -> BTreeSet<String> {
    ALL.iter().map(|s| s.name.to_string()).collect()
}

/// The `{{ name }}` references in a template.
fn references(template: &str) -> Vec<String> {
    template
        .split("{{")
        .skip(1)
        .filter_map(|rest| rest.split_once("}}"))
        .map(|(name, _)| name.trim().to_string())
        .collect()
}

#[test]
fn application_variables_are_the_registry() {
    let manifest = manifest();
    let variables = manifest["variables"].as_table().expect("[variables]");
    let in_manifest: BTreeSet<String> = variables.keys().cloned().collect();
    let registry = registry_names();
    let missing: Vec<_> = registry.difference(&in_manifest).collect();
    let unregistered: Vec<_> = in_manifest.difference(&registry).collect();
    assert!(missing.is_empty(), "in shared/src/settings.rs but not in spin.toml [variables]: {missing:?}");
    assert!(unregistered.is_empty(), "in spin.toml [variables] but not in shared/src/settings.rs: {unregistered:?}");

    let mut problems = Vec::new();
    for setting in ALL {
        let definition = &variables[setting.name];
        let required = definition.get("required").and_then(|v| v.as_bool()) == Some(true);
        let default = definition.get("default").and_then(|v| v.as_str());
        match (setting.default, required, default) {
            (None, true, None) => {}
            (None, _, _) => {
                problems.push(format!("{}: the registry has it required, spin.toml does not", setting.name))
            }
            (Some(d), false, Some(m)) if d == m => {}
            (Some(d), _, m) => {
                problems.push(format!("{}: default {d:?} in the registry, {m:?} in spin.toml", setting.name))
            }
        }
        let secret = definition.get("secret").and_then(|v| v.as_bool()) == Some(true);
        if secret != setting.secret {
            problems
                .push(format!("{}: secret = {} in the registry, {secret} in spin.toml", setting.name, setting.secret));
        }
    }
    assert!(
        problems.is_empty(),
        "spin.toml [variables] disagrees with shared/src/settings.rs:\n{}",
        problems.join("\n")
    );
}

#[test]
fn each_component_is_given_exactly_what_it_reads() {
    let manifest = manifest();
    let components = manifest["component"].as_table().expect("[component]");
    let declared: BTreeSet<&str> = COMPONENTS.iter().map(|c| c.name).collect();
    let in_manifest: BTreeSet<&str> = components.keys().map(String::as_str).collect();
    assert_eq!(in_manifest, declared, "the components of spin.toml and of settings::COMPONENTS");

    let mut problems = Vec::new();
    for component in COMPONENTS {
        let block = components[component.name].get("variables").and_then(|v| v.as_table()).cloned().unwrap_or_default();
        let given: BTreeSet<&str> = block.keys().map(String::as_str).collect();
        let reads: BTreeSet<&str> = component.settings().iter().map(|s| s.name).collect();
        for name in reads.difference(&given) {
            problems.push(format!("[component.{}.variables] lacks {name} = \"{{{{ {name} }}}}\"", component.name));
        }
        for name in given.difference(&reads) {
            problems.push(format!(
                "[component.{}.variables] has {name}, which settings::COMPONENTS does not say it reads",
                component.name
            ));
        }
        for (name, value) in &block {
            if value.as_str() != Some(format!("{{{{ {name} }}}}").as_str()) {
                problems.push(format!("[component.{}.variables] {name} is not \"{{{{ {name} }}}}\"", component.name));
            }
        }
    }
    assert!(problems.is_empty(), "spin.toml disagrees with settings::COMPONENTS:\n{}", problems.join("\n"));
}

#[test]
fn settings_read_by_no_component_are_used_by_the_manifest() {
    let manifest = manifest();
    let components = manifest["component"].as_table().expect("[component]");
    let mut templated = BTreeSet::new();
    for component in components.values() {
        for host in component.get("allowed_outbound_hosts").and_then(|h| h.as_array()).into_iter().flatten() {
            templated.extend(references(host.as_str().unwrap_or("")));
        }
    }
    let registry = registry_names();
    let unregistered: Vec<_> = templated.difference(&registry).collect();
    assert!(unregistered.is_empty(), "allowed_outbound_hosts names unregistered variables: {unregistered:?}");
    let unused: Vec<&str> =
        ALL.iter().filter(|s| settings::readers(s).is_empty() && !templated.contains(s.name)).map(|s| s.name).collect();
    assert!(unused.is_empty(), "settings nothing reads or uses: {unused:?}");
}

/// Rust source that is not a test: files other than `tests.rs`, up to their first
/// `#[cfg(test)]`.
fn non_test_sources(dir: &Path, out: &mut Vec<(String, String)>) {
    for entry in std::fs::read_dir(dir).expect("a source directory").flatten() {
        let path = entry.path();
        if path.is_dir() {
            non_test_sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") && path.file_name().is_some_and(|n| n != "tests.rs") {
            let text = std::fs::read_to_string(&path).expect("readable source");
            let code = text.split("#[cfg(test)]").next().unwrap_or("").to_string();
            out.push((path.strip_prefix(repo_root()).unwrap_or(&path).display().to_string(), code));
        }
    }
}

#[test]
fn code_reads_settings_only_through_the_registry() {
    let root = repo_root();
    let mut sources = Vec::new();
    non_test_sources(&root.join("shared/src"), &mut sources);
    for entry in std::fs::read_dir(root.join("functions")).expect("functions/").flatten() {
        non_test_sources(&entry.path().join("src"), &mut sources);
    }
    let mut problems = Vec::new();
    for (path, code) in &sources {
        if path.ends_with("settings.rs") {
            continue;
        }
        if code.contains(".variable(") {
            problems.push(format!("{path}: reads a variable by name (`.variable(`); use its shared::settings entry"));
        }
        for setting in ALL {
            if code.contains(&format!("\"{}\"", setting.name)) {
                problems.push(format!(
                    "{path}: names the setting \"{}\"; use settings::{}",
                    setting.name,
                    setting.name.to_uppercase()
                ));
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn deployment_files_name_registered_settings() {
    let root = repo_root();
    let mut problems = Vec::new();
    // The SpinKube manifest: plain values for settings, secretKeyRefs for secrets.
    let spinapp = std::fs::read_to_string(root.join("deploy/spinapp.yaml")).expect("deploy/spinapp.yaml");
    let mut lines = spinapp.lines().peekable();
    let mut named = 0;
    while let Some(line) = lines.next() {
        let Some(name) = line.trim().strip_prefix("- name: ") else { continue };
        named += 1;
        let next = lines.peek().copied().unwrap_or("");
        match settings::find(name.trim()) {
            None => problems.push(format!("deploy/spinapp.yaml: {name} is not a setting")),
            Some(s) if s.secret && !next.contains("secretKeyRef") => {
                problems.push(format!("deploy/spinapp.yaml: {name} is secret, give it from the Secret"))
            }
            Some(s) if !s.secret && next.contains("secretKeyRef") => {
                problems.push(format!("deploy/spinapp.yaml: {name} is not secret in the registry"))
            }
            Some(_) => {}
        }
    }
    assert!(named > 0, "deploy/spinapp.yaml lists no variables: has its shape changed?");
    // Scripts that set SPIN_VARIABLE_<NAME>.
    let mut scripts: Vec<_> =
        std::fs::read_dir(root.join("scripts")).expect("scripts/").flatten().map(|e| e.path()).collect();
    scripts.sort();
    for path in scripts {
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        for rest in text.split("SPIN_VARIABLE_").skip(1) {
            let name: String =
                rest.chars().take_while(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == '_').collect();
            if name.is_empty() || name.ends_with('_') {
                continue; // a prefix (`SPIN_VARIABLE_*`, `SPIN_VARIABLE_<NAME>`)
            }
            if settings::find(&name.to_ascii_lowercase()).is_none() {
                problems.push(format!("{}: SPIN_VARIABLE_{name} is not a setting", path.display()));
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn configuration_doc_is_generated_from_the_registry() {
    let path = repo_root().join("docs/configuration.md");
    let expected = settings::markdown();
    if std::env::var_os("LIBERO_BLESS").is_some() {
        std::fs::write(&path, &expected).expect("docs/configuration.md is writable");
    }
    let actual = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        actual == expected,
        "docs/configuration.md is out of date with shared/src/settings.rs; regenerate it with\n  \
         LIBERO_BLESS=1 cargo test -p libero-tests --test suite -- settings::"
    );
}

/// `libero runtime-config`'s file, served by real Spin: every setting comes from its
/// static provider (no `SPIN_VARIABLE_*` given but a wrong secret, which the file
/// outranks), values round-trip through TOML, and a signed-in completion is recorded.
#[tokio::test]
async fn a_runtime_config_from_the_cli_serves_every_setting_under_spin() {
    use libero_tests::spin::{find_spin, SpinApp};
    if find_spin().is_none() {
        return libero_tests::testing::skip("no Spin found (SPIN, PATH, ../shared/bin/spin)");
    }
    let app = libero_tests::testing::TestApp::spawn().await;
    // A value TOML must escape, in a setting the request reads.
    let mut variables = app.variables.clone();
    variables.insert("allowed_origins".into(), "https://a.example, \"quoted\\\"\nnext".into());
    let text = libero_cli::runtime_config::render(&|name| variables.get(name).cloned()).expect("every setting");
    let parsed: toml::Table = text.parse().expect("the file is TOML");
    let values = parsed["variables_provider"][0]["values"].as_table().expect("static values");
    assert_eq!(values.len(), ALL.len());
    assert_eq!(values["allowed_origins"].as_str(), Some(variables["allowed_origins"].as_str()));
    assert_eq!(values["openai_chat_model"].as_str(), settings::OPENAI_CHAT_MODEL.default);

    let dir = tempfile::tempdir().expect("a temporary directory");
    let file = dir.path().join("runtime-config.toml");
    std::fs::write(&file, &text).expect("writing the runtime config");
    let environment = [("supabase_jwt_secret".to_string(), "not-the-secret-in-the-file".to_string())].into();
    let spin = SpinApp::start_with_runtime_config(&repo_root().join("spin.toml"), &environment, &file)
        .await
        .expect("spin up with the runtime config");

    let user = app.create_user().await;
    let response = app
        .client
        .post(format!("http://{}/functions/v1/session-complete", spin.addr))
        .bearer_auth(app.token_for(user))
        .header("origin", "https://a.example")
        .json(&serde_json::json!({
            "session_id": uuid::Uuid::new_v4().to_string(), "ego_state": "guardian", "duration_seconds": 600,
        }))
        .send()
        .await
        .expect("request");
    assert_eq!(response.status().as_u16(), 200, "{:?}", spin.logs());
    assert_eq!(
        response.headers().get("access-control-allow-origin").and_then(|v| v.to_str().ok()),
        Some("https://a.example")
    );
    let recorded: i64 = app
        .db_client()
        .await
        .query_one("SELECT count(*) FROM public.sessions WHERE user_id = $1", &[&user])
        .await
        .expect("counting sessions")
        .get(0);
    assert_eq!(recorded, 1);
}
