//! A throwaway one-member etcd (Debian's `etcd-server`, installed by
//! `cargo xtask setup`) for the cluster crate's tests and benchmark.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct EtcdProc {
    child: Child,
    pub url: String,
    _dir: tempfile::TempDir,
}

impl Drop for EtcdProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// Starts a one-member etcd; panics (the test needs it) with how to get one.
pub fn etcd() -> EtcdProc {
    let dir = tempfile::tempdir().expect("tempdir");
    let (client, peer) = (free_port(), free_port());
    let url = format!("http://127.0.0.1:{client}");
    let child = Command::new("etcd")
        .args([
            "--name",
            "t",
            "--data-dir",
            &dir.path().join("data").display().to_string(),
            "--listen-client-urls",
            &url,
            "--advertise-client-urls",
            &url,
            "--listen-peer-urls",
            &format!("http://127.0.0.1:{peer}"),
            "--initial-advertise-peer-urls",
            &format!("http://127.0.0.1:{peer}"),
            "--initial-cluster",
            &format!("t=http://127.0.0.1:{peer}"),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("etcd not installed: run `cargo xtask setup` (Debian etcd-server)");
    let p = EtcdProc {
        child,
        url: url.clone(),
        _dir: dir,
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let ok = Command::new("etcdctl")
            .args(["--endpoints", &url, "endpoint", "health"])
            .env("ETCDCTL_API", "3")
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false);
        if ok {
            return p;
        }
        assert!(
            Instant::now() < deadline,
            "etcd on {url} not healthy in 20 s"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}
