//! A connection's typed way into a room. The commands, their reply channels
//! and the room's queue stay private to this module and the room task.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use roomcast_protocol::{ErrorCode, v1};
use tokio::sync::{mpsc, oneshot};

use super::feed::Feed;
use super::likes::LikeCounter;
use super::state::{
    AdminMessage, ChatRequest, ConnId, Filter, GiftRequest, GiftSequenced, QuizEvent, Resume, RoomInfo,
};
use crate::auth::Identity;
use crate::webhooks::LeaveReason;

/// Everything that can change a room. The room task handles them in arrival
/// order, one at a time.
#[derive(Debug)]
pub(super) enum Command {
    Join {
        request: JoinRequest,
        outbox: Arc<super::fanout::Outbox>,
        reply: oneshot::Sender<Result<v1::Joined, ErrorCode>>,
    },
    Leave {
        conn: ConnId,
        reason: LeaveReason,
    },
    Presence {
        conn: ConnId,
        present: bool,
    },
    Publish {
        conn: ConnId,
        chat: ChatRequest,
        reply: oneshot::Sender<Result<v1::ChatAck, ErrorCode>>,
    },
    Recall {
        conn: ConnId,
        message_id: String,
        reply: oneshot::Sender<Result<v1::Recalled, ErrorCode>>,
    },
    /// A gift already charged: the room only sequences it.
    Gift {
        conn: ConnId,
        gift: GiftRequest,
        reply: oneshot::Sender<Result<GiftSequenced, ErrorCode>>,
    },
    // From the platform.
    AdminPublish {
        msg: AdminMessage,
        reply: oneshot::Sender<Result<v1::ChatAck, ErrorCode>>,
    },
    AdminRecall {
        message_id: String,
        reply: oneshot::Sender<Result<v1::Recalled, ErrorCode>>,
    },
    Quiz {
        event: QuizEvent,
        reply: oneshot::Sender<Result<u64, ErrorCode>>,
    },
    /// Events the fleet numbered, from the room's channel.
    /// Read what the fleet's stream holds beyond what the room has taken
    /// (its Redis answers again after the connection dropped).
    CatchUp,
    Ingest {
        events: Vec<v1::RoomEvent>,
    },
    RemoveUser {
        user: String,
        code: ErrorCode,
        reason: String,
        leave: LeaveReason,
        reply: oneshot::Sender<usize>,
    },
    Close {
        reason: String,
        reply: oneshot::Sender<u64>,
    },
    Ranking {
        reply: oneshot::Sender<Vec<v1::RankEntry>>,
    },
    Info {
        offset: usize,
        limit: usize,
        reply: oneshot::Sender<RoomInfo>,
    },
}

/// Who joins, from where, and what they want to see.
#[derive(Debug, Clone)]
pub struct JoinRequest {
    pub conn: ConnId,
    pub identity: Identity,
    /// Where a rejoining client left off; `None` for a fresh join.
    pub resume: Option<Resume>,
    pub filter: Filter,
}

/// A join's result: the room's answer for the client, the handle for later
/// requests, and the member's feed for its room stream.
#[derive(Debug)]
pub struct Joined {
    pub answer: v1::Joined,
    pub handle: RoomHandle,
    pub feed: Feed,
}

/// A live room, from a member connection's side. Cheap to clone.
#[derive(Debug, Clone)]
pub struct RoomHandle {
    pub(super) tx: mpsc::Sender<Command>,
    pub(super) likes: Arc<LikeCounter>,
}

/// The room's answer to a request, still to come. A room that went away
/// before answering answers `INTERNAL`.
#[derive(Debug)]
pub struct Reply<T>(oneshot::Receiver<Result<T, ErrorCode>>);

impl<T> Future for Reply<T> {
    type Output = Result<T, ErrorCode>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.0).poll(cx).map(|r| r.unwrap_or(Err(ErrorCode::Internal)))
    }
}

impl RoomHandle {
    /// Leaves the room for `reason`; the member's feed ends after what was
    /// queued.
    pub async fn leave(&self, conn: ConnId, reason: LeaveReason) {
        // A room that is gone has no member to remove.
        let _ = self.tx.send(Command::Leave { conn, reason }).await;
    }

    /// Marks the member present or absent (missed heartbeats).
    pub async fn set_present(&self, conn: ConnId, present: bool) {
        let _ = self.tx.send(Command::Presence { conn, present }).await;
    }

    /// Adds a member's counted likes to the room's total. Never waits: the
    /// room pushes the new total to members within its pacing interval.
    pub fn like(&self, taps: u64) {
        self.likes.add(taps);
    }

    /// Hands a chat message to the room, and returns its answer to come.
    pub async fn publish(&self, conn: ConnId, chat: ChatRequest) -> Result<Reply<v1::ChatAck>, ErrorCode> {
        self.ask(|reply| Command::Publish { conn, chat, reply }).await
    }

    /// Asks the room to recall a message, and returns its answer to come.
    pub async fn recall(&self, conn: ConnId, message_id: String) -> Result<Reply<v1::Recalled>, ErrorCode> {
        self.ask(|reply| Command::Recall { conn, message_id, reply }).await
    }

    /// Hands a charged gift to the room to sequence, and returns its answer
    /// to come.
    pub async fn gift(&self, conn: ConnId, gift: GiftRequest) -> Result<Reply<GiftSequenced>, ErrorCode> {
        self.ask(|reply| Command::Gift { conn, gift, reply }).await
    }

    /// Sends the command `make` builds around a reply channel and waits for
    /// the answer; `None` when the room went away first.
    pub(super) async fn call<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Command) -> Option<T> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(make(reply)).await.ok()?;
        rx.await.ok()
    }

    async fn ask<T>(
        &self,
        command: impl FnOnce(oneshot::Sender<Result<T, ErrorCode>>) -> Command,
    ) -> Result<Reply<T>, ErrorCode> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(command(reply)).await.map_err(|_| ErrorCode::Internal)?;
        Ok(Reply(rx))
    }
}
