//! What this machine's own network state says about an address: does a
//! local socket listen on it, and which process owns that socket.
//!
//! Why not just connect: many networks (this workplace's, corporate ones
//! with a transparent proxy) accept a TCP connect to *any* address, so a
//! connect that succeeds proves nothing about who listens. Every "is ours
//! already there" or "is it up yet" check asks the kernel's tables instead
//! (`/proc/net/tcp{,6}`, `/proc/PID/fd`), which only ever describe this
//! network namespace.

use std::collections::BTreeSet;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// One listening TCP socket from the kernel's table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listener {
    pub addr: SocketAddr,
    pub inode: u64,
}

/// TCP sockets in LISTEN state that would take a connection to `addr` on
/// this machine: bound to that address or to the wildcard, on its port.
pub fn listeners(addr: SocketAddr) -> io::Result<Vec<Listener>> {
    listeners_under("/proc/net", addr)
}

/// The same, in the network namespace of `dir` (`/proc/PID/net` reads the
/// namespace process PID lives in: a decider in a lab controller's netns).
fn listeners_under(dir: &str, addr: SocketAddr) -> io::Result<Vec<Listener>> {
    let mut out = Vec::new();
    for (path, v6) in [(format!("{dir}/tcp"), false), (format!("{dir}/tcp6"), true)] {
        let path = path.as_str();
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            // No IPv6 in this kernel: nothing listens there.
            Err(e) if e.kind() == io::ErrorKind::NotFound && v6 => continue,
            Err(e) => return Err(io::Error::new(e.kind(), format!("reading {path}: {e}"))),
        };
        out.extend(
            parse_proc_net_tcp(&text, v6)
                .into_iter()
                .filter(|l| takes_connections_for(l.addr, addr)),
        );
    }
    Ok(out)
}

/// Whether process `pid` holds one of the sockets listening for `addr`.
pub fn pid_listens(pid: u32, addr: SocketAddr) -> bool {
    // Its own namespace's table: the host's does not list a socket bound
    // inside a netns.
    let Ok(ls) = listeners_under(&format!("/proc/{pid}/net"), addr) else {
        return false;
    };
    let inodes: BTreeSet<u64> = ls.iter().map(|l| l.inode).collect();
    !inodes.is_empty() && socket_inodes_of(pid).iter().any(|i| inodes.contains(i))
}

/// PIDs (of those this user can see) holding one of the sockets listening
/// for `addr`.
pub fn listening_pids(addr: SocketAddr) -> Vec<u32> {
    let Ok(ls) = listeners(addr) else {
        return Vec::new();
    };
    let inodes: BTreeSet<u64> = ls.iter().map(|l| l.inode).collect();
    if inodes.is_empty() {
        return Vec::new();
    }
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| socket_inodes_of(*pid).iter().any(|i| inodes.contains(i)))
        .collect()
}

/// `/proc/PID/cmdline` as one line (for messages naming a process).
pub fn cmdline(pid: u32) -> String {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| {
            b.split(|c| *c == 0)
                .filter(|s| !s.is_empty())
                .map(|s| String::from_utf8_lossy(s).into_owned())
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_default()
}

fn socket_inodes_of(pid: u32) -> Vec<u64> {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return Vec::new();
    };
    dir.filter_map(|e| {
        let target = std::fs::read_link(e.ok()?.path()).ok()?;
        target
            .to_str()?
            .strip_prefix("socket:[")?
            .strip_suffix(']')?
            .parse()
            .ok()
    })
    .collect()
}

fn takes_connections_for(listening: SocketAddr, wanted: SocketAddr) -> bool {
    if listening.port() != wanted.port() {
        return false;
    }
    let l = listening.ip();
    // A v6 wildcard socket takes v4 too unless IPV6_V6ONLY; counting it is
    // the safe side for "is the place taken".
    l == wanted.ip() || l.is_unspecified() || l == to_mapped(wanted.ip())
}

fn to_mapped(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => IpAddr::V6(v4.to_ipv6_mapped()),
        v6 => v6,
    }
}

/// Parses `/proc/net/tcp` or `/proc/net/tcp6`, keeping LISTEN (0A) rows.
/// Addresses are the kernel's words printed in host byte order.
pub fn parse_proc_net_tcp(text: &str, v6: bool) -> Vec<Listener> {
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.get(3) != Some(&"0A") {
                return None;
            }
            let (ip_hex, port_hex) = f.get(1)?.split_once(':')?;
            let port = u16::from_str_radix(port_hex, 16).ok()?;
            let ip = if v6 {
                parse_v6(ip_hex)?
            } else {
                IpAddr::V4(Ipv4Addr::from(
                    u32::from_str_radix(ip_hex, 16).ok()?.to_ne_bytes(),
                ))
            };
            let inode = f.get(9)?.parse().ok()?;
            Some(Listener {
                addr: SocketAddr::new(ip, port),
                inode,
            })
        })
        .collect()
}

fn parse_v6(hex: &str) -> Option<IpAddr> {
    if hex.len() != 32 {
        return None;
    }
    let mut bytes = [0u8; 16];
    for (i, chunk) in bytes.chunks_mut(4).enumerate() {
        let word = u32::from_str_radix(hex.get(i * 8..i * 8 + 8)?, 16).ok()?;
        chunk.copy_from_slice(&word.to_ne_bytes());
    }
    Some(IpAddr::V6(Ipv6Addr::from(bytes)))
}

#[cfg(test)]
mod tests {
    use super::*;

    const TCP: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 016433C6:1388 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 4242 1 0000000000000000 100 0 0 10 0
   1: 00000000:C383 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 4343 1 0000000000000000 100 0 0 10 0
   2: 0100007F:1388 0100007F:9C40 01 00000000:00000000 00:00000000 00000000     0        0 4444 1 0000000000000000 20 4 30 10 -1
";

    #[test]
    fn parses_listeners_and_skips_other_states() {
        let l = parse_proc_net_tcp(TCP, false);
        assert_eq!(
            l,
            vec![
                Listener {
                    addr: "198.51.100.1:5000".parse().expect("test literal"),
                    inode: 4242
                },
                Listener {
                    addr: "0.0.0.0:50051".parse().expect("test literal"),
                    inode: 4343
                },
            ]
        );
    }

    #[test]
    fn parses_v6_words_in_host_order() {
        let text = "header\n   0: 00000000000000000000000001000000:1F90 00000000000000000000000000000000:0000 0A 0 0 0 0 0 0 77 1\n";
        let l = parse_proc_net_tcp(text, true);
        assert_eq!(l.len(), 1);
        assert_eq!(l[0].addr, "[::1]:8080".parse().expect("test literal"));
    }

    #[test]
    fn wildcard_and_exact_listeners_take_the_address_others_do_not() {
        let want: SocketAddr = "198.51.100.1:5000".parse().expect("test literal");
        let at = |s: &str| s.parse::<SocketAddr>().expect("test literal");
        assert!(takes_connections_for(at("198.51.100.1:5000"), want));
        assert!(takes_connections_for(at("0.0.0.0:5000"), want));
        assert!(takes_connections_for(at("[::]:5000"), want));
        assert!(!takes_connections_for(at("127.0.0.1:5000"), want));
        assert!(!takes_connections_for(at("198.51.100.1:5001"), want));
    }

    #[test]
    fn a_listener_of_this_process_is_found_and_owned() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("test literal");
        let addr = l.local_addr().expect("test literal");
        assert!(pid_listens(std::process::id(), addr));
        assert!(listening_pids(addr).contains(&std::process::id()));
        drop(l);
        assert!(!pid_listens(std::process::id(), addr));
    }
}
