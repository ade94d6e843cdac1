//! Finding the nova-compute process, also when it runs in a container (its
//! processes are visible in the host's /proc like any other).
//!
//! The match is a regex over the program and its first argument (`argv[0]
//! argv[1]`), which for a Python console script is the interpreter and the
//! script: `/usr/bin/python3 /usr/bin/nova-compute`. Matching only those two
//! keeps other programs that merely mention nova-compute in their arguments
//! (including this sensor's own `--nova-compute-match`) from matching.

use regex::Regex;

/// The default `--nova-compute-match`.
pub const DEFAULT_MATCH: &str = r"(^|/)nova-compute( |$)";

/// A candidate process seen by discovery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub pid: u32,
    pub ppid: u32,
    pub starttime: u64,
}

/// The part of a command line the regex sees.
pub fn match_subject(args: &[String]) -> String {
    args.iter().take(2).cloned().collect::<Vec<_>>().join(" ")
}

pub fn matches(re: &Regex, args: &[String]) -> bool {
    !args.is_empty() && re.is_match(&match_subject(args))
}

/// Picks the nova-compute among matching processes: the root of the
/// matching process tree (forked workers share its command line), the
/// oldest when several are roots.
pub fn pick(candidates: &[Candidate]) -> Option<&Candidate> {
    candidates
        .iter()
        .filter(|c| !candidates.iter().any(|p| p.pid == c.ppid))
        .min_by_key(|c| (c.starttime, c.pid))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(str::to_string).collect()
    }

    #[test]
    fn default_regex_matches_script_and_container_forms() {
        let re = Regex::new(DEFAULT_MATCH).expect("default regex");
        assert!(matches(
            &re,
            &args("/usr/bin/python3 /usr/bin/nova-compute --config-file /etc/nova/nova.conf")
        ));
        assert!(matches(&re, &args("/var/lib/kolla/venv/bin/nova-compute")));
        assert!(matches(&re, &args("nova-compute if=/dev/loop0")));
        // The sensor's own flags and look-alikes do not match.
        assert!(!matches(
            &re,
            &args("vigil-sensor run --nova-compute-match nova-compute")
        ));
        assert!(!matches(
            &re,
            &args("/usr/bin/python3 /usr/bin/nova-compute-helper")
        ));
        assert!(!matches(&re, &[]));
    }

    #[test]
    fn picks_the_root_of_the_matching_tree() {
        let c = |pid, ppid, starttime| Candidate {
            pid,
            ppid,
            starttime,
        };
        let all = [c(200, 100, 50), c(100, 1, 10), c(300, 100, 60)];
        assert_eq!(pick(&all).map(|c| c.pid), Some(100));
        let two_roots = [c(500, 1, 90), c(400, 1, 80)];
        assert_eq!(pick(&two_roots).map(|c| c.pid), Some(400));
        assert_eq!(pick(&[]), None);
    }
}
