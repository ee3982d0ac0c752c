//! Any string as a bearer token: never a panic, never accepted (no valid signature can
//! be guessed), whatever the header, claims or encoding.
#![no_main]
use libero_shared::auth::{verify_access_token, AuthConfig};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let token = String::from_utf8_lossy(data);
    let config = AuthConfig {
        hs256_secret: Some(b"fuzz-secret-0123456789abcdef".to_vec()),
        jwks: None,
        remote_jwks: None,
        audience: "authenticated".into(),
        leeway_secs: 30,
    };
    assert!(verify_access_token(&token, &config, 1_700_000_000).is_err());
});
