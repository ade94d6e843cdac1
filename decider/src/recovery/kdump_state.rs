//! What recovery's kdump path asks the engine: when a node's crash kernel
//! was last heard. Read from the node's evidence (`Evidence.kdump`, which
//! the engine fills from the kdump listener), so recovery and the verdict
//! read the same messages.

use crate::engine::Clock;
use crate::node_state::Nodes;
use std::sync::PoisonError;
use std::time::Duration;
use vigil_recovery::workflow::KdumpSource;

/// The engine's nodes, read-only.
pub struct EngineKdump {
    pub nodes: Nodes,
    pub clock: Clock,
}

impl KdumpSource for EngineKdump {
    fn last_heard_ago(&self, node: &str) -> Option<Duration> {
        let n = crate::node_state::lookup(&self.nodes, node)?;
        let last = n
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .evidence
            .kdump
            .last_at?;
        Some(self.clock.now().since(last))
    }
}
