//! The decider's systemd protocol, against a real `vigil-decider serve`: the
//! test owns the `NOTIFY_SOCKET` (a unix datagram socket, as systemd's) and
//! reads what arrives: `READY=1` once serving, `WATCHDOG=1` from the engine's
//! tick, no `WATCHDOG=1` while the engine thread is stopped (by ptrace, from
//! outside, while the rest of the decider keeps serving), pings again once it
//! runs, `STOPPING=1` on SIGTERM. Needs neither root nor the lab: the decider
//! is this test's child, which Yama's ptrace scope 1 allows.

use std::os::unix::net::UnixDatagram;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use vigil_tests::bins;

/// `WATCHDOG_USEC` given to the decider: it pings every half of it.
const WATCHDOG: Duration = Duration::from_secs(1);

struct Decider {
    child: Child,
    dir: tempfile::TempDir,
}

impl Drop for Decider {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Decider {
    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("decider.log")).unwrap_or_default()
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

fn start(dir: tempfile::TempDir, socket: &std::path::Path, metrics_port: u16) -> Decider {
    let token = dir.path().join("compute1.token");
    std::fs::write(&token, "notify-test-token-0123456789").expect("token file");
    let cfg = format!(
        "[server]\nlisten = \"127.0.0.1:{}\"\n[metrics]\nlisten = \"127.0.0.1:{metrics_port}\"\n\
         [nova]\nenabled = false\n[ping]\nenabled = false\n[[node]]\nname = \"compute1\"\n\
         token_file = \"{}\"\nmanagement_addresses = [\"198.51.100.11\"]\n",
        free_port(),
        token.display()
    );
    let path = dir.path().join("decider.toml");
    std::fs::write(&path, cfg).expect("config file");
    let log = std::fs::File::create(dir.path().join("decider.log")).expect("log file");
    let child = Command::new(bins::bin("vigil-decider"))
        .args(["serve", "--config"])
        .arg(&path)
        .env("NOTIFY_SOCKET", socket)
        .env("WATCHDOG_USEC", WATCHDOG.as_micros().to_string())
        .env("VIGIL_LOG", "debug")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start vigil-decider serve");
    Decider { child, dir }
}

/// The next datagram within `deadline`, or `None`.
fn next(sock: &UnixDatagram, deadline: Duration) -> Option<String> {
    sock.set_read_timeout(Some(deadline.max(Duration::from_millis(1))))
        .expect("set a read timeout");
    let mut buf = [0u8; 4096];
    match sock.recv(&mut buf) {
        Ok(n) => Some(String::from_utf8_lossy(&buf[..n]).into_owned()),
        Err(_) => None,
    }
}

/// Waits for a datagram with `line`, returning every one seen on the way.
fn wait_for(sock: &UnixDatagram, line: &str, deadline: Duration, d: &Decider) -> Vec<String> {
    let start = Instant::now();
    let mut seen = Vec::new();
    while let Some(left) = deadline.checked_sub(start.elapsed()) {
        let Some(msg) = next(sock, left) else { break };
        let found = msg.lines().any(|l| l == line);
        seen.push(msg);
        if found {
            return seen;
        }
    }
    panic!(
        "no {line} within {deadline:?}; got {seen:?}\n--- decider log ---\n{}",
        d.log()
    );
}

/// The engine thread's id: the thread named `vigil-engine`.
fn engine_tid(pid: u32) -> i32 {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).expect("list the decider's threads");
    for t in tasks.flatten() {
        let comm = std::fs::read_to_string(t.path().join("comm")).unwrap_or_default();
        if comm.trim() == "vigil-engine" {
            if let Some(tid) = t.file_name().to_str().and_then(|s| s.parse().ok()) {
                return tid;
            }
        }
    }
    panic!("no thread named vigil-engine in /proc/{pid}/task");
}

/// Stops one thread of the decider from outside, as a debugger does: the
/// other threads (gRPC, /metrics) go on. Undone by [`resume_thread`] from
/// this same thread (ptrace requests come from the tracer thread).
fn stop_thread(tid: i32) {
    // SAFETY: ptrace with integer arguments; no memory is shared.
    let rc = unsafe { libc::ptrace(libc::PTRACE_SEIZE, tid, 0, 0) };
    assert_eq!(
        rc,
        0,
        "PTRACE_SEIZE {tid}: {}",
        std::io::Error::last_os_error()
    );
    // SAFETY: as above.
    let rc = unsafe { libc::ptrace(libc::PTRACE_INTERRUPT, tid, 0, 0) };
    assert_eq!(
        rc,
        0,
        "PTRACE_INTERRUPT {tid}: {}",
        std::io::Error::last_os_error()
    );
    let mut status = 0;
    // SAFETY: status is a valid out-pointer for the call's duration.
    let rc = unsafe { libc::waitpid(tid, &mut status, libc::__WALL) };
    assert_eq!(
        rc,
        tid,
        "waitpid {tid}: {}",
        std::io::Error::last_os_error()
    );
    assert!(
        libc::WIFSTOPPED(status),
        "thread {tid} did not stop: {status:#x}"
    );
}

fn resume_thread(tid: i32) {
    // SAFETY: ptrace with integer arguments.
    let rc = unsafe { libc::ptrace(libc::PTRACE_DETACH, tid, 0, 0) };
    assert_eq!(
        rc,
        0,
        "PTRACE_DETACH {tid}: {}",
        std::io::Error::last_os_error()
    );
}

fn metrics_answer(port: u16) -> bool {
    reqwest::blocking::Client::new()
        .get(format!("http://127.0.0.1:{port}/metrics"))
        .timeout(Duration::from_secs(5))
        .send()
        .is_ok_and(|r| r.status().is_success())
}

#[test]
fn decider_tells_systemd_ready_watchdog_from_the_engine_and_stopping() {
    let dir = tempfile::tempdir().expect("temp dir");
    let socket = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&socket).expect("bind the notify socket");
    let metrics_port = free_port();
    let started = Instant::now();
    let mut d = start(dir, &socket, metrics_port);

    let before = wait_for(&sock, "READY=1", Duration::from_secs(30), &d);
    println!(
        "READY=1 after {:?} (before it: {before:?})",
        started.elapsed()
    );

    // Pings keep coming at about half WATCHDOG_USEC.
    let mut at = Vec::new();
    for _ in 0..4 {
        wait_for(&sock, "WATCHDOG=1", WATCHDOG * 2, &d);
        at.push(Instant::now());
    }
    let gaps: Vec<_> = at.windows(2).map(|w| w[1] - w[0]).collect();
    println!("WATCHDOG=1 gaps while running: {gaps:?}");

    // The engine stuck, the rest alive: /metrics still answers, and no ping
    // comes for twice WATCHDOG_USEC (systemd would restart it after one).
    let tid = engine_tid(d.child.id());
    stop_thread(tid);
    let stopped_at = Instant::now();
    // A ping already in the socket's queue was sent before the stop.
    while next(&sock, Duration::from_millis(1)).is_some() {}
    let quiet = next(&sock, WATCHDOG * 2);
    let runtime_alive = metrics_answer(metrics_port);
    resume_thread(tid);
    assert_eq!(
        quiet, None,
        "a notification arrived while the engine thread was stopped"
    );
    assert!(
        runtime_alive,
        "/metrics did not answer while only the engine thread was stopped"
    );
    println!(
        "engine thread stopped for {:?}: no WATCHDOG=1, /metrics answered",
        stopped_at.elapsed()
    );

    let resumed = Instant::now();
    wait_for(&sock, "WATCHDOG=1", WATCHDOG * 2, &d);
    println!(
        "WATCHDOG=1 again {:?} after the engine resumed",
        resumed.elapsed()
    );

    // SAFETY: kill with a pid we own and a valid signal.
    let rc = unsafe { libc::kill(d.child.id() as i32, libc::SIGTERM) };
    assert_eq!(rc, 0, "SIGTERM the decider");
    wait_for(&sock, "STOPPING=1", Duration::from_secs(10), &d);
    let status = d.child.wait().expect("wait for the decider");
    assert!(
        status.success(),
        "decider exited {status} after SIGTERM\n{}",
        d.log()
    );
}
