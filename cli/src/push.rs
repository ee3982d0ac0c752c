//! `libero push keys`: a VAPID key pair for Web Push reminders.

use std::io::Read;

use anyhow::{bail, Context, Result};
use libero_shared::push::vapid::VapidKey;

pub const USAGE: &str = "  libero push keys
      print a new VAPID key pair: the private key for the vapid_private_key variable
      (a secret), the public key for the app's pushManager.subscribe()";

pub fn command(args: &[String]) -> Result<()> {
    match args {
        [keys] if keys == "keys" => {
            let (private, public) = new_pair()?;
            println!("vapid_private_key (secret; e.g. SPIN_VARIABLE_VAPID_PRIVATE_KEY): {private}");
            println!("public key (the app's applicationServerKey): {public}");
            Ok(())
        }
        _ => bail!("usage:\n{USAGE}"),
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
