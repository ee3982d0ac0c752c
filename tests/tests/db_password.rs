//! The test database has a password, so the secret-leak check that runs after every
//! end-to-end test (`TestApp`'s drop: no secret variable's value in any response or log
//! line) has the database password to look for. Without one (a cluster that trusts every
//! TCP login) the check of `database_url` would pass whatever the app printed.

use std::collections::HashMap;

use libero_tests::contract::{leaks, secret_values, secret_variable_names, MIN_SECRET_LEN};
use libero_tests::db;
use libero_tests::host::{self, AppOptions};
use libero_tests::testing::db_host;

fn password_of(url: &str) -> Option<String> {
    let config: tokio_postgres::Config = url.parse().expect("a Postgres URL");
    config.get_password().map(|p| String::from_utf8_lossy(p).into_owned())
}

#[test]
fn the_test_database_and_each_test_s_copy_have_a_password() {
    let admin = db::admin_url().expect("a test database (scripts/pg.sh start, or DATABASE_URL)");
    let password = password_of(&admin).unwrap_or_default();
    assert!(
        password.len() >= MIN_SECRET_LEN,
        "the test database's URL has no password of {MIN_SECRET_LEN}+ characters, so no leak of it could be \
         found: use scripts/pg.sh (it sets one), or give DATABASE_URL's role a password"
    );
    let per_test = db::with_dbname(&admin, "test_copy").unwrap();
    assert_eq!(password_of(&per_test).as_deref(), Some(password.as_str()), "per-test URLs keep the password");
}

/// The fixture component answers `/fixture/var?name=database_url` with the variable's
/// value: a deliberate leak, which the check must report.
#[tokio::test]
async fn a_database_password_in_a_response_is_reported() {
    let wasm = libero_tests::fixture_wasm();
    let dir = tempfile::tempdir().unwrap();
    let manifest = dir.path().join("spin.toml");
    std::fs::write(
        &manifest,
        format!(
            r#"spin_manifest_version = 2
[application]
name = "leak"

[variables]
database_url = {{ required = true, secret = true }}

[[trigger.http]]
route = "/fixture/..."
component = "fixture"

[component.fixture]
source = "{}"
[component.fixture.variables]
database_url = "{{{{ database_url }}}}"
"#,
            wasm.display()
        ),
    )
    .unwrap();
    let test_db = db::fresh_database().await.expect("a test database");
    let variables: HashMap<String, String> =
        [("database_url".to_string(), test_db.url.clone()), ("db_host".to_string(), db_host(&test_db.url))].into();
    let mut options = AppOptions::new(manifest.clone());
    options.variables = variables.clone();
    options.record_responses = true;
    let app = host::start(options).await.expect("the fixture app");
    let response = reqwest::get(app.url("/fixture/var?name=database_url")).await.unwrap();
    assert_eq!(response.status(), 200);
    let _ = response.text().await.unwrap();

    let secrets = secret_values(&secret_variable_names(&manifest), &variables);
    let found = leaks(&secrets, &app.recorded(), &app.logs());
    assert!(
        found.iter().any(|f| f.starts_with("database_url in the body")),
        "the database password in a response body went unreported: {found:?} (secrets looked for: {})",
        secrets.len()
    );
}
