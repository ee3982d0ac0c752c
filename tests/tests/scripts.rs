//! The README's commands from a clone only its owner can enter (mode 0700, like root's
//! home): as root, Postgres runs as the `postgres` user, which must still reach its data.

use std::os::unix::fs::PermissionsExt;
use std::process::Command;

#[test]
fn pg_sh_starts_a_cluster_from_a_private_clone() {
    let clone = tempfile::Builder::new().prefix("libero-private-clone").tempdir().unwrap();
    std::fs::set_permissions(clone.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
    let scripts = clone.path().join("scripts");
    std::fs::create_dir(&scripts).unwrap();
    std::fs::copy(libero_tests::repo_root().join("scripts/pg.sh"), scripts.join("pg.sh")).unwrap();
    let pg = scripts.join("pg.sh");

    let start = Command::new(&pg).arg("start").output().unwrap();
    let stop = || Command::new(&pg).arg("remove").output().unwrap();
    if !start.status.success() {
        stop();
        panic!("pg.sh start from a 0700 clone failed: {}", String::from_utf8_lossy(&start.stderr));
    }
    let url = String::from_utf8(start.stdout).unwrap().trim().to_string();
    let psql = Command::new("psql").args([url.as_str(), "-tAc", "select 41 + 1"]).output();
    let stopped = stop();
    let answer = psql.expect("psql runs");
    assert_eq!(String::from_utf8_lossy(&answer.stdout).trim(), "42", "{}", String::from_utf8_lossy(&answer.stderr));
    assert!(stopped.status.success(), "pg.sh remove: {}", String::from_utf8_lossy(&stopped.stderr));
}
