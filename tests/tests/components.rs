//! Every component in the real `spin.toml` imports only what Spin 3.4+, Spin 4, SpinKube
//! and the hosted Spin platforms provide (WASI 0.2, `spin:postgres@4.0.0`,
//! `fermyon:spin/variables@2.0.0`) and exports the WASI 0.2 HTTP handler.

use libero_tests::host::{engine, load_component, manifest::Manifest};

fn import_allowed(name: &str) -> bool {
    (name.starts_with("wasi:") && name.contains("@0.2."))
        || name == "spin:postgres/postgres@4.0.0"
        || name == "fermyon:spin/variables@2.0.0"
}

#[test]
fn components_use_only_the_portable_spin_interfaces() {
    let manifest = Manifest::load(&libero_tests::repo_root().join("spin.toml")).expect("loading spin.toml");
    assert!(!manifest.components.is_empty(), "spin.toml lists no components");
    let mut problems = Vec::new();
    for component in manifest.components.values() {
        if !component.source.exists() {
            problems.push(format!(
                "{}: {} is missing (run scripts/build-wasm.sh)",
                component.id,
                component.source.display()
            ));
            continue;
        }
        let compiled = load_component(&component.source).expect("compiling the component");
        let ty = compiled.component_type();
        for (name, _) in ty.imports(engine()) {
            if !import_allowed(name) {
                problems.push(format!("{}: imports {name}", component.id));
            }
        }
        let exports: Vec<String> = ty.exports(engine()).map(|(name, _)| name.to_string()).collect();
        if !exports.iter().any(|e| e.starts_with("wasi:http/incoming-handler@0.2.")) {
            problems.push(format!(
                "{}: does not export wasi:http/incoming-handler@0.2.x (exports {exports:?})",
                component.id
            ));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn the_allow_list_accepts_what_it_should() {
    assert!(import_allowed("wasi:http/outgoing-handler@0.2.0"));
    assert!(import_allowed("wasi:io/streams@0.2.6"));
    assert!(!import_allowed("wasi:http/types@0.3.0-rc-2026-01-06"));
    assert!(!import_allowed("fermyon:spin/key-value@2.0.0"));
    assert!(!import_allowed("spin:postgres/postgres@4.2.0"));
}
