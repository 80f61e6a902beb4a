//! The connections of one driver: their slots, the endpoint that routes
//! datagrams to them, and their wakers, whose wake is a mark in the
//! driver's ready queue.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Wake, Waker};
use std::time::Instant;

use super::timers::Timers;
use super::{ConnId, Link, VarInt, proto};

pub(super) struct Slot<S> {
    pub(super) quic: proto::Connection,
    pub(super) state: S,
    /// The handler's wake-up.
    pub(super) wake: Option<Instant>,
    /// The deadline last put in the heap: the earlier of quinn-proto's and the handler's.
    pub(super) deadline: Option<Instant>,
    /// Queued in `Core::dirty`.
    pub(super) dirty: bool,
    /// Queued in `Io::backlog`.
    pub(super) backlogged: bool,
    /// Tells stale ready marks (of a connection whose handle was reused) apart.
    pub(super) generation: u64,
    pub(super) waker: Waker,
}

impl<S> Slot<S> {
    /// This connection as its handler sees it, at `now`.
    pub(super) fn link(&mut self, index: usize, now: Instant) -> Link<'_, S> {
        Link {
            id: ConnId(index),
            quic: &mut self.quic,
            state: &mut self.state,
            now,
            wake: &mut self.wake,
            waker: &self.waker,
        }
    }
}

/// Connections marked ready from other tasks (a room queued events for
/// one, a reply it waits for came): a queue push, and one wake-up of the
/// driver if it was idle.
#[derive(Default)]
pub(super) struct Ready {
    pub(super) marks: Mutex<Vec<(usize, u64)>>,
    pub(super) notify: tokio::sync::Notify,
}

/// The waker of one connection.
struct ConnWaker {
    pub(super) ready: Arc<Ready>,
    index: usize,
    pub(super) generation: u64,
}

impl Wake for ConnWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        let mut marks = self.ready.marks.lock().unwrap_or_else(PoisonError::into_inner);
        let first = marks.is_empty();
        marks.push((self.index, self.generation));
        drop(marks);
        if first {
            self.ready.notify.notify_one();
        }
    }
}

/// The connections of one driver, and quinn-proto's endpoint that routes
/// datagrams to them.
pub struct Core<S> {
    pub(super) endpoint: proto::Endpoint,
    pub(super) server_config: Option<Arc<proto::ServerConfig>>,
    pub(super) conns: Vec<Option<Slot<S>>>,
    pub(super) live: usize,
    pub(super) timers: Timers,
    /// Connections something happened to since they were last driven.
    pub(super) dirty: Vec<ConnId>,
    pub(super) ready: Arc<Ready>,
    pub(super) generations: u64,
}

impl<S> Core<S> {
    /// Opens a connection to `server`; the handler hears of it from its
    /// first event (`Connected`, or `ConnectionLost`).
    pub fn connect(
        &mut self,
        now: Instant,
        config: proto::ClientConfig,
        server: SocketAddr,
        server_name: &str,
        state: S,
    ) -> Result<ConnId, proto::ConnectError> {
        let (id, quic) = self.endpoint.connect(now, config, server, server_name)?;
        self.insert(id, quic, state);
        Ok(id)
    }

    /// Live connections.
    pub fn len(&self) -> usize {
        self.live
    }

    pub fn is_empty(&self) -> bool {
        self.live == 0
    }

    /// Every live connection and its state.
    pub fn iter_mut(&mut self) -> impl Iterator<Item = (ConnId, &mut proto::Connection, &mut S)> {
        self.conns
            .iter_mut()
            .enumerate()
            .filter_map(|(i, slot)| slot.as_mut().map(|s| (ConnId(i), &mut s.quic, &mut s.state)))
    }

    /// Closes every connection with `code` and `reason`.
    pub fn close_all(&mut self, now: Instant, code: VarInt, reason: &[u8]) {
        let reason = bytes::Bytes::copy_from_slice(reason);
        for i in 0..self.conns.len() {
            if let Some(slot) = &mut self.conns[i] {
                slot.quic.close(now, code, reason.clone());
                self.mark(ConnId(i));
            }
        }
    }

    pub(super) fn insert(&mut self, id: ConnId, quic: proto::Connection, state: S) {
        if self.conns.len() <= id.0 {
            self.conns.resize_with(id.0 + 1, || None);
        }
        self.generations += 1;
        let generation = self.generations;
        let waker = Waker::from(Arc::new(ConnWaker { ready: self.ready.clone(), index: id.0, generation }));
        self.conns[id.0] = Some(Slot {
            quic,
            state,
            wake: None,
            deadline: None,
            dirty: false,
            backlogged: false,
            generation,
            waker,
        });
        self.live += 1;
        self.mark(id);
    }

    /// Drives connection `id` at the end of this turn: for a handler that
    /// wrote to it from outside its events (a command, say). The handler
    /// itself is not called; see [`Core::wake`].
    pub fn touch(&mut self, id: ConnId) {
        self.mark(id);
    }

    /// Wakes connection `id` as its waker would: [`super::Handler::ready`]
    /// is called for it on the driver's next turn. For a command that
    /// changed what a connection has to do, so that an idle connection acts
    /// on it now rather than at its next packet or wake-up.
    pub fn wake(&mut self, id: ConnId) {
        if let Some(Some(slot)) = self.conns.get(id.0) {
            slot.waker.wake_by_ref();
        }
    }

    pub(super) fn mark(&mut self, id: ConnId) {
        if let Some(Some(slot)) = self.conns.get_mut(id.0)
            && !slot.dirty
        {
            slot.dirty = true;
            self.dirty.push(id);
        }
    }
}
