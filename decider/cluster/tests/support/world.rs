//! One dead node (c1) with servers, a working fake BMC and a fake Nova, for
//! running the real recovery workflow on a journal under test.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use vigil_recovery::config::RecoveryConfig;
use vigil_recovery::fence::FenceLevel;
use vigil_recovery::journal::Journal;
use vigil_recovery::notify::{Dispatcher, RetryPolicy};
use vigil_recovery::workflow::fakes::*;
use vigil_recovery::workflow::{Edges, Recovery, ServerStatus, Settings};

pub struct World {
    pub clock: Arc<FakeClock>,
    pub nova: Arc<FakeNova>,
    pub fencer: Arc<FakeFencer>,
}

impl World {
    /// c1 (dies) with `servers` ACTIVE servers s0, s1, …; c2 and c3 healthy.
    pub fn new(servers: usize) -> World {
        let clock = FakeClock::new();
        let calls: CallLog = Arc::new(Mutex::new(Vec::new()));
        let nova = FakeNova::new(&["c1", "c2", "c3"], clock.clone(), calls.clone());
        for i in 0..servers {
            nova.add_server(server(&format!("s{i}"), "c1", ServerStatus::Active));
        }
        let fencer = FakeFencer::new("bmc", Bmc::Works, calls);
        World {
            clock,
            nova,
            fencer,
        }
    }

    pub fn levels(&self) -> Vec<FenceLevel> {
        vec![FenceLevel {
            fencer: self.fencer.clone(),
            deadline: Duration::from_secs(30),
            storage_fence: false,
        }]
    }

    /// The workflow over `journal`, every other edge a fake.
    pub fn recovery(&self, journal: Arc<dyn Journal>) -> Recovery {
        let notify = Dispatcher::new(
            vec![FakeNotifier::new(0)],
            RetryPolicy {
                attempts: 1,
                initial_backoff: Duration::from_secs(1),
                max_backoff: Duration::from_secs(1),
            },
            self.clock.clone(),
            None,
        );
        Recovery::new(
            Edges {
                nova: self.nova.clone(),
                journal,
                notify,
                clock: self.clock.clone(),
                self_check: Arc::new(FakeSelfCheck(Ok(()))),
            },
            Settings::from(&RecoveryConfig::default()),
        )
    }
}
