//! What a Redfish BMC answers, read the way the fencer reads it: the body,
//! the systems collection, the system's PowerState, UUID and Reset target.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vigil_recovery::fence::redfish::answer;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data).into_owned();
    let v = answer::body(text);
    let members = answer::system_members(&v);
    for id in [Some("compute1"), Some(""), None] {
        if let Some(path) = answer::pick_system(&members, id) {
            let _ = answer::reset_target(&v, &path);
        }
    }
    let _ = answer::power_state(&v);
    // A UUID it returns is canonical: what the identity check compares.
    if let Ok(Some(u)) = answer::system_uuid(&v) {
        assert!(vigil_proto::system_uuid::is_canonical(&u), "{u:?}");
    }
});
