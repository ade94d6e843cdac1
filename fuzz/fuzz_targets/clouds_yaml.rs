//! clouds.yaml (and secure.yaml) as the Nova client reads them: the input is
//! split at the first NUL into clouds.yaml and secure.yaml text.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use vigil_nova::config::CloudConfig;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (clouds, secure) = match text.split_once('\0') {
        Some((c, s)) => (c, Some((Path::new("secure.yaml"), s))),
        None => (text, None),
    };
    for cloud in ["vigil-lab", "mycloud"] {
        if let Ok(c) =
            CloudConfig::from_clouds_yaml(Path::new("clouds.yaml"), clouds, secure, cloud)
        {
            let _ = c.identity_v3_url();
        }
    }
});
