//! `libero runtime-config`: a Spin runtime config file whose `static` variables provider
//! holds every setting, with its value from the environment (`SPIN_VARIABLE_<NAME>`, as
//! `spin up` reads it) or its default.
//!
//! Why: Spin 4 resolves each variable read through its providers in order, the
//! environment provider last, and that provider runs every lookup in
//! `tokio::task::block_in_place`, which hands the worker thread's runtime to another thread.
//! A request that reads settings from it pays for that every time (0.28 ms of Spin's CPU
//! per session-complete, and ~44 ms stalls on keep-alive connections; docs/benchmark-notes.md). A
//! `static` provider placed before it answers from memory, and a read it answers never
//! reaches the environment provider, so every setting is in the file.

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use libero_shared::settings::{self, Setting};

#[derive(clap::Args, Debug)]
pub struct RuntimeConfigArgs {
    /// The file to write (mode 0600: it holds the secrets); then start Spin with
    /// `spin up --runtime-config-file <file>`
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
}

pub fn command(args: RuntimeConfigArgs) -> Result<()> {
    let text = render(&|name| std::env::var(env_name(name)).ok())?;
    write_private(&args.out, &text)?;
    eprintln!(
        "libero: wrote the {} settings to {}; serve with `spin up --runtime-config-file {}`. Its values win over \
         SPIN_VARIABLE_*: run this again after changing a setting.",
        settings::ALL.len(),
        args.out.display(),
        args.out.display()
    );
    Ok(())
}

/// `SPIN_VARIABLE_<NAME>`: where Spin's environment provider looks for a variable.
pub fn env_name(setting: &str) -> String {
    format!("SPIN_VARIABLE_{}", setting.to_ascii_uppercase())
}

/// The file's text: every setting, its value from `env` (by setting name) or, when that
/// is unset or empty, its default. A required setting without a value is an error naming
/// each one missing.
pub fn render(env: &dyn Fn(&str) -> Option<String>) -> Result<String> {
    let mut values = Vec::new();
    let mut missing = Vec::new();
    for setting in settings::ALL {
        match value(setting, env) {
            Some(value) => values.push((setting.name, value)),
            None => missing.push(env_name(setting.name)),
        }
    }
    if !missing.is_empty() {
        bail!("set {} (required settings have no default)", missing.join(", "));
    }
    Ok(format!(
        "# Written by `libero runtime-config`: every setting of the app for Spin's static variables\n\
         # provider, so no request asks the environment provider (docs/deploy.md). It holds secrets.\n\
         # These values win over SPIN_VARIABLE_*: write it again after changing a setting.\n{}",
        static_provider(&values)
    ))
}

/// A runtime config with one `static` variables provider holding `values` (name, value).
pub fn static_provider(values: &[(&str, String)]) -> String {
    let mut text = String::from("[[variables_provider]]\ntype = \"static\"\n\n[variables_provider.values]\n");
    for (name, value) in values {
        text.push_str(&format!("{name} = {}\n", toml_string(value)));
    }
    text
}

fn value(setting: &Setting, env: &dyn Fn(&str) -> Option<String>) -> Option<String> {
    env(setting.name).filter(|v| !v.is_empty()).or_else(|| setting.default.map(str::to_string))
}

/// A TOML basic string: quotes, backslashes and control characters escaped.
fn toml_string(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 2);
    out.push('"');
    for c in value.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Writes `text` to `path` readable by its owner only, also when the file existed.
fn write_private(path: &Path, text: &str) -> Result<()> {
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))?;
    use std::os::unix::fs::PermissionsExt as _;
    file.set_permissions(std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("making {} private", path.display()))?;
    file.write_all(text.as_bytes()).with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_setting_is_written_from_the_environment_or_its_default() {
        let env = |name: &str| match name {
            "database_url" => Some("postgres://u:p@127.0.0.1:5432/db".to_string()),
            "allowed_origins" => Some(String::new()),
            "jwt_audience" => Some("my-app".to_string()),
            _ => None,
        };
        let text = render(&env).unwrap();
        let values: Vec<&str> = text.lines().skip_while(|l| *l != "[variables_provider.values]").skip(1).collect();
        assert_eq!(values.len(), settings::ALL.len());
        assert!(values.contains(&r#"database_url = "postgres://u:p@127.0.0.1:5432/db""#));
        assert!(values.contains(&r#"jwt_audience = "my-app""#));
        assert!(values.contains(&r#"allowed_origins = "*""#), "empty is the default, as in the components");
        assert!(values.contains(&r#"stripe_secret_key = """#));
    }

    #[test]
    fn a_required_setting_without_a_value_is_named() {
        let error = render(&|_| None).unwrap_err().to_string();
        assert!(error.contains("SPIN_VARIABLE_DATABASE_URL"), "{error}");
    }

    #[test]
    fn values_are_toml_strings() {
        assert_eq!(toml_string(r#"{"keys":[]}"#), r#""{\"keys\":[]}""#);
        assert_eq!(toml_string("a\\b\nc\u{1}"), r#""a\\b\nc\u0001""#);
    }

    #[test]
    fn the_file_is_private_even_when_it_existed() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = std::env::temp_dir().join(format!("libero-runtime-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("rc.toml");
        std::fs::write(&path, "old, longer than what replaces it").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        write_private(&path, "new").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "new");
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
