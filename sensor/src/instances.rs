//! qemu processes and the Nova instance each one runs.
//!
//! A process is a qemu when its `comm` is `qemu-system-*` (truncated by the
//! kernel to 15 bytes: `qemu-system-x86`) or `qemu-kvm`. The Nova instance
//! UUID comes from `-uuid`, which libvirt always passes with the Nova
//! instance's UUID; the libvirt domain name from `-name guest=instance-…`.

/// True when a process `comm` names a qemu emulator.
pub fn is_qemu_comm(comm: &str) -> bool {
    comm.starts_with("qemu-system-") || comm.starts_with("qemu-kvm")
}

/// What qemu's command line says about the guest.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QemuIdentity {
    /// `-uuid U`: the Nova instance UUID.
    pub uuid: Option<String>,
    /// `-name guest=NAME,…` or `-name NAME`: the libvirt domain name.
    pub name: Option<String>,
}

/// Value of option `opt` in `args`, as `-opt V`, `--opt V`, `-opt=V`.
fn option_value<'a>(args: &'a [String], opt: &str) -> Option<&'a str> {
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let bare = a.trim_start_matches('-');
        if !a.starts_with('-') {
            continue;
        }
        if bare == opt {
            return it.next().map(String::as_str);
        }
        if let Some(v) = bare.strip_prefix(opt).and_then(|r| r.strip_prefix('=')) {
            return Some(v);
        }
    }
    None
}

/// Parses qemu's argument list.
pub fn parse_cmdline(args: &[String]) -> QemuIdentity {
    let uuid = option_value(args, "uuid").map(str::to_string);
    let name = option_value(args, "name").and_then(|v| {
        // `guest=instance-0001,debug-threads=on`, or just `instance-0001`.
        let mut first = None;
        for part in v.split(',') {
            if let Some(g) = part.strip_prefix("guest=") {
                return Some(g.to_string());
            }
            if first.is_none() && !part.contains('=') {
                first = Some(part.to_string());
            }
        }
        first
    });
    QemuIdentity { uuid, name }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(str::to_string).collect()
    }

    #[test]
    fn libvirt_style_command_line() {
        let id = parse_cmdline(&args(
            "/usr/bin/qemu-system-x86_64 -name guest=instance-0000002a,debug-threads=on -S -uuid 3f1c7e2a-9d7b-4c3e-8a51-2b9e0c6d7f10 -smp 2",
        ));
        assert_eq!(
            id.uuid.as_deref(),
            Some("3f1c7e2a-9d7b-4c3e-8a51-2b9e0c6d7f10")
        );
        assert_eq!(id.name.as_deref(), Some("instance-0000002a"));
    }

    #[test]
    fn plain_and_equals_forms() {
        let id = parse_cmdline(&args("qemu-kvm -name vm1 -uuid=abc"));
        assert_eq!(id.uuid.as_deref(), Some("abc"));
        assert_eq!(id.name.as_deref(), Some("vm1"));
        assert_eq!(
            parse_cmdline(&args("qemu-kvm -m 512")),
            QemuIdentity::default()
        );
        // A dangling option is absent, not a panic.
        assert_eq!(parse_cmdline(&args("qemu-kvm -uuid")).uuid, None);
    }

    #[test]
    fn recognises_qemu_comms() {
        assert!(is_qemu_comm("qemu-system-x86"));
        assert!(is_qemu_comm("qemu-kvm"));
        assert!(!is_qemu_comm("CPU 0/KVM"));
        assert!(!is_qemu_comm("qemu-img"));
    }
}
