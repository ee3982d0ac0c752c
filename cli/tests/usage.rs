//! The command line itself, through the binary: `--help` for every command, usage
//! mistakes as clap reports them (exit code 2, nothing run), the settings found in the
//! environment, and the shell completions. No database is needed.

use std::process::{Command, Output};

use clap::CommandFactory;
use libero_cli::cli::Cli;

const BIN: &str = env!("CARGO_BIN_EXE_libero");

/// Every command that runs something, with what it takes (the flags and arguments the
/// documentation names).
const COMMANDS: &[(&str, &[&str])] = &[
    ("migrate", &["--database-url <URL>", "--migrations <DIR>"]),
    ("adopt", &["--dry-run", "--database-url <URL>", "--migrations <DIR>"]),
    ("analytics", &["--days <N>", "--csv", "--only <VIEW>", "--refresh", "--database-url <URL>"]),
    ("stripe sync", &["--dry-run", "--live", "--database-url <URL>", "--api-base <URL>"]),
    (
        "stripe reconcile",
        &["--once", "--max-events <N>", "--max-seconds <S>", "--database-url <URL>", "--api-base <URL>"],
    ),
    ("account export", &["<USER_ID>", "--database-url <URL>"]),
    ("account delete", &["<USER_ID>", "--database-url <URL>", "--api-base <URL>"]),
    ("push keys", &[]),
    ("runtime-config", &["--out <FILE>"]),
    ("completions", &["<SHELL>", "bash", "zsh", "fish"]),
];

/// `libero <args>`, with none of the settings of the test's environment.
fn libero(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .env_remove("DATABASE_URL")
        .env_remove("SPIN_VARIABLE_DATABASE_URL")
        .env_remove("STRIPE_SECRET_KEY")
        .env_remove("SPIN_VARIABLE_STRIPE_SECRET_KEY")
        .output()
        .unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Every command of the tree, by its path (`stripe sync`), groups (`stripe`) included.
fn tree(command: &clap::Command, prefix: &str, out: &mut Vec<(String, bool)>) {
    for sub in command.get_subcommands().filter(|s| s.get_name() != "help") {
        let path = format!("{prefix}{}", sub.get_name());
        out.push((path.clone(), sub.has_subcommands()));
        tree(sub, &format!("{path} "), out);
    }
}

#[test]
fn every_command_is_there_and_says_what_it_takes() {
    let mut all = Vec::new();
    tree(&Cli::command(), "", &mut all);
    let mut leaves: Vec<&str> = all.iter().filter(|(_, group)| !group).map(|(path, _)| path.as_str()).collect();
    leaves.sort_unstable();
    let mut documented: Vec<&str> = COMMANDS.iter().map(|(path, _)| *path).collect();
    documented.sort_unstable();
    assert_eq!(leaves, documented);

    let top = libero(&["--help"]);
    assert!(top.status.success(), "{}", text(&top.stderr));
    for (path, _) in &all {
        let name = path.split(' ').next().unwrap();
        assert!(text(&top.stdout).contains(&format!("  {name} ")), "{name} listed:\n{}", text(&top.stdout));
    }

    for (path, group) in &all {
        let words: Vec<&str> = path.split(' ').collect();
        let takes = COMMANDS.iter().find(|(p, _)| p == path).map_or(&[][..], |(_, takes)| takes);
        for help in
            [&[&words[..], &["--help"]].concat(), &[&words[..], &["-h"]].concat(), &[&["help"], &words[..]].concat()]
        {
            let out = libero(help);
            let stdout = text(&out.stdout);
            assert!(out.status.success(), "{help:?}: {}", text(&out.stderr));
            assert!(stdout.contains(&format!("Usage: libero {path}")), "{help:?}:\n{stdout}");
            assert!(!stdout.lines().next().unwrap_or("").is_empty(), "{help:?} starts with what it does:\n{stdout}");
            for flag in takes {
                assert!(stdout.contains(flag), "{help:?} names {flag}:\n{stdout}");
            }
            if *group {
                assert!(stdout.contains("Commands:"), "{help:?}:\n{stdout}");
            }
        }
    }
}

#[test]
fn a_flag_a_command_does_not_take_is_a_usage_error_that_names_it() {
    for (path, _) in COMMANDS {
        let mut args: Vec<&str> = path.split(' ').collect();
        args.push("--no-such-flag");
        let out = libero(&args);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains("error: unexpected argument '--no-such-flag' found"), "{args:?}: {stderr}");
        assert!(stderr.contains(&format!("Usage: libero {path}")), "{args:?}: {stderr}");
        assert!(out.stdout.is_empty(), "{args:?}: nothing runs");
    }
    // A close miss gets a suggestion.
    let out = libero(&["adopt", "--dry-rn"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("similar argument exists: '--dry-run'"), "{}", text(&out.stderr));
    let out = libero(&["stripe", "reconcil"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("similar subcommand exists: 'reconcile'"), "{}", text(&out.stderr));
}

#[test]
fn a_bad_value_is_a_usage_error_that_says_what_is_wanted() {
    for (args, says) in [
        (&["analytics", "--days", "0"][..], "invalid value '0' for '--days <N>'"),
        (&["analytics", "--only", "user_profiles"], "[possible values: analytics_active_users,"),
        (&["stripe", "reconcile", "--max-seconds=3601"], "invalid value '3601' for '--max-seconds <S>'"),
        (&["stripe", "sync", "--live=yes"], "unexpected value 'yes' for '--live'"),
        (&["account", "delete", "42"], "the user id is a UUID, not \"42\""),
        (&["account", "export"], "the following required arguments were not provided:\n  <USER_ID>"),
        (&["migrate", "--database-url"], "a value is required for '--database-url <URL>'"),
        (&["completions", "tcsh"], "[possible values: bash, zsh, fish]"),
    ] {
        let out = libero(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", text(&out.stderr));
        assert!(text(&out.stderr).contains(says), "{args:?}: {}", text(&out.stderr));
    }
    // No command at all: the list of commands, as a usage error.
    let out = libero(&[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("Commands:"), "{}", text(&out.stderr));
}

#[test]
fn the_database_is_the_flag_else_the_environment_in_order() {
    let run = |flag: Option<&str>, env: &[(&str, &str)]| {
        let mut command = Command::new(BIN);
        command.arg("migrate").env_remove("DATABASE_URL").env_remove("SPIN_VARIABLE_DATABASE_URL");
        if let Some(url) = flag {
            command.args(["--database-url", url]);
        }
        command.envs(env.iter().copied());
        let out = command.output().unwrap();
        assert_eq!(out.status.code(), Some(1), "a failure to run, not a usage error");
        text(&out.stderr)
    };
    // Addresses that do not parse: the error names the one used, and nothing connects.
    let both = [("DATABASE_URL", "from-database-url"), ("SPIN_VARIABLE_DATABASE_URL", "from-spin")];
    assert!(run(Some("from-flag"), &both).contains("not a Postgres address: from-flag"));
    assert!(run(None, &both).contains("not a Postgres address: from-database-url"));
    let empty_first = [("DATABASE_URL", ""), ("SPIN_VARIABLE_DATABASE_URL", "from-spin")];
    assert!(run(None, &empty_first).contains("not a Postgres address: from-spin"));
    assert!(run(None, &[]).contains("give --database-url, or set DATABASE_URL or SPIN_VARIABLE_DATABASE_URL"));
}

#[test]
fn completions_cover_every_command_and_flag() {
    for (shell, marker) in [("bash", "complete -F _libero"), ("zsh", "#compdef libero"), ("fish", "complete -c libero")]
    {
        let out = libero(&["completions", shell]);
        assert!(out.status.success(), "{shell}: {}", text(&out.stderr));
        let script = text(&out.stdout);
        assert!(script.contains(marker), "{shell}:\n{script}");
        for word in ["migrate", "adopt", "reconcile", "export", "keys", "max-events", "api-base", "dry-run"] {
            assert!(script.contains(word), "{shell} completes {word}");
        }
    }
    // The bash script is valid bash.
    if let Ok(bash) = Command::new("bash").args(["-n", "-c", &text(&libero(&["completions", "bash"]).stdout)]).output()
    {
        assert!(bash.status.success(), "{}", text(&bash.stderr));
    }
}
