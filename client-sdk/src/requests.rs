//! Request bookkeeping: the commands [`crate::Client`] handles send to the
//! driver, the request ids of a connection and the requests waiting for their
//! answer. How long a caller waits is its own affair
//! ([`crate::ClientConfig::request_timeout`] in `Client::request`): a request
//! that times out stays here until its answer or the connection's end.

use std::collections::HashMap;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

use roomcast_protocol::{ErrorCode, v1};
use tokio::sync::oneshot;

use crate::Error;
use v1::client_frame::Body as Req;
use v1::server_frame::Body as Resp;

pub(crate) type Reply = oneshot::Sender<Result<Resp, Error>>;

/// A request from a [`crate::Client`] handle.
pub(crate) struct Command {
    pub(crate) body: Req,
    pub(crate) reply: Reply,
}

/// A request sent on the current connection, waiting for its answer.
pub(crate) enum Pending {
    /// A join the app asked for.
    Join(String, Reply),
    /// A rejoin the driver sent itself, after a lag or a reconnection.
    Resume(String),
    Leave(String, Reply),
    Other(Reply),
}

/// The requests of the current connection.
pub(crate) struct Requests {
    next_id: u32,
    pending: HashMap<u32, Pending>,
}

impl Requests {
    /// Request id 1 is the connection's `Hello`.
    const FIRST_ID: u32 = 2;

    pub(crate) fn new() -> Self {
        Self { next_id: Self::FIRST_ID, pending: HashMap::new() }
    }

    /// A request id for the next request; never 0 (unsolicited answers) or
    /// the hello's.
    pub(crate) fn take_id(&mut self) -> u32 {
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1).max(Self::FIRST_ID);
        id
    }

    /// Remembers a request sent as `id`.
    pub(crate) fn sent(&mut self, id: u32, pending: Pending) {
        self.pending.insert(id, pending);
    }

    /// The request an answer with this id belongs to.
    pub(crate) fn answered(&mut self, id: u32) -> Option<Pending> {
        self.pending.remove(&id)
    }

    /// The connection ended: every request the app waits for fails with
    /// `Closed`; the driver's own rejoins are sent again after reconnecting.
    pub(crate) fn fail_all(&mut self, code: Option<ErrorCode>, reason: &str) {
        for (_, p) in self.pending.drain() {
            if let Pending::Join(_, reply) | Pending::Leave(_, reply) | Pending::Other(reply) = p {
                let _ = reply.send(Err(Error::Closed { code, reason: reason.to_string() }));
            }
        }
    }
}

/// A client message id unique to this process: a random prefix and a counter.
pub(crate) fn fresh_id() -> String {
    static PREFIX: OnceLock<u64> = OnceLock::new();
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let prefix = *PREFIX.get_or_init(crate::reconnect::random_u64);
    format!("{prefix:016x}-{}", COUNTER.fetch_add(1, Ordering::Relaxed))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fresh_ids_are_unique() {
        let a = fresh_id();
        let b = fresh_id();
        assert_ne!(a, b);
        assert!(a.len() <= 64, "fits the server's client_msg_id limit");
    }

    #[test]
    fn request_ids_start_after_the_hello_and_skip_it_and_zero_when_they_wrap() {
        let mut r = Requests::new();
        assert_eq!((r.take_id(), r.take_id()), (2, 3));
        r.next_id = u32::MAX;
        assert_eq!((r.take_id(), r.take_id()), (u32::MAX, 2));
    }

    #[test]
    fn a_lost_connection_fails_the_apps_requests_and_drops_the_drivers_rejoins() {
        let mut r = Requests::new();
        let (join, mut join_rx) = oneshot::channel();
        let (other, mut other_rx) = oneshot::channel();
        r.sent(2, Pending::Join("a".into(), join));
        r.sent(3, Pending::Resume("b".into()));
        r.sent(4, Pending::Other(other));
        r.fail_all(Some(ErrorCode::ServerDraining), "draining");
        let closed = Err(Error::Closed { code: Some(ErrorCode::ServerDraining), reason: "draining".into() });
        assert_eq!(join_rx.try_recv().unwrap(), closed);
        assert_eq!(other_rx.try_recv().unwrap(), closed);
        assert!(r.answered(3).is_none(), "nothing waits for a rejoin of the old connection");
    }
}
