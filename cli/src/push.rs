//! `libero push keys`: a VAPID key pair for Web Push reminders.

use std::io::Read;

use anyhow::{bail, Context, Result};
use libero_shared::push::vapid::VapidKey;

/// `libero push`'s commands.
#[derive(clap::Subcommand, Debug, Clone, PartialEq)]
pub enum Command {
    /// Print a new VAPID key pair: the private key for the vapid_private_key variable (a secret), the public key for the app's pushManager.subscribe()
    Keys,
}

/// `libero push <command>`.
pub fn command(command: Command) -> Result<()> {
    match command {
        Command::Keys => {
            let (private, public) = new_pair()?;
            println!("vapid_private_key (secret; e.g. SPIN_VARIABLE_VAPID_PRIVATE_KEY): {private}");
            println!("public key (the app's applicationServerKey): {public}");
            Ok(())
        }
    }
}

fn new_pair() -> Result<(String, String)> {
    let mut urandom = std::fs::File::open("/dev/urandom").context("opening /dev/urandom")?;
    for _ in 0..8 {
        let mut bytes = [0u8; 32];
        urandom.read_exact(&mut bytes).context("reading /dev/urandom")?;
        if let Some(pair) = VapidKey::generate(bytes) {
            return Ok(pair);
        }
    }
    bail!("no valid P-256 key in 8 draws from /dev/urandom")
}

#[cfg(test)]
mod tests {
    #[test]
    fn push_keys_are_fresh_and_valid() {
        let (a, public_a) = super::new_pair().unwrap();
        let (b, _) = super::new_pair().unwrap();
        assert_ne!(a, b);
        assert_eq!(libero_shared::push::vapid::VapidKey::from_private(&a).unwrap().public_key, public_a);
        assert_eq!(public_a.len(), 87, "65 bytes, base64url");
    }
}
