//! Any `Stripe-Signature` header over any body: never a panic, never verified.
#![no_main]
use libero_shared::stripe_signature::verify;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // First line: the header; the rest: the body.
    let split = data.iter().position(|b| *b == b'\n').unwrap_or(data.len());
    let header = String::from_utf8_lossy(&data[..split]);
    let body = data.get(split + 1..).unwrap_or(&[]);
    let secrets = vec!["whsec_fuzz".to_string(), String::new()];
    assert!(verify(body, &header, &secrets, 1_700_000_000, 300).is_err());
});
