//! The evacuate request body for each microversion, and the choice of
//! microversion for servers that must come back running or stopped.
//!
//! Measured on Nova 2025.1 (notes/minicloud.md): 2.95+ lands *every*
//! evacuated server SHUTOFF; `onSharedStorage` is required up to 2.13 and
//! refused from 2.14; `force` exists from 2.29 and is refused from 2.68.

use serde_json::{json, Map, Value};

use crate::{Microversion, NovaError, Secret, VersionRange};

/// What the caller wants from one evacuation.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EvacuateRequest {
    /// Target host, or `None` for Nova's scheduler. With 2.29–2.67 the
    /// scheduler still validates it (`force: false` is sent); from 2.68 it
    /// always does. Before 2.29 a named host bypasses the scheduler.
    pub host: Option<String>,
    /// Bypass the scheduler's checks of `host` (2.29–2.67 only).
    pub force: bool,
    /// Only for microversions below 2.14, where Nova requires it; `None`
    /// then means `false` (rebuild from the image).
    pub on_shared_storage: Option<bool>,
    pub admin_pass: Option<Secret>,
}

/// How the evacuated server should end up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LandAs {
    /// ACTIVE on the destination: needs a microversion ≤ 2.94.
    Running,
    /// SHUTOFF on the destination: 2.95+ does that; on an older cloud the
    /// server comes back running and the caller must stop it.
    Stopped,
}

/// The microversion to evacuate with, and what the server will be after.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EvacuationPlan {
    pub microversion: Microversion,
    /// True when Nova itself will leave the server SHUTOFF (2.95+).
    pub lands_stopped: bool,
}

/// Picks the evacuate microversion for `land` within the cloud's `range`
/// and the client's `cap`.
pub fn evacuation_plan(
    range: VersionRange,
    cap: Microversion,
    land: LandAs,
) -> Result<EvacuationPlan, NovaError> {
    let top = range.max.min(cap);
    let microversion = match land {
        LandAs::Running => top.min(Microversion::V2_94),
        LandAs::Stopped => top,
    };
    if microversion < range.min {
        return Err(NovaError::Unsupported {
            op: "evacuate",
            need: Microversion::V2_94,
            min: range.min,
            max: range.max,
        });
    }
    Ok(EvacuationPlan {
        microversion,
        lands_stopped: microversion >= Microversion::V2_95,
    })
}

/// `{"evacuate": {...}}` for `mv`, or why it cannot be expressed there.
pub fn evacuate_body(mv: Microversion, req: &EvacuateRequest) -> Result<Value, NovaError> {
    let invalid = |message: &str| NovaError::InvalidRequest {
        op: "evacuate",
        microversion: mv,
        message: message.to_owned(),
    };
    let mut b = Map::new();
    if let Some(host) = &req.host {
        b.insert("host".into(), json!(host));
    }
    if mv < Microversion::V2_14 {
        b.insert(
            "onSharedStorage".into(),
            json!(req.on_shared_storage.unwrap_or(false)),
        );
    } else if req.on_shared_storage.is_some() {
        return Err(invalid(
            "onSharedStorage was removed in 2.14 (Nova asks the driver)",
        ));
    }
    if req.force {
        if req.host.is_none() {
            return Err(invalid("force needs a host"));
        }
        if mv < Microversion::V2_29 {
            // Before 2.29 a named host is always forced: nothing to add.
        } else if mv < Microversion::V2_68 {
            b.insert("force".into(), json!(true));
        } else {
            return Err(invalid(
                "force was removed in 2.68; the scheduler always validates the host",
            ));
        }
    } else if req.host.is_some() && mv >= Microversion::V2_29 && mv < Microversion::V2_68 {
        // Explicit: the scheduler validates the requested host.
        b.insert("force".into(), json!(false));
    }
    if let Some(p) = &req.admin_pass {
        b.insert("adminPass".into(), json!(p.expose()));
    }
    Ok(json!({ "evacuate": b }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mv(minor: u16) -> Microversion {
        Microversion::new(2, minor)
    }

    fn body(minor: u16, req: &EvacuateRequest) -> Option<Value> {
        evacuate_body(mv(minor), req).ok()
    }

    #[test]
    fn bodies_per_microversion() {
        let sched = EvacuateRequest::default();
        let to = |h: &str, force: bool| EvacuateRequest {
            host: Some(h.into()),
            force,
            ..Default::default()
        };
        // 2.1–2.13: onSharedStorage required.
        assert_eq!(
            body(1, &sched),
            Some(json!({"evacuate": {"onSharedStorage": false}}))
        );
        assert_eq!(
            body(
                13,
                &EvacuateRequest {
                    on_shared_storage: Some(true),
                    ..Default::default()
                }
            ),
            Some(json!({"evacuate": {"onSharedStorage": true}}))
        );
        // 2.14+: gone, and refused if asked for.
        assert_eq!(body(14, &sched), Some(json!({"evacuate": {}})));
        assert!(body(
            14,
            &EvacuateRequest {
                on_shared_storage: Some(false),
                ..Default::default()
            }
        )
        .is_none());
        // 2.29–2.67: force false keeps the scheduler's checks.
        assert_eq!(
            body(29, &to("c1", false)),
            Some(json!({"evacuate": {"host": "c1", "force": false}}))
        );
        assert_eq!(
            body(67, &to("c1", true)),
            Some(json!({"evacuate": {"host": "c1", "force": true}}))
        );
        // 2.68+: host only; force is a 400 at Nova, so refused here.
        assert_eq!(
            body(68, &to("c2", false)),
            Some(json!({"evacuate": {"host": "c2"}}))
        );
        assert!(body(94, &to("c2", true)).is_none());
        assert_eq!(body(94, &sched), Some(json!({"evacuate": {}})));
        assert!(body(
            94,
            &EvacuateRequest {
                force: true,
                ..Default::default()
            }
        )
        .is_none());
        // Before 2.29 a named host is implicitly forced.
        assert_eq!(
            body(20, &to("c3", true)),
            Some(json!({"evacuate": {"host": "c3"}}))
        );
    }

    #[test]
    fn plans() {
        let epoxy = VersionRange {
            min: mv(1),
            max: mv(96),
        };
        let p = evacuation_plan(epoxy, Microversion::TESTED_MAX, LandAs::Running).ok();
        assert_eq!(
            p,
            Some(EvacuationPlan {
                microversion: mv(94),
                lands_stopped: false
            })
        );
        let p = evacuation_plan(epoxy, Microversion::TESTED_MAX, LandAs::Stopped).ok();
        assert_eq!(
            p,
            Some(EvacuationPlan {
                microversion: mv(96),
                lands_stopped: true
            })
        );
        let old = VersionRange {
            min: mv(1),
            max: mv(60),
        };
        let p = evacuation_plan(old, Microversion::TESTED_MAX, LandAs::Stopped).ok();
        assert_eq!(
            p,
            Some(EvacuationPlan {
                microversion: mv(60),
                lands_stopped: false
            })
        );
        let capped = evacuation_plan(epoxy, mv(53), LandAs::Stopped).ok();
        assert_eq!(capped.map(|p| p.microversion), Some(mv(53)));
        let future = VersionRange {
            min: mv(95),
            max: mv(120),
        };
        assert!(evacuation_plan(future, Microversion::LATEST, LandAs::Running).is_err());
    }
}
