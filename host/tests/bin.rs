//! The `libero-host` binary: `serve`.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

/// Kills the server however the test ends.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

const BIN: &str = env!("CARGO_BIN_EXE_libero-host");

#[tokio::test]
async fn serve_prints_its_address_and_answers() {
    let wasm = libero_host::workspace_root().join("target/wasm32-wasip2/release/libero_fixture.wasm");
    assert!(wasm.exists(), "{} is missing: run scripts/build-wasm.sh", wasm.display());
    let dir = tempfile::tempdir().unwrap();
    let manifest = dir.path().join("spin.toml");
    std::fs::write(
        &manifest,
        format!(
            r#"spin_manifest_version = 2
[application]
name = "bin-test"
[variables]
greeting = {{ required = true }}
[[trigger.http]]
route = "/..."
component = "fixture"
[component.fixture]
source = "{}"
[component.fixture.variables]
greeting = "{{{{ greeting }}}}"
"#,
            wasm.display()
        ),
    )
    .unwrap();

    let mut child = KillOnDrop(
        Command::new(BIN)
            .args(["serve", "--quiet", "--listen", "127.0.0.1:0", "--manifest"])
            .arg(&manifest)
            .env("SPIN_VARIABLE_GREETING", "from-env")
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut line = String::new();
    BufReader::new(child.0.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let base = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .to_string();

    let body: serde_json::Value =
        reqwest::get(format!("{base}/var?name=greeting")).await.unwrap().json().await.unwrap();
    drop(child);
    assert_eq!(body, serde_json::json!({"ok": "from-env"}), "SPIN_VARIABLE_ values reach the component");
}
