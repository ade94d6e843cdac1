//! In-memory fakes of the workflow's edges, for unit tests only. They model
//! what the lab measured of real Nova: evacuate needs the source forced down,
//! creates an instance action and an `evacuation` migration, the server is
//! `rebuilding` for a while and then lands; from 2.95 it lands SHUTOFF.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use serde_json::Value;

use super::guards::SelfCheck;
use super::nova::*;
use crate::fence::{FenceAck, FenceError, Fencer, PowerState};
use crate::journal::*;
use crate::notify::{Message, Notifier, NotifyError};
use crate::time::{Clock, Timestamp};

/// Virtual time: a `sleep` advances it when first polled (not when created,
/// so a deadline that loses a `select!` costs no time). Or, made with
/// [`FakeClock::real`], the wall clock: for tests where the workflow waits
/// on something that happens in real time (a crash kernel's messages).
#[derive(Default)]
pub struct FakeClock(Arc<AtomicI64>, bool);

impl FakeClock {
    pub fn new() -> Arc<Self> {
        Arc::new(FakeClock(
            Arc::new(AtomicI64::new(1_700_000_000_000)),
            false,
        ))
    }

    /// The wall clock, with real sleeps.
    pub fn real() -> Arc<Self> {
        Arc::new(FakeClock(Arc::new(AtomicI64::new(0)), true))
    }
}

impl Clock for FakeClock {
    fn now(&self) -> Timestamp {
        if self.1 {
            return Timestamp::from_system(std::time::SystemTime::now());
        }
        Timestamp(self.0.load(Ordering::SeqCst))
    }
    fn sleep(&self, d: Duration) -> BoxFuture<'static, ()> {
        if self.1 {
            return Box::pin(tokio::time::sleep(d));
        }
        let t = self.0.clone();
        Box::pin(async move {
            t.fetch_add(d.as_millis() as i64, Ordering::SeqCst);
            tokio::task::yield_now().await
        })
    }
}

/// Every call that changes something, in order, shared by fakes so tests can
/// check ordering across Nova and the BMC.
pub type CallLog = Arc<Mutex<Vec<String>>>;

fn log(l: &CallLog, s: String) {
    l.lock().expect("call log").push(s);
}

struct Pending {
    dest: String,
    lands_as: ServerStatus,
    polls_left: u32,
}

struct FakeServer {
    server: Server,
    migrations: Vec<Migration>,
    actions: Vec<Timestamp>,
    pending: Option<Pending>,
    /// Evacuations that will fail (server ERROR on the source, migration error).
    fail_next: u32,
    /// A failed evacuation leaves the status as it was (a failed claim on
    /// the destination), not ERROR.
    fail_keeps_status: bool,
    /// Evacuations never land (stays rebuilding).
    never_lands: bool,
    /// Reads left before Nova's late write of a rolled-back evacuation (its
    /// compute manager clears the task state once more); an evacuation made
    /// before it has its task state cleared and fails.
    late_revert: u32,
    /// The next evacuate's answer is lost (a stalled nova-api): the call
    /// returns `MaybeApplied`, and Nova applies it after this many server
    /// reads (`Some(None)`: never), reads failing meanwhile.
    stall_next: Option<Option<u32>>,
    /// A stalled evacuate waiting to be applied, and reads left until then.
    queued: Option<(EvacuateRequest, u32)>,
}

pub struct NovaState {
    services: BTreeMap<String, ComputeService>,
    servers: BTreeMap<String, FakeServer>,
    aggregates: Vec<Aggregate>,
    pub max: Microversion,
    /// The next `n` server reads fail with a transport error.
    pub flaky_reads: u32,
    /// Reads of this server take this long in real time (a busy Nova), so a
    /// server polled in a loop does not race through virtual time.
    pub slow_reads: Option<(String, Duration)>,
}

pub struct FakeNova {
    pub state: Mutex<NovaState>,
    pub calls: CallLog,
    clock: Arc<FakeClock>,
}

pub fn server(id: &str, host: &str, status: ServerStatus) -> Server {
    Server {
        id: id.into(),
        name: format!("vm-{id}"),
        project_id: "proj-a".into(),
        host: Some(host.into()),
        status,
        task_state: None,
        metadata: BTreeMap::new(),
        flavor_extra_specs: BTreeMap::new(),
        image_properties: BTreeMap::new(),
        fault: None,
        updated: None,
    }
}

fn other(what: &str) -> NovaCallError {
    NovaCallError::Transport {
        what: what.into(),
        source: "fake transport error".into(),
    }
}

impl FakeNova {
    pub fn new(hosts: &[&str], clock: Arc<FakeClock>, calls: CallLog) -> Arc<Self> {
        let services = hosts
            .iter()
            .map(|h| {
                (
                    h.to_string(),
                    ComputeService {
                        id: format!("svc-{h}"),
                        host: h.to_string(),
                        enabled: true,
                        disabled_reason: None,
                        forced_down: false,
                        up: true,
                    },
                )
            })
            .collect();
        Arc::new(FakeNova {
            state: Mutex::new(NovaState {
                services,
                servers: BTreeMap::new(),
                aggregates: Vec::new(),
                max: Microversion::new(2, 100),
                flaky_reads: 0,
                slow_reads: None,
            }),
            calls,
            clock,
        })
    }

    pub fn add_server(&self, s: Server) {
        self.state.lock().expect("nova").servers.insert(
            s.id.clone(),
            FakeServer {
                server: s,
                migrations: Vec::new(),
                actions: Vec::new(),
                pending: None,
                fail_next: 0,
                fail_keeps_status: false,
                never_lands: false,
                late_revert: 0,
                stall_next: None,
                queued: None,
            },
        );
    }

    /// The next evacuate of `id` stalls: no answer, applied after
    /// `applied_after` server reads (which fail until then), or never.
    pub fn stall_next_evacuate(&self, id: &str, applied_after: Option<u32>) {
        if let Some(s) = self.state.lock().expect("nova").servers.get_mut(id) {
            s.stall_next = Some(applied_after);
        }
    }

    /// Someone else's evacuate of `id`, recorded as an action now.
    pub fn foreign_evacuate_action(&self, id: &str) {
        let now = self.now();
        if let Some(s) = self.state.lock().expect("nova").servers.get_mut(id) {
            s.actions.push(now);
        }
    }

    /// Evacuate actions Nova holds for `id`.
    pub fn evacuate_actions(&self, id: &str) -> usize {
        self.state
            .lock()
            .expect("nova")
            .servers
            .get(id)
            .map_or(0, |s| s.actions.len())
    }

    pub fn fail_next_evacuations(&self, id: &str, n: u32) {
        if let Some(s) = self.state.lock().expect("nova").servers.get_mut(id) {
            s.fail_next = n;
        }
    }

    /// The next `n` evacuations of `id` fail as a destination's claim does:
    /// migration `failed`, the server rolled back to the status it had.
    pub fn fail_next_evacuations_keeping_status(&self, id: &str, n: u32) {
        if let Some(s) = self.state.lock().expect("nova").servers.get_mut(id) {
            s.fail_next = n;
            s.fail_keeps_status = true;
        }
    }

    pub fn never_lands(&self, id: &str) {
        if let Some(s) = self.state.lock().expect("nova").servers.get_mut(id) {
            s.never_lands = true;
        }
    }

    pub fn set_service(&self, host: &str, f: impl FnOnce(&mut ComputeService)) {
        if let Some(s) = self.state.lock().expect("nova").services.get_mut(host) {
            f(s);
        }
    }

    pub fn service_of(&self, host: &str) -> ComputeService {
        self.state.lock().expect("nova").services[host].clone()
    }

    pub fn add_aggregate(&self, name: &str, hosts: &[&str]) {
        self.state.lock().expect("nova").aggregates.push(Aggregate {
            id: name.into(),
            name: name.into(),
            hosts: hosts.iter().map(|h| h.to_string()).collect(),
        });
    }

    pub fn aggregate_hosts(&self, name: &str) -> Vec<String> {
        self.state
            .lock()
            .expect("nova")
            .aggregates
            .iter()
            .find(|a| a.name == name)
            .map(|a| a.hosts.clone())
            .unwrap_or_default()
    }

    pub fn get(&self, id: &str) -> Server {
        self.state.lock().expect("nova").servers[id].server.clone()
    }

    /// Evacuate calls Nova accepted or refused for `id`.
    pub fn evacuate_calls(&self, id: &str) -> usize {
        self.calls
            .lock()
            .expect("calls")
            .iter()
            .filter(|c| c.starts_with(&format!("evacuate {id} ")))
            .count()
    }

    pub fn calls_starting(&self, prefix: &str) -> usize {
        self.calls
            .lock()
            .expect("calls")
            .iter()
            .filter(|c| c.starts_with(prefix))
            .count()
    }

    fn now(&self) -> Timestamp {
        self.clock.now()
    }
}

fn ok<'a, T: Send + 'a>(v: Result<T, NovaCallError>) -> BoxFuture<'a, Result<T, NovaCallError>> {
    Box::pin(futures::future::ready(v))
}

impl NovaActions for FakeNova {
    fn max_microversion(&self) -> Microversion {
        self.state.lock().expect("nova").max
    }

    fn compute_service(&self, host: &str) -> BoxFuture<'_, Result<ComputeService, NovaCallError>> {
        let r = self
            .state
            .lock()
            .expect("nova")
            .services
            .get(host)
            .cloned()
            .ok_or(NovaCallError::NotFound {
                what: format!("service {host}"),
            });
        ok(r)
    }

    fn compute_services(&self) -> BoxFuture<'_, Result<Vec<ComputeService>, NovaCallError>> {
        ok(Ok(self
            .state
            .lock()
            .expect("nova")
            .services
            .values()
            .cloned()
            .collect()))
    }

    fn disable_service<'a>(
        &'a self,
        service: &'a ComputeService,
        reason: &'a str,
    ) -> BoxFuture<'a, Result<(), NovaCallError>> {
        log(&self.calls, format!("disable {}", service.host));
        self.set_service(&service.host, |s| {
            s.enabled = false;
            s.disabled_reason = Some(reason.to_string());
        });
        ok(Ok(()))
    }

    fn enable_service<'a>(
        &'a self,
        service: &'a ComputeService,
    ) -> BoxFuture<'a, Result<(), NovaCallError>> {
        log(&self.calls, format!("enable {}", service.host));
        self.set_service(&service.host, |s| {
            s.enabled = true;
            s.disabled_reason = None;
        });
        ok(Ok(()))
    }

    fn set_forced_down<'a>(
        &'a self,
        service: &'a ComputeService,
        down: bool,
    ) -> BoxFuture<'a, Result<(), NovaCallError>> {
        log(&self.calls, format!("forced_down {} {down}", service.host));
        self.set_service(&service.host, |s| {
            s.forced_down = down;
            s.up = !down;
        });
        ok(Ok(()))
    }

    fn servers_on_host<'a>(
        &'a self,
        host: &'a str,
    ) -> BoxFuture<'a, Result<Vec<Server>, NovaCallError>> {
        let st = self.state.lock().expect("nova");
        ok(Ok(st
            .servers
            .values()
            .filter(|s| s.server.host.as_deref() == Some(host))
            .map(|s| s.server.clone())
            .collect()))
    }

    fn server<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Server, NovaCallError>> {
        let slow = self
            .state
            .lock()
            .expect("nova")
            .slow_reads
            .clone()
            .filter(|(s, _)| s == id);
        let v = self.server_now(id);
        match slow {
            Some((_, d)) => Box::pin(async move {
                tokio::time::sleep(d).await;
                v
            }),
            None => ok(v),
        }
    }
    fn evacuate<'a>(
        &'a self,
        id: &'a str,
        request: &'a EvacuateRequest,
    ) -> BoxFuture<'a, Result<(), NovaCallError>> {
        log(
            &self.calls,
            format!("evacuate {id} {} {:?}", request.microversion, request.host),
        );
        let now = self.now();
        let mut st = self.state.lock().expect("nova");
        let services = st.services.clone();
        let healthy = healthy_hosts(&services);
        let Some(fs) = st.servers.get_mut(id) else {
            return ok(Err(NovaCallError::NotFound {
                what: format!("server {id}"),
            }));
        };
        if let Some(after) = fs.stall_next.take() {
            if let Some(n) = after {
                fs.queued = Some((request.clone(), n));
            }
            return ok(Err(NovaCallError::MaybeApplied {
                what: format!("evacuate {id}"),
                source: "fake: timed out".into(),
            }));
        }
        ok(apply_evacuate(fs, id, request, now, &services, &healthy))
    }

    fn evacuation_migrations<'a>(
        &'a self,
        id: &'a str,
    ) -> BoxFuture<'a, Result<Vec<Migration>, NovaCallError>> {
        ok(Ok(self
            .state
            .lock()
            .expect("nova")
            .servers
            .get(id)
            .map(|s| s.migrations.clone())
            .unwrap_or_default()))
    }

    fn evacuate_action_count<'a>(
        &'a self,
        id: &'a str,
        since: Timestamp,
    ) -> BoxFuture<'a, Result<u32, NovaCallError>> {
        let n = self
            .state
            .lock()
            .expect("nova")
            .servers
            .get(id)
            .map(|s| s.actions.iter().filter(|t| **t >= since).count())
            .unwrap_or(0);
        ok(Ok(n as u32))
    }

    fn reset_state<'a>(
        &'a self,
        id: &'a str,
        to: ResetTo,
    ) -> BoxFuture<'a, Result<(), NovaCallError>> {
        log(&self.calls, format!("reset_state {id} {to:?}"));
        if let Some(s) = self.state.lock().expect("nova").servers.get_mut(id) {
            s.server.task_state = None;
            s.server.status = if to == ResetTo::Error {
                ServerStatus::Error
            } else {
                ServerStatus::Active
            };
        }
        ok(Ok(()))
    }

    fn host_aggregates<'a>(
        &'a self,
        host: &'a str,
    ) -> BoxFuture<'a, Result<Vec<Aggregate>, NovaCallError>> {
        ok(Ok(self
            .state
            .lock()
            .expect("nova")
            .aggregates
            .iter()
            .filter(|a| a.hosts.iter().any(|h| h == host))
            .cloned()
            .collect()))
    }

    fn add_host_to_aggregate<'a>(
        &'a self,
        aggregate: &'a Aggregate,
        host: &'a str,
    ) -> BoxFuture<'a, Result<(), NovaCallError>> {
        log(
            &self.calls,
            format!("aggregate_add {} {host}", aggregate.name),
        );
        if let Some(a) = self
            .state
            .lock()
            .expect("nova")
            .aggregates
            .iter_mut()
            .find(|a| a.id == aggregate.id)
        {
            if !a.hosts.iter().any(|h| h == host) {
                a.hosts.push(host.to_string());
            }
        }
        ok(Ok(()))
    }
}

/// How a fake BMC behaves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bmc {
    /// Powers off and says so.
    Works,
    /// Does not answer power-off.
    Refuses,
    /// Accepts power-off, but the node stays on.
    StaysOn,
    /// Never answers at all.
    Hangs,
    /// A storage fence script that reports the blocklist in place.
    StorageFence,
}

pub struct FakeFencer {
    pub name: String,
    pub bmc: Bmc,
    pub power: Mutex<PowerState>,
    pub off_calls: AtomicU32,
    calls: CallLog,
}

impl FakeFencer {
    pub fn new(name: &str, bmc: Bmc, calls: CallLog) -> Arc<Self> {
        Arc::new(FakeFencer {
            name: name.into(),
            bmc,
            power: Mutex::new(PowerState::On),
            off_calls: AtomicU32::new(0),
            calls,
        })
    }
    pub fn offs(&self) -> u32 {
        self.off_calls.load(Ordering::SeqCst)
    }
}

impl Fencer for FakeFencer {
    fn describe(&self) -> String {
        format!("fake {}", self.name)
    }
    fn power_off(&self) -> BoxFuture<'_, Result<FenceAck, FenceError>> {
        if self.bmc == Bmc::Hangs {
            return Box::pin(futures::future::pending());
        }
        self.off_calls.fetch_add(1, Ordering::SeqCst);
        log(&self.calls, format!("power_off {}", self.name));
        let r = match self.bmc {
            Bmc::Refuses => Err(FenceError::Refused {
                fencer: self.describe(),
                action: "off".into(),
                detail: "HTTP 500".into(),
            }),
            Bmc::StorageFence => Ok(FenceAck {
                power: None,
                storage_fenced: true,
                message: "blocklisted".into(),
            }),
            Bmc::StaysOn => Ok(FenceAck::default()),
            _ => {
                *self.power.lock().expect("power") = PowerState::Off;
                Ok(FenceAck::default())
            }
        };
        Box::pin(futures::future::ready(r))
    }
    fn power_status(&self) -> BoxFuture<'_, Result<PowerState, FenceError>> {
        match self.bmc {
            Bmc::Hangs => Box::pin(futures::future::pending()),
            Bmc::Refuses => Box::pin(futures::future::ready(Err(FenceError::Refused {
                fencer: self.describe(),
                action: "status".into(),
                detail: "HTTP 500".into(),
            }))),
            Bmc::StorageFence => Box::pin(futures::future::ready(Ok(PowerState::Unknown))),
            _ => Box::pin(futures::future::ready(Ok(*self
                .power
                .lock()
                .expect("power")))),
        }
    }
}

/// Records messages; fails the first `fail` sends (u32::MAX: always).
pub struct FakeNotifier {
    pub sent: Mutex<Vec<Message>>,
    pub fail: AtomicU32,
}

impl FakeNotifier {
    pub fn new(fail: u32) -> Arc<Self> {
        Arc::new(FakeNotifier {
            sent: Mutex::new(Vec::new()),
            fail: AtomicU32::new(fail),
        })
    }
    pub fn kinds(&self) -> Vec<&'static str> {
        self.sent
            .lock()
            .expect("sent")
            .iter()
            .map(Message::kind)
            .collect()
    }
}

impl Notifier for FakeNotifier {
    fn name(&self) -> String {
        "fake".into()
    }
    fn send<'a>(&'a self, message: &'a Message) -> BoxFuture<'a, Result<(), NotifyError>> {
        let left = self.fail.load(Ordering::SeqCst);
        if left > 0 {
            if left != u32::MAX {
                self.fail.store(left - 1, Ordering::SeqCst);
            }
            return Box::pin(futures::future::ready(Err(NotifyError::Refused {
                notifier: "fake".into(),
                detail: "HTTP 503".into(),
            })));
        }
        self.sent.lock().expect("sent").push(message.clone());
        Box::pin(futures::future::ready(Ok(())))
    }
}

pub struct FakeSelfCheck(pub Result<(), String>);

impl SelfCheck for FakeSelfCheck {
    fn check(&self) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(futures::future::ready(self.0.clone()))
    }
}

/// A journal that "crashes" the decider after `budget` writes: that write
/// and every later one fail, as if the process died right after write
/// number `budget` reached the disk. Reads keep working.
pub struct CrashingJournal {
    pub inner: Arc<dyn Journal>,
    pub budget: AtomicI64,
}

impl CrashingJournal {
    fn spend(&self) -> Result<(), JournalError> {
        if self.budget.fetch_sub(1, Ordering::SeqCst) <= 0 {
            return Err(JournalError::Store {
                what: "simulated crash".into(),
                source: "decider killed".into(),
            });
        }
        Ok(())
    }
}

macro_rules! write_through {
    ($self:ident, $call:expr) => {{
        match $self.spend() {
            Err(e) => Box::pin(futures::future::ready(Err(e))),
            Ok(()) => $call,
        }
    }};
}

impl Journal for CrashingJournal {
    fn open_incident(&self, new: NewIncident) -> BoxFuture<'_, Result<IncidentId, JournalError>> {
        write_through!(self, self.inner.open_incident(new))
    }
    fn begin_step<'a>(
        &'a self,
        incident: &'a IncidentId,
        step: StepBegin,
    ) -> BoxFuture<'a, Result<StepId, JournalError>> {
        write_through!(self, self.inner.begin_step(incident, step))
    }
    fn end_step(
        &self,
        step: StepId,
        at: Timestamp,
        outcome: StepOutcome,
        result: Value,
    ) -> BoxFuture<'_, Result<(), JournalError>> {
        write_through!(self, self.inner.end_step(step, at, outcome, result))
    }
    fn record_event<'a>(
        &'a self,
        incident: &'a IncidentId,
        event: Event,
    ) -> BoxFuture<'a, Result<(), JournalError>> {
        write_through!(self, self.inner.record_event(incident, event))
    }
    fn put_instance<'a>(
        &'a self,
        incident: &'a IncidentId,
        instance: InstanceRecord,
    ) -> BoxFuture<'a, Result<(), JournalError>> {
        write_through!(self, self.inner.put_instance(incident, instance))
    }
    fn set_phase<'a>(
        &'a self,
        incident: &'a IncidentId,
        phase: Phase,
    ) -> BoxFuture<'a, Result<(), JournalError>> {
        write_through!(self, self.inner.set_phase(incident, phase))
    }
    fn set_status<'a>(
        &'a self,
        incident: &'a IncidentId,
        status: IncidentStatus,
        reason: Option<String>,
        at: Timestamp,
    ) -> BoxFuture<'a, Result<(), JournalError>> {
        write_through!(self, self.inner.set_status(incident, status, reason, at))
    }
    fn mark_recovered<'a>(
        &'a self,
        incident: &'a IncidentId,
        boot_id: String,
        at: Timestamp,
    ) -> BoxFuture<'a, Result<(), JournalError>> {
        write_through!(self, self.inner.mark_recovered(incident, boot_id, at))
    }
    fn open_incidents(&self) -> BoxFuture<'_, Result<Vec<IncidentSummary>, JournalError>> {
        self.inner.open_incidents()
    }
    fn list(&self, limit: usize) -> BoxFuture<'_, Result<Vec<IncidentSummary>, JournalError>> {
        self.inner.list(limit)
    }
    fn latest_for_node<'a>(
        &'a self,
        node: &'a str,
    ) -> BoxFuture<'a, Result<Option<IncidentSummary>, JournalError>> {
        self.inner.latest_for_node(node)
    }
    fn get<'a>(
        &'a self,
        incident: &'a IncidentId,
    ) -> BoxFuture<'a, Result<IncidentDetail, JournalError>> {
        self.inner.get(incident)
    }
}

fn healthy_hosts(services: &BTreeMap<String, ComputeService>) -> Vec<String> {
    services
        .values()
        .filter(|s| s.enabled && s.up && !s.forced_down)
        .map(|s| s.host.clone())
        .collect()
}

/// Nova's evacuate, as the lab measured it (see the module doc).
fn apply_evacuate(
    fs: &mut FakeServer,
    id: &str,
    request: &EvacuateRequest,
    now: Timestamp,
    services: &BTreeMap<String, ComputeService>,
    healthy: &[String],
) -> Result<(), NovaCallError> {
    let source = fs.server.host.clone().unwrap_or_default();
    // Nova: the source must be down (forced_down makes it so at once).
    if services.get(&source).is_some_and(|s| !s.forced_down) {
        return Err(NovaCallError::Rejected {
            what: format!("evacuate {id}"),
            status: 400,
            message: format!("Compute service of {source} is still in use."),
        });
    }
    if fs.server.task_state.is_some() {
        return Err(NovaCallError::Rejected {
            what: format!("evacuate {id}"),
            status: 409,
            message: "task_state is not None".into(),
        });
    }
    fs.actions.push(now);
    let mid = format!("mig-{id}-{}", fs.migrations.len());
    if fs.fail_next > 0 {
        fs.fail_next -= 1;
        let status = if fs.fail_keeps_status {
            fs.server.fault = Some("Insufficient compute resources (fake)".into());
            fs.server.updated = Some(format!("rolled-back-{}", fs.actions.len()));
            fs.late_revert = 3;
            "failed"
        } else {
            fs.server.status = ServerStatus::Error;
            fs.server.fault = Some("No valid host was found (fake)".into());
            "error"
        };
        fs.migrations.push(Migration {
            id: mid,
            status: status.into(),
            source_compute: Some(source),
            dest_compute: None,
            created_at: Some(now),
        });
        return Ok(());
    }
    let dest = request
        .host
        .clone()
        .or_else(|| healthy.iter().find(|h| **h != source).cloned())
        .unwrap_or_default();
    // As Nova: from 2.95 the target state is `stopped`, but it is not
    // applied to a server in ERROR (it comes back running).
    let lands_as = if (request.microversion >= Microversion::STOPPED_EVACUATE
        && fs.server.status != ServerStatus::Error)
        || fs.server.status == ServerStatus::Shutoff
    {
        ServerStatus::Shutoff
    } else {
        ServerStatus::Active
    };
    fs.server.task_state = Some("rebuilding".into());
    fs.server.fault = None;
    fs.migrations.push(Migration {
        id: mid,
        status: "pre-migrating".into(),
        source_compute: Some(source),
        dest_compute: Some(dest.clone()),
        created_at: Some(now),
    });
    fs.pending = Some(Pending {
        dest,
        lands_as,
        polls_left: 1,
    });
    Ok(())
}

impl FakeNova {
    fn server_now(&self, id: &str) -> Result<Server, NovaCallError> {
        let mut st = self.state.lock().expect("nova");
        if st.flaky_reads > 0 {
            st.flaky_reads -= 1;
            return Err(other("GET server"));
        }
        let Some(fs) = st.servers.get_mut(id) else {
            return Err(NovaCallError::NotFound {
                what: format!("server {id}"),
            });
        };
        if let Some((req, left)) = fs.queued.take() {
            if left > 0 {
                fs.queued = Some((req, left - 1));
                return Err(other("GET server (nova-api stalled)"));
            }
            let now = self.clock.now();
            let services = st.services.clone();
            let healthy = healthy_hosts(&services);
            if let Some(fs) = st.servers.get_mut(id) {
                let _ = apply_evacuate(fs, id, &req, now, &services, &healthy);
            }
            return Err(other("GET server (nova-api waking up)"));
        }
        if fs.late_revert > 0 {
            fs.late_revert -= 1;
            if fs.late_revert == 0 {
                fs.server.updated = Some(format!("reverted-{}", fs.actions.len()));
                if fs.pending.take().is_some() {
                    // The newer evacuation expected `rebuilding`: it fails.
                    fs.server.task_state = None;
                    fs.server.status = ServerStatus::Error;
                    fs.server.fault = Some("UnexpectedTaskStateError (fake)".into());
                    if let Some(m) = fs.migrations.last_mut() {
                        m.status = "failed".into();
                    }
                }
            }
        }
        if let Some(p) = &mut fs.pending {
            if p.polls_left == 0 && !fs.never_lands {
                fs.server.host = Some(p.dest.clone());
                fs.server.status = p.lands_as.clone();
                fs.server.task_state = None;
                if let Some(m) = fs.migrations.last_mut() {
                    m.status = "done".into();
                }
                fs.pending = None;
            } else {
                p.polls_left = p.polls_left.saturating_sub(1);
            }
        }
        Ok(fs.server.clone())
    }
}

/// A crash kernel's fence_kdump_send as the engine hears it: one message
/// every `every` from `first` until `stop` (never, while `None`), heard only
/// from `listening_since` on (a restarted engine heard nothing before).
pub struct FakeKdump {
    clock: Arc<FakeClock>,
    pub first: Timestamp,
    pub every: Duration,
    pub stop: Option<Timestamp>,
    pub listening_since: Timestamp,
}

impl FakeKdump {
    pub fn new(clock: Arc<FakeClock>, first: Timestamp, stop: Option<Timestamp>) -> Arc<Self> {
        Arc::new(FakeKdump {
            clock,
            first,
            every: Duration::from_secs(10),
            stop,
            listening_since: first,
        })
    }

    /// The same sender, heard by an engine that started at `at`.
    pub fn restarted(&self, at: Timestamp) -> Arc<Self> {
        Arc::new(FakeKdump {
            clock: self.clock.clone(),
            first: self.first,
            every: self.every,
            stop: self.stop,
            listening_since: at,
        })
    }
}

impl super::kdump::KdumpSource for FakeKdump {
    fn last_heard_ago(&self, _node: &str) -> Option<Duration> {
        let now = self.clock.now();
        let end = self.stop.map_or(now, |s| s.min(now));
        let every = i64::try_from(self.every.as_millis()).ok()?.max(1);
        let sent = end.0.checked_sub(self.first.0)?;
        let last = Timestamp(self.first.0 + sent / every * every);
        (last >= self.listening_since).then(|| now.since(last))
    }
}
