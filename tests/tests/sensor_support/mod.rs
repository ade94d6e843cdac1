//! Shared rigs for the sensor tests: an in-process decider stand-in (a tonic
//! `SensorStream` server that records heartbeats and acks them), a
//! `vigil-sensor run` child, a cgroup v2 group per test (so tests running in
//! parallel, and any lab on the same machine, never see each other's
//! processes), and the stalled-disk rig (a loop device over a file on a FUSE
//! mount that stops answering). Each is a guard whose `Drop` cleans up, also
//! when the test fails.
#![allow(dead_code, reason = "each test binary uses a different subset")]

use std::{
    ffi::CString,
    io::{BufRead as _, BufReader},
    net::SocketAddr,
    os::unix::{fs::MetadataExt as _, process::CommandExt as _},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use vigil_proto::v1::{
    self,
    sensor_stream_server::{SensorStream, SensorStreamServer},
};
use vigil_tests::{bins, tier, wait};

// ------------------------------------------------------------ the decider stand-in

#[derive(Clone)]
struct Svc {
    beats: Arc<Mutex<Vec<v1::Heartbeat>>>,
    token: String,
    rejected: Arc<AtomicU64>,
}

#[tonic::async_trait]
impl SensorStream for Svc {
    type StreamStream = ReceiverStream<Result<v1::DeciderMessage, tonic::Status>>;

    async fn stream(
        &self,
        request: tonic::Request<tonic::Streaming<v1::SensorMessage>>,
    ) -> Result<tonic::Response<Self::StreamStream>, tonic::Status> {
        let auth = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        // An empty token means this stand-in does not check.
        if !self.token.is_empty() && auth != format!("Bearer {}", self.token) {
            self.rejected.fetch_add(1, Ordering::Relaxed);
            return Err(tonic::Status::unauthenticated("bad token"));
        }
        let mut inbound = request.into_inner();
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        let beats = self.beats.clone();
        tokio::spawn(async move {
            while let Ok(Some(msg)) = inbound.message().await {
                if let Some(v1::sensor_message::Kind::Heartbeat(hb)) = msg.kind {
                    let seq = hb.seq;
                    beats.lock().expect("beats lock").push(hb);
                    let ack = v1::DeciderMessage {
                        kind: Some(v1::decider_message::Kind::Ack(v1::Ack { seq })),
                    };
                    if tx.send(Ok(ack)).await.is_err() {
                        break;
                    }
                }
            }
        });
        Ok(tonic::Response::new(ReceiverStream::new(rx)))
    }
}

/// A `SensorStream` server on 127.0.0.1 in its own runtime; `stop` kills it
/// with every connection (as a crash would), `restart` brings it back on the
/// same port with the same record.
pub struct Collector {
    rt: Option<tokio::runtime::Runtime>,
    pub addr: SocketAddr,
    beats: Arc<Mutex<Vec<v1::Heartbeat>>>,
    token: String,
    pub rejected: Arc<AtomicU64>,
}

impl Collector {
    pub fn start(token: &str) -> Collector {
        let mut c = Collector {
            rt: None,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            beats: Arc::default(),
            token: token.to_string(),
            rejected: Arc::default(),
        };
        c.serve();
        c
    }

    fn serve(&mut self) {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("test runtime");
        let listener = rt
            .block_on(tokio::net::TcpListener::bind(self.addr))
            .expect("bind the collector (port still in use?)");
        self.addr = listener.local_addr().expect("local addr");
        let svc = Svc {
            beats: self.beats.clone(),
            token: self.token.clone(),
            rejected: self.rejected.clone(),
        };
        rt.spawn(
            tonic::transport::Server::builder()
                .add_service(SensorStreamServer::new(svc))
                .serve_with_incoming(TcpListenerStream::new(listener)),
        );
        self.rt = Some(rt);
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Kills the server and all its connections at once.
    pub fn stop(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }

    pub fn restart(&mut self) {
        self.stop();
        self.serve();
    }

    pub fn beats(&self) -> Vec<v1::Heartbeat> {
        self.beats.lock().expect("beats lock").clone()
    }

    pub fn latest(&self) -> Option<v1::Heartbeat> {
        self.beats.lock().expect("beats lock").last().cloned()
    }

    /// Waits for a heartbeat (received after this call) for which `pick`
    /// returns Some.
    pub fn wait_for<T: std::fmt::Debug>(
        &self,
        what: &str,
        deadline: Duration,
        mut pick: impl FnMut(&v1::Heartbeat) -> Option<T>,
    ) -> (T, v1::Heartbeat, Duration) {
        let from = self.beats.lock().expect("beats lock").len();
        let (found, took) = wait::until(what, deadline, Duration::from_millis(50), || {
            let beats = self.beats.lock().expect("beats lock");
            for hb in beats.iter().skip(from) {
                if let Some(v) = pick(hb) {
                    return Ok((v, hb.clone()));
                }
            }
            Err(beats.last().cloned().map(brief))
        })
        .unwrap_or_else(|e| panic!("{e}\nsensor log (tail):\n{}", sensor_log_tail()));
        (found.0, found.1, took)
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A heartbeat shortened for failure messages.
pub fn brief(hb: v1::Heartbeat) -> String {
    format!(
        "seq={} mode={} blocked={:?} devices={:?} instances={:?} nova={:?} health={:?}",
        hb.seq,
        hb.mode,
        hb.blocked_tasks
            .iter()
            .map(|b| (b.pid, b.comm.clone(), b.blocked_ms))
            .collect::<Vec<_>>(),
        hb.device_stalls
            .iter()
            .map(|d| (d.device.clone(), d.in_flight, d.oldest_ms))
            .collect::<Vec<_>>(),
        hb.instances
            .iter()
            .map(|i| (i.uuid.clone(), i.pid, i.alive, i.cpu_ns_delta, i.exited))
            .collect::<Vec<_>>(),
        hb.nova_compute,
        hb.health
            .map(|h| (h.attached_probes, h.failed_probes, h.message)),
    )
}

// ------------------------------------------------------------ processes

/// A child process killed (and reaped) on drop.
pub struct ChildGuard(pub Child);

impl ChildGuard {
    pub fn pid(&self) -> u32 {
        self.0.id()
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: kill on our own child's pid.
        unsafe { libc::kill(self.0.id() as i32, sig) };
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        // A child in D state dies only once its I/O completes; reap it if it
        // already has, never block a test's cleanup on it.
        let _ = self.0.try_wait();
    }
}

thread_local! {
    /// The log of the sensor this test thread started, for failure messages.
    static SENSOR_LOG: std::cell::RefCell<Option<Arc<Mutex<Vec<String>>>>> = const { std::cell::RefCell::new(None) };
}

fn sensor_log_tail() -> String {
    SENSOR_LOG.with(|l| {
        l.borrow()
            .as_ref()
            .map(|log| {
                let log = log.lock().expect("log lock");
                log.iter()
                    .rev()
                    .take(30)
                    .rev()
                    .cloned()
                    .collect::<Vec<_>>()
                    .join("\n")
            })
            .unwrap_or_default()
    })
}

/// A `vigil-sensor run` child; stopped with SIGTERM on drop. Its stderr is
/// kept for failure messages.
pub struct Sensor {
    child: Child,
    pub log: Arc<Mutex<Vec<String>>>,
}

impl Sensor {
    pub fn start(args: &[String]) -> Sensor {
        let mut child = Command::new(bins::bin("vigil-sensor"))
            .arg("run")
            .args(args)
            .env("VIGIL_LOG", "info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start vigil-sensor");
        let log: Arc<Mutex<Vec<String>>> = Arc::default();
        if let Some(stderr) = child.stderr.take() {
            let log = log.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    log.lock().expect("log lock").push(line);
                }
            });
        }
        SENSOR_LOG.with(|l| *l.borrow_mut() = Some(log.clone()));
        Sensor { child, log }
    }

    pub fn log_text(&self) -> String {
        self.log.lock().expect("log lock").join("\n")
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Sensor {
    fn drop(&mut self) {
        // SAFETY: kill on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Common `run` arguments: the collector, a node name, a boot id file.
pub fn sensor_args(
    collector: &Collector,
    boot_id: &Path,
    cgroup: Option<&TestCgroup>,
    extra: &[&str],
) -> Vec<String> {
    let mut a: Vec<String> = vec![
        "--decider".into(),
        collector.url(),
        "--node".into(),
        "test-node".into(),
        "--boot-id-path".into(),
        boot_id.display().to_string(),
        "--reconnect-min".into(),
        "100ms".into(),
        "--reconnect-max".into(),
        "500ms".into(),
        "--discovery-interval".into(),
        "300ms".into(),
    ];
    if let Some(cg) = cgroup {
        a.push("--cgroup".into());
        a.push(cg.rel.clone());
    }
    a.extend(extra.iter().map(|s| s.to_string()));
    a
}

// ------------------------------------------------------------ cgroup per test

/// A cgroup v2 group for one test; processes started with
/// [`TestCgroup::command`] run in it from their first instruction.
pub struct TestCgroup {
    /// Path below the cgroup2 mount, as `--cgroup` takes it.
    pub rel: String,
    pub dir: PathBuf,
}

fn cgroup2_mount() -> PathBuf {
    let text = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    text.lines()
        .find_map(|l| {
            let (pre, post) = l.split_once(" - ")?;
            if post.split_whitespace().next()? != "cgroup2" {
                return None;
            }
            Some(PathBuf::from(pre.split_whitespace().nth(4)?))
        })
        .expect("a cgroup2 mount (hybrid hosts have it at /sys/fs/cgroup/unified)")
}

impl TestCgroup {
    pub fn new(name: &str) -> TestCgroup {
        let rel = format!("/vigil-test/{name}-{}", std::process::id());
        let dir = cgroup2_mount().join(rel.trim_start_matches('/'));
        std::fs::create_dir_all(&dir).expect("create the test cgroup");
        TestCgroup { rel, dir }
    }

    /// A command that moves itself into this group before `exec`.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let procs = CString::new(self.dir.join("cgroup.procs").display().to_string())
            .expect("no NUL in path");
        let mut cmd = Command::new(program);
        // SAFETY: the closure only calls async-signal-safe libc functions
        // (open, write, close) on memory prepared before fork.
        unsafe {
            cmd.pre_exec(move || {
                let fd = libc::open(procs.as_ptr(), libc::O_WRONLY);
                if fd < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // "0" moves the writing process itself.
                let ok = libc::write(fd, b"0".as_ptr().cast(), 1) == 1;
                libc::close(fd);
                if ok {
                    Ok(())
                } else {
                    Err(std::io::Error::last_os_error())
                }
            });
        }
        cmd
    }

    pub fn pids(&self) -> Vec<u32> {
        std::fs::read_to_string(self.dir.join("cgroup.procs"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect()
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        let _ = std::fs::write(self.dir.join("cgroup.kill"), "1");
        let _ = wait::until(
            "test cgroup empty",
            Duration::from_secs(10),
            Duration::from_millis(50),
            || {
                if self.pids().is_empty() {
                    Ok(())
                } else {
                    Err(self.pids())
                }
            },
        );
        let _ = std::fs::remove_dir(&self.dir);
        // The shared parent goes when the last test's group is gone.
        if let Some(parent) = self.dir.parent() {
            let _ = std::fs::remove_dir(parent);
        }
    }
}

// ------------------------------------------------------------ the stalled disk

/// A Python with fusepy: the system one, else the lab's venv. None when
/// neither has it.
pub fn fuse_python() -> Option<PathBuf> {
    let lab = std::env::var("VIGIL_LAB_DIR").unwrap_or_else(|_| "/var/lib/vigil-lab".into());
    ["python3".into(), format!("{lab}/venv/bin/python")]
        .into_iter()
        .find(|py| {
            Command::new(py)
                .args(["-c", "import fuse"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        })
        .map(PathBuf::from)
}

/// Returns false (after saying why) when the stalled-disk rig cannot run
/// here; panics instead in strict mode.
pub fn can_stall_disks(test: &str) -> bool {
    if fuse_python().is_some() && Path::new("/dev/fuse").exists() {
        return true;
    }
    let msg = format!("{test}: needs /dev/fuse, libfuse2 and fusepy (`pip install fusepy`; `cargo xtask setup` installs it)");
    if tier::strict() {
        panic!("{msg} (strict mode forbids skipping)");
    }
    eprintln!("SKIPPED {msg}");
    false
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// notes/ebpf.md's fault rig: the lab's `stalldisk.py` FUSE daemon serves
/// one `disk.img` and stops answering while a flag file exists; a loop
/// device over it makes O_DIRECT readers of the device wait in D state.
pub struct StallRig {
    dir: PathBuf,
    mnt: PathBuf,
    flag: PathBuf,
    daemon: Option<Child>,
    /// e.g. `/dev/loop3`.
    pub loopdev: String,
    /// "major:minor" of the loop device.
    pub dev: String,
}

impl StallRig {
    pub fn new(name: &str) -> StallRig {
        let dir = std::env::temp_dir().join(format!("vigil-stall-{name}-{}", std::process::id()));
        let mnt = dir.join("mnt");
        std::fs::create_dir_all(&mnt).expect("rig dirs");
        let flag = dir.join("stall");
        let py = fuse_python().expect("fusepy (checked by can_stall_disks)");
        let script = bins::workspace_root().join("tests/lab/nodes/stalldisk.py");
        let daemon = Command::new(py)
            .arg(&script)
            .arg(&mnt)
            .arg(&flag)
            .arg("16")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start stalldisk.py");
        let mut rig = StallRig {
            dir,
            mnt,
            flag,
            daemon: Some(daemon),
            loopdev: String::new(),
            dev: String::new(),
        };
        let img = rig.mnt.join("disk.img");
        wait::until(
            "FUSE disk.img to appear",
            Duration::from_secs(15),
            Duration::from_millis(50),
            || {
                if img.exists() {
                    Ok(())
                } else {
                    Err("not yet")
                }
            },
        )
        .unwrap_or_else(|e| panic!("{e}"));
        rig.loopdev = run(Command::new("losetup").args(["-f", "--show"]).arg(&img));
        let rdev = std::fs::metadata(&rig.loopdev)
            .expect("stat loop device")
            .rdev();
        rig.dev = format!("{}:{}", libc::major(rdev), libc::minor(rdev));
        rig
    }

    /// From now on the disk does not answer.
    pub fn stall(&self) {
        std::fs::write(&self.flag, b"").expect("create the stall flag");
    }

    /// The disk answers again; waiting requests complete.
    pub fn release(&self) {
        let _ = std::fs::remove_file(&self.flag);
    }

    /// Starts a reader of one 4 KiB block with O_DIRECT, so it cannot be
    /// served from the page cache and waits (in D) on the stalled disk.
    pub fn reader(&self, cg: &TestCgroup, argv0: Option<&str>) -> ChildGuard {
        let mut cmd = cg.command("dd");
        if let Some(a) = argv0 {
            cmd.arg0(a);
        }
        let child = cmd
            .args([
                &format!("if={}", self.loopdev),
                "of=/dev/null",
                "bs=4k",
                "count=1",
                "iflag=direct",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start dd");
        ChildGuard(child)
    }
}

impl Drop for StallRig {
    fn drop(&mut self) {
        self.release();
        if !self.loopdev.is_empty() {
            // The reader finishes its I/O first, then the device can go.
            let _ = wait::until(
                "loop device detach",
                Duration::from_secs(10),
                Duration::from_millis(100),
                || {
                    let ok = Command::new("losetup")
                        .args(["-d", &self.loopdev])
                        .status()
                        .is_ok_and(|s| s.success());
                    if ok {
                        Ok(())
                    } else {
                        Err("busy")
                    }
                },
            );
        }
        // The killed reader may take a moment to close the device.
        let umounted = wait::until(
            "FUSE umount",
            Duration::from_secs(5),
            Duration::from_millis(100),
            || {
                let ok = Command::new("umount")
                    .arg(&self.mnt)
                    .stderr(Stdio::null())
                    .status()
                    .is_ok_and(|s| s.success());
                if ok {
                    Ok(())
                } else {
                    Err("busy")
                }
            },
        )
        .is_ok();
        if !umounted {
            let _ = Command::new("umount").arg("-l").arg(&self.mnt).status();
        }
        if let Some(mut d) = self.daemon.take() {
            let _ = d.kill();
            let _ = d.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A boot id file for the sensor under test.
pub fn boot_id_file(dir: &Path) -> PathBuf {
    let p = dir.join("boot_id");
    std::fs::write(&p, "11111111-2222-3333-4444-555555555555\n").expect("write boot id");
    p
}
