//! One shutdown signal (SIGINT or SIGTERM) fanned out to every task.

use tokio::sync::watch;

/// A cloneable shutdown notice: `wait()` resolves once shutdown began.
#[derive(Clone)]
pub struct Shutdown {
    rx: watch::Receiver<bool>,
}

/// The sending half; `trigger` starts the shutdown.
pub struct ShutdownTrigger {
    tx: watch::Sender<bool>,
}

pub fn channel() -> (ShutdownTrigger, Shutdown) {
    let (tx, rx) = watch::channel(false);
    (ShutdownTrigger { tx }, Shutdown { rx })
}

impl ShutdownTrigger {
    pub fn trigger(&self) {
        let _ = self.tx.send(true);
    }
}

impl Shutdown {
    pub async fn wait(mut self) {
        // An Err means the trigger is gone: nobody can shut us down any more
        // except by exiting, so treat it as shutdown too.
        let _ = self.rx.wait_for(|v| *v).await;
    }
}

/// Resolves on SIGINT or SIGTERM.
pub async fn signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {},
                _ = term.recv() => {},
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch SIGTERM; only SIGINT stops the decider");
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
