//! Is this BMC really that node's? `fence-check` and `serve --check` compare
//! the system UUID each fence level reports with `[[node]] system_uuid`: a
//! fencing config that points compute1 at compute3's BMC would power off
//! compute3. The running decider makes the same comparison (with the
//! sensor's UUID too) in `bmc_watch::identity`.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Serialize, Serializer};
use vigil_recovery::fence::FenceCheckRow;

use crate::config::NodeConfig;

/// What one level's reported UUID says about its node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum UuidCheck {
    /// The level reports the configured UUID.
    Matches,
    /// The level reports another machine's UUID.
    Mismatch { bmc: String, node: String },
    /// No `[[node]] system_uuid` to compare with; what the level reports,
    /// if it does, so the operator can compare and copy it.
    NotConfigured { bmc: Option<String> },
    /// Configured, but the level's UUID could not be read or this kind of
    /// fencer cannot tell (fence agents, commands).
    Unknown(String),
}

impl fmt::Display for UuidCheck {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UuidCheck::Matches => f.write_str("matches"),
            UuidCheck::Mismatch { bmc, node } => write!(f, "MISMATCH (bmc {bmc}, node {node})"),
            UuidCheck::NotConfigured { bmc: None } => f.write_str("not configured"),
            UuidCheck::NotConfigured { bmc: Some(b) } => write!(f, "not configured (bmc {b})"),
            UuidCheck::Unknown(why) => write!(f, "unknown ({why})"),
        }
    }
}

/// As its text: one field a script can match on its first word.
impl Serialize for UuidCheck {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// A `fence-check` row with its identity verdict (JSON: the row's fields
/// and `uuid`).
#[derive(Clone, Debug, Serialize)]
pub struct CheckedRow {
    #[serde(flatten)]
    pub row: FenceCheckRow,
    pub uuid: UuidCheck,
}

/// `[[node]] system_uuid` by node name, canonical. `fence-check` reads the
/// config without `validate` (it needs no token files), so the values are
/// checked here.
pub fn configured(nodes: &[NodeConfig]) -> Result<BTreeMap<String, String>, String> {
    let mut out = BTreeMap::new();
    for n in nodes {
        let Some(u) = &n.system_uuid else { continue };
        let canon = vigil_proto::system_uuid::normalize(u).ok_or_else(|| {
            format!(
                "node {}: system_uuid {:?} is not a system UUID (8-4-4-4-12 hex, not all zeros or Fs): copy it from `cat /sys/class/dmi/id/product_uuid` on the node, or leave it out",
                n.name,
                u.chars().take(40).collect::<String>()
            )
        })?;
        out.insert(n.name.clone(), canon);
    }
    Ok(out)
}

/// The verdict for one row.
pub fn check(configured: Option<&str>, bmc: Option<&Result<Option<String>, String>>) -> UuidCheck {
    let reported = match bmc {
        Some(Ok(Some(u))) => Ok(u.to_ascii_lowercase()),
        Some(Ok(None)) => Err("this fencer or BMC reports no system UUID".to_string()),
        Some(Err(e)) => Err(e.clone()),
        None => Err("not asked".to_string()),
    };
    match (configured, reported) {
        (None, r) => UuidCheck::NotConfigured { bmc: r.ok() },
        (Some(c), Ok(b)) if b.eq_ignore_ascii_case(c) => UuidCheck::Matches,
        (Some(c), Ok(b)) => UuidCheck::Mismatch {
            bmc: b,
            node: c.to_ascii_lowercase(),
        },
        (Some(_), Err(why)) => UuidCheck::Unknown(why),
    }
}

/// Each row with its verdict.
pub fn checked(rows: Vec<FenceCheckRow>, configured: &BTreeMap<String, String>) -> Vec<CheckedRow> {
    rows.into_iter()
        .map(|row| {
            let uuid = check(
                configured.get(&row.node).map(String::as_str),
                row.system_uuid.as_ref(),
            );
            CheckedRow { row, uuid }
        })
        .collect()
}

/// One error line per mismatch: which node, which BMC, both UUIDs and what
/// to fix.
pub fn mismatches(rows: &[CheckedRow], configured: &BTreeMap<String, String>) -> Vec<String> {
    rows.iter()
        .filter_map(|r| {
            let UuidCheck::Mismatch { bmc, node } = &r.uuid else {
                return None;
            };
            let whose = configured
                .iter()
                .find(|(n, u)| *n != &r.row.node && *u == bmc)
                .map(|(n, _)| format!(" (that is node {n}'s configured system_uuid)"))
                .unwrap_or_default();
            let order = other_byte_order(bmc, node)
                .map(|how| format!("; the two are the same bytes in another order ({how}): this BMC encodes the UUID against its specification (compare `ipmitool mc guid smbios` with `dmidecode -s system-uuid`), and Vigil cannot tell that from another machine: use a Redfish level for this node, or ask the vendor for a fix"))
                .unwrap_or_default();
            Some(format!(
                "node {n}: fence level {l} ({f}) reports system UUID {bmc}{whose}, but [[node]] system_uuid for {n} is {node}: this BMC controls another machine, and Vigil will not fence {n} through it nor believe its power readings. Point {n}'s fencing in [recovery.fencing] at {n}'s own BMC, or, if the config's UUID is the wrong one, copy it from `cat /sys/class/dmi/id/product_uuid` on {n}{order}",
                n = r.row.node,
                l = r.row.level,
                f = r.row.fencer,
            ))
        })
        .collect()
}

/// Nodes whose BMCs report the same machine: at most one of them can be
/// right. A warning, not a failure: the running decider does not compare
/// nodes with each other, and a multi-node chassis manager may answer for
/// several nodes. Left out when each of the nodes has a configured UUID:
/// [`mismatches`] then says which is wrong.
pub fn shared(rows: &[CheckedRow], configured: &BTreeMap<String, String>) -> Vec<String> {
    let mut by_uuid: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for r in rows {
        if let Some(Ok(Some(u))) = &r.row.system_uuid {
            let nodes = by_uuid.entry(u.as_str()).or_default();
            if !nodes.contains(&r.row.node.as_str()) {
                nodes.push(&r.row.node);
            }
        }
    }
    by_uuid
        .into_iter()
        .filter(|(_, nodes)| {
            nodes.len() > 1 && !nodes.iter().all(|n| configured.contains_key(*n))
        })
        .map(|(u, nodes)| {
            format!(
                "warning: the fence levels of nodes {} all report system UUID {u}: they reach the same machine, so at most one of them is that node's own BMC; set [[node]] system_uuid on each node to have fence-check say which",
                nodes.join(", ")
            )
        })
        .collect()
}

/// How `a` is `b`'s 16 bytes in another order, if it is: the orders BMCs
/// are known to send a GUID in (SMBIOS: the first three fields little
/// endian; IPMI: all 16 bytes reversed) as read by a tool that assumed
/// another.
fn other_byte_order(a: &str, b: &str) -> Option<&'static str> {
    let (a, b) = (
        vigil_proto::system_uuid::bytes(a)?,
        vigil_proto::system_uuid::bytes(b)?,
    );
    let swap3 = |mut u: [u8; 16]| {
        u[0..4].reverse();
        u[4..6].reverse();
        u[6..8].reverse();
        u
    };
    let reversed = |mut u: [u8; 16]| {
        u.reverse();
        u
    };
    [
        (swap3(b), "first three fields byte-swapped"),
        (reversed(b), "all 16 bytes reversed"),
        (reversed(swap3(b)), "SMBIOS order read as IPMI order"),
        (swap3(reversed(b)), "IPMI order read as SMBIOS order"),
    ]
    .into_iter()
    .find(|(u, _)| *u == a && a != b)
    .map(|(_, how)| how)
}

#[cfg(test)]
mod tests {
    use super::*;
    use vigil_recovery::fence::PowerState;

    const A: &str = "5f1c0a6e-1111-4000-8000-000000000001";
    const C: &str = "5f1c0a6e-3333-4000-8000-000000000003";

    fn row(
        node: &str,
        level: usize,
        uuid: Option<Result<Option<String>, String>>,
    ) -> FenceCheckRow {
        FenceCheckRow {
            node: node.into(),
            level,
            fencer: format!("redfish http://bmc-{node} system {node}"),
            result: Ok(PowerState::On),
            system_uuid: uuid,
        }
    }

    fn some(u: &str) -> Option<Result<Option<String>, String>> {
        Some(Ok(Some(u.to_string())))
    }

    #[test]
    fn each_row_gets_the_verdict_an_operator_reads() {
        assert_eq!(check(Some(A), some(A).as_ref()), UuidCheck::Matches);
        assert_eq!(
            check(Some(A), some(&A.to_uppercase()).as_ref()),
            UuidCheck::Matches
        );
        let m = check(Some(A), some(C).as_ref());
        assert_eq!(
            m.to_string(),
            format!("MISMATCH (bmc {C}, node {A})"),
            "{m:?}"
        );
        assert_eq!(
            check(None, some(C).as_ref()).to_string(),
            format!("not configured (bmc {C})")
        );
        assert_eq!(check(None, None).to_string(), "not configured");
        assert_eq!(
            check(None, Some(Ok(None)).as_ref()).to_string(),
            "not configured"
        );
        let u = check(Some(A), Some(Ok(None)).as_ref()).to_string();
        assert!(
            u.starts_with("unknown (") && u.contains("no system UUID"),
            "{u}"
        );
        let u = check(Some(A), Some(Err("timed out".into())).as_ref()).to_string();
        assert_eq!(u, "unknown (timed out)");
        // JSON: the same text under "uuid", beside the row's own fields.
        let rows = checked(
            vec![row("compute1", 0, some(C))],
            &BTreeMap::from([("compute1".to_string(), A.to_string())]),
        );
        let v = serde_json::to_value(&rows).expect("json");
        assert_eq!(v[0]["uuid"], format!("MISMATCH (bmc {C}, node {A})"));
        assert_eq!(v[0]["node"], "compute1");
        assert_eq!(v[0]["result"]["Ok"], "on");
        assert_eq!(v[0]["system_uuid"]["Ok"], C);
    }

    #[test]
    fn a_mismatch_names_node_bmc_both_uuids_whose_it_is_and_the_fix() {
        let configured = BTreeMap::from([
            ("compute1".to_string(), A.to_string()),
            ("compute3".to_string(), C.to_string()),
        ]);
        // compute1's level 0 reaches compute3's BMC; its level 1 is right.
        let rows = checked(
            vec![row("compute1", 0, some(C)), row("compute1", 1, some(A))],
            &configured,
        );
        let errs = mismatches(&rows, &configured);
        assert_eq!(errs.len(), 1, "{errs:?}");
        let e = &errs[0];
        for part in [
            "node compute1",
            "fence level 0",
            "redfish http://bmc-compute1",
            C,
            A,
            "compute3's configured system_uuid",
            "[recovery.fencing]",
            "product_uuid",
        ] {
            assert!(e.contains(part), "{part:?} missing from {e}");
        }
        assert!(!e.contains("byte"), "{e}");
        assert!(mismatches(
            &checked(vec![row("compute1", 0, some(A))], &configured),
            &configured
        )
        .is_empty());
    }

    #[test]
    fn a_uuid_in_another_byte_order_is_still_a_mismatch_but_explained() {
        // The same machine as an SMBIOS-order BMC read in IPMI order shows it.
        let swapped = "6e0a1c5f-1111-0040-8000-000000000001";
        assert_eq!(
            other_byte_order(swapped, A),
            Some("first three fields byte-swapped")
        );
        let reversed = "01000000-0000-0080-0040-11116e0a1c5f";
        assert_eq!(other_byte_order(reversed, A), Some("all 16 bytes reversed"));
        assert_eq!(other_byte_order(C, A), None);
        assert_eq!(other_byte_order(A, A), None);
        let configured = BTreeMap::from([("compute1".to_string(), A.to_string())]);
        let rows = checked(vec![row("compute1", 0, some(swapped))], &configured);
        let errs = mismatches(&rows, &configured);
        assert!(
            errs.len() == 1
                && errs[0].contains("another order")
                && errs[0].contains("mc guid smbios"),
            "{errs:?}"
        );
    }

    #[test]
    fn two_nodes_reaching_one_machine_are_warned_about() {
        let rows = checked(
            vec![
                row("compute1", 0, some(C)),
                row("compute1", 1, some(C)),
                row("compute3", 0, some(C)),
                row("compute2", 0, some(A)),
            ],
            &BTreeMap::new(),
        );
        let none = BTreeMap::new();
        let w = shared(&rows, &none);
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(
            w[0].contains("compute1, compute3") && w[0].contains(C),
            "{w:?}"
        );
        assert!(
            shared(&rows[..2], &none).is_empty(),
            "one node's own levels agree"
        );
        let both = BTreeMap::from([
            ("compute1".to_string(), A.to_string()),
            ("compute3".to_string(), C.to_string()),
        ]);
        assert!(
            shared(&rows, &both).is_empty(),
            "with both configured, the mismatch says which"
        );
    }

    #[test]
    fn configured_uuids_are_normalized_and_garbage_named() {
        let node = |name: &str, u: Option<&str>| NodeConfig {
            name: name.into(),
            token_file: "/dev/null".into(),
            management_addresses: vec![],
            segment: "default".into(),
            system_uuid: u.map(str::to_string),
        };
        let m = configured(&[
            node("compute1", Some(&A.to_uppercase())),
            node("compute2", None),
        ])
        .expect("valid");
        assert_eq!(m, BTreeMap::from([("compute1".to_string(), A.to_string())]));
        let e = configured(&[node("compute9", Some("nope"))]).expect_err("garbage");
        assert!(e.contains("compute9") && e.contains("nope"), "{e}");
    }
}
