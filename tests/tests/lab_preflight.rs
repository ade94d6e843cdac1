//! `cargo xtask demo --preflight` on a network that accepts a TCP connect to
//! any address (issue 12): a transparent proxy made faithfully in a
//! throwaway network namespace of this test's own (nft redirects every
//! outgoing TCP connect to a local listener, as such networks do), so it
//! holds whatever the machine's own network does. The pre-flight must pass
//! there while no lab is up, and still refuse a real second lab (a process
//! listening on the lab's Keystone address with another VIGIL_LAB_DIR) and a
//! process holding the decider's port.
//!
//! Nothing leaves the namespace: its only link is a veth pair whose both
//! ends are inside it.

use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use vigil_tests::{bins, tier, wait};

fn run(cmd: &mut Command) -> Output {
    match cmd.output() {
        Ok(o) => o,
        Err(e) => panic!("cannot run {cmd:?}: {e}"),
    }
}

fn ok(cmd: &mut Command) {
    let o = run(cmd);
    assert!(
        o.status.success(),
        "{cmd:?}: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}

/// The namespace and the processes started in it, removed on drop.
struct Netns {
    name: String,
    children: Vec<Child>,
}

impl Netns {
    fn new(name: &str) -> Netns {
        let _ = run(Command::new("ip").args(["netns", "del", name]));
        ok(Command::new("ip").args(["netns", "add", name]));
        Netns {
            name: name.to_string(),
            children: Vec::new(),
        }
    }

    fn cmd(&self, prog: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name, prog]);
        c
    }

    /// Loopback up, and a veth pair with both ends in the namespace, `addr`
    /// on one end.
    fn link_up(&self, addr: &str) {
        ok(self.cmd("ip").args(["link", "set", "lo", "up"]));
        ok(self
            .cmd("ip")
            .args(["link", "add", "up0", "type", "veth", "peer", "name", "up1"]));
        for dev in ["up0", "up1"] {
            ok(self.cmd("ip").args(["link", "set", dev, "up"]));
        }
        ok(self.cmd("ip").args(["addr", "add", addr, "dev", "up0"]));
    }

    /// A Python listener on `addr:port` in the namespace, with `env`; waits
    /// until its socket is in the namespace's table.
    fn listen(&mut self, addr: &str, port: u16, env: &[(&str, &str)]) {
        let script = format!(
            "import socket,time\n\
             s=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n\
             s.bind(('{addr}', {port})); s.listen(64)\n\
             while True:\n    c,_=s.accept(); c.close()\n"
        );
        let mut c = self.cmd("python3");
        c.args(["-c", &script]).stdin(Stdio::null());
        for (k, v) in env {
            c.env(k, v);
        }
        self.children.push(
            c.spawn()
                .unwrap_or_else(|e| panic!("start a listener: {e}")),
        );
        let hex_port = format!(":{port:04X} ");
        let r = wait::until(
            &format!("a listener on {addr}:{port} in {}", self.name),
            Duration::from_secs(10),
            Duration::from_millis(50),
            || {
                let o = run(self.cmd("cat").args(["/proc/net/tcp"]));
                let t = String::from_utf8_lossy(&o.stdout).into_owned();
                if t.lines()
                    .any(|l| l.contains(&hex_port) && l.contains(" 0A "))
                {
                    Ok(())
                } else {
                    Err(t)
                }
            },
        );
        if let Err(e) = r {
            panic!("{e}");
        }
    }

    /// `cargo xtask demo --preflight` in the namespace, for a lab directory
    /// where no lab is up.
    fn preflight(&self, lab_dir: &std::path::Path) -> Output {
        run(self
            .cmd(bins::bin("xtask").to_str().expect("UTF-8 path"))
            .args(["demo", "--preflight"])
            .env("VIGIL_LAB_DIR", lab_dir))
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = run(Command::new("ip").args(["netns", "del", &self.name]));
    }
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn preflight_passes_where_a_proxy_answers_every_connect_and_refuses_a_real_second_lab() {
    if !tier::root(
        "preflight_passes_where_a_proxy_answers_every_connect",
        "network namespaces and nft",
    ) {
        return;
    }
    let mut ns = Netns::new(&format!("vpre-{}", std::process::id()));
    // A route for the lab's range, so a connect goes out (and is caught by
    // the proxy) instead of failing "network unreachable".
    ns.link_up("10.99.0.2/24");
    ok(ns
        .cmd("ip")
        .args(["route", "add", "default", "via", "10.99.0.1"]));
    // The transparent proxy: every outgoing TCP connect not to loopback is
    // redirected to a listener of the namespace.
    ok(ns.cmd("nft").args(["add table ip proxy; \
         add chain ip proxy out { type nat hook output priority -100; }; \
         add rule ip proxy out ip daddr != 127.0.0.0/8 tcp dport != 15000 redirect to :15000"]));
    ns.listen("0.0.0.0", 15000, &[]);

    // The reproduction: a connect to the lab's Keystone address succeeds,
    // although that address is on no interface of the namespace.
    let c = run(ns.cmd("python3").args([
        "-c",
        "import socket; socket.create_connection(('198.51.100.1', 5000), 3); print('open')",
    ]));
    assert!(
        text(&c).contains("open"),
        "the namespace does not reproduce a network that answers every connect: {}",
        text(&c)
    );

    let no_lab = tempfile::tempdir().expect("temp dir");
    let o = ns.preflight(no_lab.path());
    assert!(
        o.status.success() && text(&o).contains("preflight ok"),
        "pre-flight refused a machine whose network merely answers every connect:\n{}",
        text(&o)
    );

    // A real second lab: its Keystone listens on the lab address.
    ok(ns
        .cmd("ip")
        .args(["addr", "add", "198.51.100.1/24", "dev", "up0"]));
    ns.listen("198.51.100.1", 5000, &[("VIGIL_LAB_DIR", "/srv/other-lab")]);
    let o = ns.preflight(no_lab.path());
    assert!(
        !o.status.success(),
        "pre-flight passed with another lab's Keystone listening:\n{}",
        text(&o)
    );
    assert!(
        text(&o).contains("another lab runs here") && text(&o).contains("/srv/other-lab"),
        "the refusal must say another lab runs and where it lives:\n{}",
        text(&o)
    );

    // Something holding the decider's port is named too.
    let mut ns2 = Netns::new(&format!("vpre2-{}", std::process::id()));
    ns2.link_up("198.51.100.1/24");
    ns2.listen("198.51.100.1", 50051, &[]);
    let o = ns2.preflight(no_lab.path());
    assert!(
        !o.status.success() && text(&o).contains("already listens on 198.51.100.1:50051"),
        "pre-flight must refuse a taken decider port, naming it:\n{}",
        text(&o)
    );
}
