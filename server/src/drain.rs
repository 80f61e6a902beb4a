//! Draining: how a node stops without dropping what it acknowledged.
//!
//! [`Drain`] is the node's one switch from serving to draining. Anything
//! may pull it: the shutdown future given to [`crate::serve`] (Ctrl-C or
//! SIGTERM in the binary), or the admin API through `Shared::drain`. What
//! follows is run by `serve` (see `drain_node` in lib.rs), in order:
//!
//! 1. `/readyz` answers 503 and `roomcast_draining` is 1, so load balancers
//!    stop sending viewers here; new QUIC connections are refused at once
//!    (CONNECTION_REFUSED), so an SDK tries its next address rather than
//!    waiting for a timeout.
//! 2. Settle, up to `drain.settle_ms`: rooms flush their batching windows,
//!    sessions write the answers still pending and clients acknowledge what
//!    was written. It ends early once every connection has gone.
//! 3. Every connection left is closed with `SERVER_DRAINING` and the reason
//!    `retry_after_ms=N` ([`close_reason`]): the SDK reconnects to another
//!    address at once and to this one no sooner than N ms.
//! 4. The node waits for the closes to go out, and `serve` returns, all
//!    within `drain.timeout_secs` of the start.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

/// Where a node is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DrainState {
    /// Accepting connections; `/readyz` is 200.
    Serving,
    /// Refusing new connections and closing the open ones.
    Draining,
    /// Every connection is closed; `serve` is returning.
    Drained,
}

/// A handle on the node's drain. Cheap to clone; every clone is the same
/// switch. Starting a drain is idempotent and cannot be undone: a drained
/// node is restarted, not resumed.
#[derive(Debug, Clone)]
pub struct Drain {
    state: Arc<watch::Sender<DrainState>>,
}

impl Default for Drain {
    fn default() -> Self {
        Self::new()
    }
}

impl Drain {
    /// A switch in the `Serving` position.
    pub fn new() -> Self {
        Self { state: Arc::new(watch::Sender::new(DrainState::Serving)) }
    }

    /// Starts draining and returns at once; the node drains in the
    /// background. True if this call started it, false if the node was
    /// already draining or drained.
    pub fn start(&self) -> bool {
        self.state.send_if_modified(|s| {
            let serving = *s == DrainState::Serving;
            if serving {
                *s = DrainState::Draining;
            }
            serving
        })
    }

    pub fn state(&self) -> DrainState {
        *self.state.borrow()
    }

    /// True from the moment a drain starts.
    pub fn is_draining(&self) -> bool {
        self.state() != DrainState::Serving
    }

    /// A receiver of the node's state, for a task that waits on it every
    /// turn of its loop (`wait_for` on it, rather than [`Drain::started`],
    /// which subscribes anew each call).
    pub fn watch(&self) -> tokio::sync::watch::Receiver<DrainState> {
        self.state.subscribe()
    }

    /// Resolves once a drain has started (at once if it has).
    pub async fn started(&self) {
        let _ = self.state.subscribe().wait_for(|s| *s != DrainState::Serving).await;
    }

    /// Resolves once the node has closed every connection.
    pub async fn finished(&self) {
        let _ = self.state.subscribe().wait_for(|s| *s == DrainState::Drained).await;
    }

    pub(crate) fn set_drained(&self) {
        self.state.send_replace(DrainState::Drained);
    }
}

/// The QUIC close reason of a draining node: `retry_after_ms=N` tells the
/// client not to reconnect to this node sooner than N ms (the wire contract,
/// "Close codes", describes it).
pub fn close_reason(retry_after: Duration) -> String {
    format!("server draining; retry_after_ms={}", retry_after.as_millis())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn start_is_idempotent_and_wakes_waiters() {
        let drain = Drain::new();
        assert!(!drain.is_draining());
        let waiter = {
            let d = drain.clone();
            tokio::spawn(async move { d.started().await })
        };
        assert!(drain.clone().start());
        assert!(!drain.start(), "a second start changes nothing");
        assert_eq!(drain.state(), DrainState::Draining);
        tokio::time::timeout(Duration::from_secs(1), waiter).await.unwrap().unwrap();
        drain.set_drained();
        assert!(!drain.start(), "a drained node does not drain again");
        tokio::time::timeout(Duration::from_secs(1), drain.finished()).await.unwrap();
    }

    #[test]
    fn close_reason_carries_the_hint() {
        assert_eq!(close_reason(Duration::from_millis(5000)), "server draining; retry_after_ms=5000");
    }
}
