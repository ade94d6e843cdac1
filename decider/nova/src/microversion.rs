//! Compute API microversions and their negotiation.

use std::fmt;
use std::str::FromStr;

/// A compute API microversion such as `2.53`.
///
/// [`Microversion::LATEST`] stands for "whatever the server's maximum is"; it
/// prints as `latest` (the spelling Nova accepts; `2.latest` is a 400), but
/// negotiation always turns it into a concrete number before it is sent.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Microversion {
    pub major: u16,
    pub minor: u16,
}

impl Microversion {
    pub const fn new(major: u16, minor: u16) -> Self {
        Self { major, minor }
    }

    /// Sorts above every real microversion; see the type's docs.
    pub const LATEST: Self = Self::new(2, u16::MAX);
    /// The base of the v2.1 API (what Nova assumes without a header).
    pub const V2_1: Self = Self::new(2, 1);
    /// `forced_down` in `os-services` (and `PUT os-services/force-down`).
    pub const V2_11: Self = Self::new(2, 11);
    /// evacuate: `onSharedStorage` removed, no `adminPass` in the answer.
    pub const V2_14: Self = Self::new(2, 14);
    /// evacuate: `force` next to `host` (scheduler validates unless forced).
    pub const V2_29: Self = Self::new(2, 29);
    /// `os-hypervisors` paging (`limit`/`marker`).
    pub const V2_33: Self = Self::new(2, 33);
    /// server `flavor` embedded, with `extra_specs`.
    pub const V2_47: Self = Self::new(2, 47);
    /// `os-services` and `os-hypervisors` ids are UUIDs; `PUT os-services/{id}`.
    pub const V2_53: Self = Self::new(2, 53);
    /// instance actions: paging and `updated_at`.
    pub const V2_58: Self = Self::new(2, 58);
    /// migrations: paging, `uuid`.
    pub const V2_59: Self = Self::new(2, 59);
    /// evacuate: `force` removed (400 if sent).
    pub const V2_68: Self = Self::new(2, 68);
    /// The last microversion whose evacuate leaves a running server running.
    pub const V2_94: Self = Self::new(2, 94);
    /// evacuate: every evacuated server lands stopped (SHUTOFF).
    pub const V2_95: Self = Self::new(2, 95);
    /// The highest microversion this crate was tested against (Nova 2025.1),
    /// the default cap for calls that do not need a specific one.
    pub const TESTED_MAX: Self = Self::new(2, 96);

    /// The header value (`2.53`, or `latest`).
    pub fn header_value(&self) -> String {
        self.to_string()
    }
}

impl fmt::Display for Microversion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if *self == Self::LATEST {
            f.write_str("latest")
        } else {
            write!(f, "{}.{}", self.major, self.minor)
        }
    }
}

impl fmt::Debug for Microversion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid microversion {0:?}: expected MAJOR.MINOR such as 2.53, or latest")]
pub struct ParseMicroversionError(pub String);

impl FromStr for Microversion {
    type Err = ParseMicroversionError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim();
        if t.eq_ignore_ascii_case("latest") {
            return Ok(Self::LATEST);
        }
        let err = || ParseMicroversionError(s.to_owned());
        let (major, minor) = t.split_once('.').ok_or_else(err)?;
        let major: u16 = major.parse().map_err(|_| err())?;
        let minor: u16 = minor.parse().map_err(|_| err())?;
        if minor == u16::MAX {
            return Err(err());
        }
        Ok(Self::new(major, minor))
    }
}

/// The microversions a compute endpoint supports, from its version document.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VersionRange {
    pub min: Microversion,
    pub max: Microversion,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NegotiationError {
    #[error(
        "the compute API needs at least microversion {need}, the server supports {min} to {max}"
    )]
    TooOld {
        need: Microversion,
        min: Microversion,
        max: Microversion,
    },
    #[error("the compute API supports only up to microversion {max}, {need} is needed")]
    TooNew {
        need: Microversion,
        max: Microversion,
    },
}

impl VersionRange {
    pub fn contains(&self, mv: Microversion) -> bool {
        self.min <= mv && mv <= self.max
    }

    /// min(server maximum, wanted), refused when that falls below the
    /// server's minimum (a server that dropped the behaviour we rely on).
    pub fn negotiate(&self, wanted: Microversion) -> Result<Microversion, NegotiationError> {
        let mv = wanted.min(self.max);
        if mv < self.min {
            return Err(NegotiationError::TooOld {
                need: wanted,
                min: self.min,
                max: self.max,
            });
        }
        Ok(mv)
    }

    /// `wanted` capped at the server's maximum, but never below `need`.
    pub fn negotiate_at_least(
        &self,
        need: Microversion,
        wanted: Microversion,
    ) -> Result<Microversion, NegotiationError> {
        if self.max < need {
            return Err(NegotiationError::TooNew {
                need,
                max: self.max,
            });
        }
        self.negotiate(wanted.max(need))
    }

    /// Parses Nova's version document: either `{"version": {...}}` (GET on
    /// the versioned endpoint) or `{"versions": [...]}` (GET on the root, where
    /// the `v2.1` entry counts). A `v2.0` entry without microversions has an
    /// empty `version` field and is not usable.
    pub fn from_version_document(doc: &serde_json::Value) -> Option<Self> {
        fn one(v: &serde_json::Value) -> Option<VersionRange> {
            let max = v.get("version")?.as_str()?.parse().ok()?;
            let min = v
                .get("min_version")
                .and_then(|m| m.as_str())
                .and_then(|m| m.parse().ok())
                .unwrap_or(Microversion::V2_1);
            Some(VersionRange { min, max })
        }
        if let Some(v) = doc.get("version") {
            return one(v);
        }
        let versions = doc.get("versions")?.as_array()?;
        versions
            .iter()
            .filter(|v| v.get("id").and_then(|i| i.as_str()) == Some("v2.1"))
            .find_map(one)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn parse_and_print() {
        assert_eq!("2.53".parse::<Microversion>(), Ok(Microversion::V2_53));
        assert_eq!(Microversion::V2_53.to_string(), "2.53");
        assert_eq!("latest".parse::<Microversion>(), Ok(Microversion::LATEST));
        // Nova answers 400 to "2.latest": we never produce it.
        assert_eq!(Microversion::LATEST.header_value(), "latest");
        assert!("2.latest".parse::<Microversion>().is_err());
        assert!("2".parse::<Microversion>().is_err());
        assert!(Microversion::new(2, 9) < Microversion::new(2, 10));
    }

    #[test]
    fn negotiation() {
        let r = VersionRange {
            min: Microversion::V2_1,
            max: Microversion::new(2, 96),
        };
        assert_eq!(r.negotiate(Microversion::V2_94), Ok(Microversion::V2_94));
        assert_eq!(
            r.negotiate(Microversion::new(2, 100)),
            Ok(Microversion::new(2, 96))
        );
        assert_eq!(
            r.negotiate(Microversion::LATEST),
            Ok(Microversion::new(2, 96))
        );
        let old = VersionRange {
            min: Microversion::V2_1,
            max: Microversion::new(2, 42),
        };
        assert_eq!(
            old.negotiate_at_least(Microversion::V2_11, Microversion::V2_53),
            Ok(Microversion::new(2, 42))
        );
        assert!(matches!(
            old.negotiate_at_least(Microversion::V2_53, Microversion::V2_53),
            Err(NegotiationError::TooNew { .. })
        ));
        let future = VersionRange {
            min: Microversion::new(2, 60),
            max: Microversion::new(2, 120),
        };
        assert!(matches!(
            future.negotiate(Microversion::V2_53),
            Err(NegotiationError::TooOld { .. })
        ));
    }

    #[test]
    fn version_documents() {
        let versioned = json!({"version": {"id": "v2.1", "status": "CURRENT",
            "version": "2.96", "min_version": "2.1", "links": []}});
        assert_eq!(
            VersionRange::from_version_document(&versioned),
            Some(VersionRange {
                min: Microversion::V2_1,
                max: Microversion::new(2, 96)
            })
        );
        let root = json!({"versions": [
            {"id": "v2.0", "status": "DEPRECATED", "version": "", "min_version": ""},
            {"id": "v2.1", "status": "CURRENT", "version": "2.79", "min_version": "2.1"}]});
        assert_eq!(
            VersionRange::from_version_document(&root).map(|r| r.max),
            Some(Microversion::new(2, 79))
        );
        let legacy = json!({"version": {"id": "v2.0", "version": "", "min_version": ""}});
        assert_eq!(VersionRange::from_version_document(&legacy), None);
    }
}
