//! The decider's TOML config: parsed, then every check that reads no file
//! (policy, recovery). Unknown keys, wrong types and absurd numbers must be
//! errors naming the key, never a panic.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use vigil_decider::config::Config;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(cfg) = Config::parse(text, Path::new("fuzz.toml")) else {
        return;
    };
    let _ = cfg.policy.validate();
    if let Some(r) = &cfg.recovery {
        let _ = r.validate();
    }
});
