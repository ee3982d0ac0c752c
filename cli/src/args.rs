//! The commands' arguments: switches (`--live`), and values given as `--name value` or
//! `--name=value`; plus the settings every command finds the same way (flag, then the
//! environment, as `spin up` would see them).

use anyhow::{anyhow, bail, Context, Result};

/// One argument as the command reads it.
pub struct Flag<'a, 'i> {
    /// `--name`, without any `=value`.
    pub name: &'a str,
    arg: &'a str,
    inline: Option<&'a str>,
    rest: &'i mut std::slice::Iter<'a, String>,
}

impl Flag<'_, '_> {
    /// The value: after `=`, else the next argument.
    pub fn value(&mut self) -> Result<String> {
        match self.inline {
            Some(v) => Ok(v.to_string()),
            None => self.rest.next().cloned().with_context(|| format!("{} needs a value", self.name)),
        }
    }

    /// A switch: present means on; `--name=value` is refused.
    pub fn switch(&self) -> Result<bool> {
        match self.inline {
            None => Ok(true),
            Some(_) => bail!("{} takes no value", self.name),
        }
    }

    /// The value as a whole number from `min` to `max`.
    pub fn number(&mut self, min: u64, max: u64) -> Result<u64> {
        let raw = self.value()?;
        match raw.parse::<u64>() {
            Ok(n) if (min..=max).contains(&n) => Ok(n),
            _ => bail!("{} takes a whole number from {min} to {max}, not {raw:?}", self.name),
        }
    }

    /// The error for an argument the command does not know, with its usage.
    pub fn unknown(&self, usage: &str) -> anyhow::Error {
        anyhow!("unknown argument {:?}\nusage:\n{usage}", self.arg)
    }
}

/// Calls `each` for every argument, in order; the first error stops.
pub fn each(args: &[String], mut each: impl FnMut(Flag) -> Result<()>) -> Result<()> {
    let mut rest = args.iter();
    while let Some(arg) = rest.next() {
        let (name, inline) = match arg.split_once('=') {
            Some((name, value)) => (name, Some(value)),
            None => (arg.as_str(), None),
        };
        each(Flag { name, arg, inline, rest: &mut rest })?;
    }
    Ok(())
}

/// The first of these environment variables that is set and not empty.
pub fn env(names: &[&str]) -> Option<String> {
    names.iter().find_map(|name| std::env::var(name).ok().filter(|v| !v.is_empty()))
}

/// The database: `--database-url`, else `DATABASE_URL`, else `SPIN_VARIABLE_DATABASE_URL`.
pub fn database_url(given: Option<String>) -> Result<String> {
    given
        .or_else(|| env(&["DATABASE_URL", "SPIN_VARIABLE_DATABASE_URL"]))
        .context("give --database-url, or set DATABASE_URL or SPIN_VARIABLE_DATABASE_URL")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(args: &[&str]) -> Vec<String> {
        args.iter().map(|a| a.to_string()).collect()
    }

    /// What a command with `--on` and `--name` would read.
    fn read(args: &[&str]) -> Result<(bool, Option<String>, Option<u64>)> {
        let (mut on, mut name, mut n) = (false, None, None);
        each(&strings(args), |mut flag| {
            match flag.name {
                "--on" => on = flag.switch()?,
                "--name" => name = Some(flag.value()?),
                "--n" => n = Some(flag.number(1, 10)?),
                _ => return Err(flag.unknown("cmd [--on] [--name X] [--n N]")),
            }
            Ok(())
        })?;
        Ok((on, name, n))
    }

    #[test]
    fn switches_and_both_forms_of_values() {
        assert_eq!(read(&[]).unwrap(), (false, None, None));
        assert_eq!(read(&["--on", "--name", "a=b", "--n=3"]).unwrap(), (true, Some("a=b".into()), Some(3)));
        assert_eq!(read(&["--name=x", "--name", "y"]).unwrap().1.as_deref(), Some("y"));
    }

    #[test]
    fn mistakes_are_errors_that_say_which() {
        for (args, says) in [
            (&["--on=yes"][..], "--on takes no value"),
            (&["--name"][..], "--name needs a value"),
            (&["--n", "11"][..], "--n takes a whole number from 1 to 10"),
            (&["--n=x"][..], "not \"x\""),
            (&["--nope"][..], "unknown argument \"--nope\""),
        ] {
            let error = format!("{:#}", read(args).unwrap_err());
            assert!(error.contains(says), "{args:?}: {error}");
        }
    }
}
