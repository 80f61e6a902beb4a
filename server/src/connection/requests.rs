//! The session's request handlers: joins and leaves, chat, recalls,
//! gifts and history reads. Each checks what it can at once and returns
//! what is still to come as a step the connection polls.

use super::*;

/// How a request is answered: at once, or when what it waits for is done.
enum Outcome {
    /// Boxed: an answer's body is large, a pending one small.
    Now(Box<Answered>),
    /// A step, and whether it is a barrier.
    Later(Step, bool),
}

/// What a request handler works with: the node, the connection, its session.
pub(super) struct Ctx<'a> {
    pub(super) shared: &'a Arc<Shared>,
    pub(super) id: ConnId,
    pub(super) s: &'a mut Session,
    pub(super) now: Instant,
}

impl Node {
    /// Handles one request. `Err` closes the connection.
    pub(super) fn handle(
        &mut self,
        link: &mut Link<'_, Conn>,
        frame: v1::ClientFrame,
    ) -> Result<(), (ErrorCode, String)> {
        let rid = frame.request_id;
        let id = link.state.id;
        let Phase::Live(s) = &mut link.state.phase else { return Ok(()) };
        let mut cx = Ctx { shared: &self.shared, id, s, now: link.now };
        let later = |answer: Result<Answer, (ErrorCode, String)>| match answer {
            Ok(answer) => Outcome::Later(Box::pin(async move { Done::Answer(answer.await) }), false),
            Err(e) => Outcome::Now(Box::new(Err(e))),
        };
        let barrier = |step: Result<Step, (ErrorCode, String)>| match step {
            Ok(step) => Outcome::Later(step, true),
            Err(e) => Outcome::Now(Box::new(Err(e))),
        };
        let outcome = match frame.body {
            None => return Err((ErrorCode::ProtocolViolation, "empty frame".into())),
            Some(Req::Hello(_)) => return Err((ErrorCode::ProtocolViolation, "second hello".into())),
            Some(Req::Join(j)) => barrier(cx.join(j)),
            Some(Req::Leave(l)) => barrier(cx.leave(l.room)),
            Some(Req::SendChat(c)) => later(cx.chat(c)),
            Some(Req::Recall(r)) => later(cx.recall(r)),
            Some(Req::FetchHistory(f)) => later(cx.fetch_history(f)),
            Some(Req::SendGift(g)) => later(cx.gift(g)),
            Some(Req::FetchCatalogue(_)) => {
                Outcome::Now(Box::new(Ok(Resp::Catalogue(self.shared.gifts.catalogue()))))
            }
            Some(Req::SubmitAnswer(a)) => later(cx.answer_quiz(a)),
        };
        match outcome {
            Outcome::Later(step, barrier) => {
                if let Phase::Live(s) = &mut link.state.phase {
                    s.pending.push_back(Pending { rid, barrier, step, done: None });
                }
                Ok(())
            }
            Outcome::Now(answered) => answer(link, rid, *answered),
        }
    }
}

impl Ctx<'_> {
    pub(super) fn touch(&mut self) {
        self.s.last_heartbeat = self.now;
    }

    fn join(&mut self, j: v1::Join) -> Result<Step, (ErrorCode, String)> {
        let room = RoomId::new(&j.room).map_err(|e| (ErrorCode::InvalidRoom, e.to_string()))?;
        self.touch();
        // A refused join changes nothing: a rejoin leaves the room only once
        // the request is known to be good.
        let filter = match v1::JoinFilter::try_from(j.filter) {
            Ok(v1::JoinFilter::All) => Filter::All,
            Ok(v1::JoinFilter::HostOnly) => Filter::HostOnly,
            Err(_) => {
                return Err((ErrorCode::ProtocolViolation, format!("unknown join filter {}", j.filter)));
            }
        };
        let max = self.shared.config.limits.max_rooms_per_conn as usize;
        let rejoin = self.s.rooms.contains_key(&room);
        if !rejoin && self.s.rooms.len() >= max {
            return Err((ErrorCode::TooManyRooms, format!("at most {max} rooms per connection")));
        }
        let resume = j.last_seq.map(|last_seq| Resume { last_seq, epoch: j.epoch });
        let now_ms = unix_ms(SystemTime::now());
        if self.shared.moderation.applies(&room, &self.s.identity.user_id, SanctionKind::Ban, now_ms) {
            return Err((ErrorCode::Banned, format!("banned from room {room}")));
        }
        let old = self.s.rooms.remove(&room);
        let request = JoinRequest { conn: self.id, identity: self.s.identity.clone(), resume, filter };
        let (rooms, conn) = (self.shared.rooms.clone(), self.id);
        Ok(Box::pin(async move {
            if let Some(old) = old {
                old.leave(conn, LeaveReason::Left).await;
            }
            let joined =
                rooms.join(&room, request).await.map_err(|code| (code, "room unavailable".to_string()));
            Done::Joined(room, joined)
        }))
    }

    fn leave(&mut self, room: String) -> Result<Step, (ErrorCode, String)> {
        let room = RoomId::new(&room).map_err(|e| (ErrorCode::InvalidRoom, e.to_string()))?;
        let Some(handle) = self.s.rooms.remove(&room) else {
            return Err((ErrorCode::NotJoined, format!("not in room {room}")));
        };
        let conn = self.id;
        Ok(Box::pin(async move {
            handle.leave(conn, LeaveReason::Left).await;
            Done::Answer(Ok(Resp::Left(v1::Left { room: room.to_string() })))
        }))
    }

    pub(super) fn joined_room(&self, room: &str) -> Result<(RoomId, RoomHandle), (ErrorCode, String)> {
        let room = RoomId::new(room).map_err(|e| (ErrorCode::InvalidRoom, e.to_string()))?;
        match self.s.rooms.get(&room) {
            Some(handle) => Ok((room, handle.clone())),
            None => Err((ErrorCode::NotJoined, format!("not in room {room}"))),
        }
    }

    fn recall(&mut self, r: v1::Recall) -> Result<Answer, (ErrorCode, String)> {
        let (room, handle) = self.joined_room(&r.room)?;
        if r.message_id.is_empty() || r.message_id.len() > MAX_MESSAGE_ID_BYTES {
            return Err((ErrorCode::NotFound, "no such message".into()));
        }
        let conn = self.id;
        Ok(Box::pin(async move {
            let Ok(reply) = handle.recall(conn, r.message_id).await else {
                warn!(room = %room, "room task gone while joined");
                return Err((ErrorCode::Internal, "room unavailable".into()));
            };
            room_answer(reply, "recall refused", Resp::Recalled).await
        }))
    }

    /// Reads history straight from the room's log, without joining and
    /// without queueing behind the room's live traffic: a live room's, or
    /// once the room is gone, the archive's.
    fn fetch_history(&mut self, f: v1::FetchHistory) -> Result<Answer, (ErrorCode, String)> {
        let room = RoomId::new(&f.room).map_err(|e| (ErrorCode::InvalidRoom, e.to_string()))?;
        let range = HistoryRange::from_proto(f.range);
        let rooms = self.shared.rooms.clone();
        Ok(Box::pin(async move {
            rooms
                .history(&room, range, f.limit)
                .await
                .map(Resp::History)
                .map_err(|code| (code, format!("no history of room {room} here")))
        }))
    }

    fn chat(&mut self, c: v1::SendChat) -> Result<Answer, (ErrorCode, String)> {
        let (room, handle) = self.joined_room(&c.room)?;
        let max = self.shared.config.limits.max_message_bytes as usize;
        if c.text.is_empty() || c.text.len() > max {
            return Err((ErrorCode::MessageTooLong, format!("text must be 1..={max} bytes")));
        }
        if c.client_msg_id.len() > MAX_MESSAGE_ID_BYTES {
            let why = format!("client_msg_id longer than {MAX_MESSAGE_ID_BYTES} bytes");
            return Err((ErrorCode::ProtocolViolation, why));
        }
        self.touch();
        let moderation = &self.shared.moderation;
        if moderation.applies(&room, &self.s.identity.user_id, SanctionKind::Mute, unix_ms(SystemTime::now()))
        {
            return Err((ErrorCode::Muted, format!("muted in room {room}")));
        }
        let (text, flagged) = match moderation.words().check(&c.text) {
            Verdict::Clean => (c.text, None),
            Verdict::Masked(masked) => (masked, Some(FlagAction::Masked)),
            Verdict::Refused(_) => (c.text, Some(FlagAction::Refused)),
        };
        if let Some(action) = flagged {
            let user = Box::from(&*self.s.identity.user_id);
            let flagged =
                HookEvent::MessageFlagged { room: room.clone(), user, text: text.as_str().into(), action };
            self.shared.hooks.emit(flagged);
            if action == FlagAction::Refused {
                return Err((ErrorCode::MessageRefused, "the message has a banned word".into()));
            }
        }
        let chat = ChatRequest { text, client_msg_id: c.client_msg_id, media_ts_ms: c.media_ts_ms };
        let conn = self.id;
        Ok(Box::pin(async move {
            let Ok(reply) = handle.publish(conn, chat).await else {
                warn!(room = %room, "room task gone while joined");
                return Err((ErrorCode::Internal, "room unavailable".into()));
            };
            room_answer(reply, "chat refused", Resp::ChatAck).await
        }))
    }

    /// Checks a gift, then answers it later: the charge runs in the answer's
    /// future (on this session's task, the ledger's sync on the blocking
    /// pool), and only a charged gift reaches the room. A gift the room
    /// cannot take after all (the sender left it) is refunded.
    fn gift(&mut self, g: v1::SendGift) -> Result<Answer, (ErrorCode, String)> {
        let (room, handle) = self.joined_room(&g.room)?;
        if g.idempotency_key.is_empty() || g.idempotency_key.len() > MAX_MESSAGE_ID_BYTES {
            let why = format!("idempotency_key must be 1..={MAX_MESSAGE_ID_BYTES} bytes");
            return Err((ErrorCode::ProtocolViolation, why));
        }
        if g.count == 0 || g.count > MAX_GIFT_COUNT {
            return Err((ErrorCode::ProtocolViolation, format!("count must be 1..={MAX_GIFT_COUNT}")));
        }
        if g.combo_id.len() > MAX_MESSAGE_ID_BYTES {
            let why = format!("combo_id longer than {MAX_MESSAGE_ID_BYTES} bytes");
            return Err((ErrorCode::ProtocolViolation, why));
        }
        self.touch();
        let gifts = self.shared.gifts.clone();
        let metrics = self.shared.metrics.clone();
        let now_ms = unix_ms(SystemTime::now());
        let ack = v1::GiftAck { room: room.to_string(), server_time_ms: now_ms, ..Default::default() };
        let answer = |ack: v1::GiftAck, outcome: v1::GiftOutcome, label: &'static str| -> Answer {
            metrics.gift(label);
            let ack = v1::GiftAck { outcome: outcome as i32, ..ack };
            Box::pin(std::future::ready(Ok(Resp::GiftAck(ack))))
        };
        let Some(item) = gifts.item(&g.gift_id).cloned() else {
            return Ok(answer(ack, v1::GiftOutcome::UnknownGift, "unknown_gift"));
        };
        let user = self.s.identity.user_id.clone();
        if !gifts.admit(&user, self.now.into()) {
            return Ok(answer(ack, v1::GiftOutcome::RateLimited, "rate_limited"));
        }
        let value = Gifts::value(&item, g.count);
        let conn = self.id;
        let charge = Charge {
            user: user.to_string(),
            key: g.idempotency_key,
            amount: value,
            room: room.to_string(),
            gift_id: item.id.clone(),
            count: g.count,
            now_ms,
        };
        Ok(Box::pin(async move {
            let mut ack = ack;
            let (outcome, label) = match debit_waiting_for_first(&gifts, &charge).await {
                Err(e) => {
                    warn!(error = %e, "gift ledger unavailable");
                    (v1::GiftOutcome::LedgerUnavailable, "ledger_unavailable")
                }
                Ok(DebitOutcome::Insufficient { balance }) => {
                    ack.balance = balance;
                    (v1::GiftOutcome::InsufficientBalance, "insufficient_balance")
                }
                Ok(DebitOutcome::Repeat { balance, receipt }) => {
                    let r = receipt.unwrap_or_default();
                    ack = v1::GiftAck {
                        balance,
                        seq: r.seq,
                        message_id: r.message_id,
                        combo_id: r.combo_id,
                        combo_count: r.combo_count,
                        ..ack
                    };
                    (v1::GiftOutcome::Accepted, "repeat")
                }
                Ok(DebitOutcome::Charged { balance }) => {
                    // Whatever ends this future — an answer, or the session
                    // going away first — ends the charge's time in flight.
                    let _in_flight = InFlight { ledger: &gifts.ledger, charge: &charge };
                    let request = GiftRequest {
                        gift_id: item.id,
                        name: item.name,
                        count: charge.count,
                        value,
                        combo_id: g.combo_id,
                        media_ts_ms: g.media_ts_ms,
                    };
                    let sequenced = match handle.gift(conn, request).await {
                        Ok(reply) => reply.await,
                        Err(code) => Err(code),
                    };
                    match sequenced {
                        Ok(s) => {
                            let receipt = Receipt {
                                seq: s.seq,
                                message_id: s.message_id.clone(),
                                combo_id: s.combo_id.clone(),
                                combo_count: s.combo_count,
                            };
                            gifts.ledger.settle(&charge.user, &charge.key, receipt).await;
                            ack = v1::GiftAck {
                                balance,
                                seq: s.seq,
                                message_id: s.message_id,
                                combo_id: s.combo_id,
                                combo_count: s.combo_count,
                                ..ack
                            };
                            (v1::GiftOutcome::Accepted, "accepted")
                        }
                        Err(code) => {
                            if let Err(e) = gifts.ledger.refund(charge.clone()).await {
                                warn!(error = %e, room = %room, "charged gift not sequenced and not refunded");
                            }
                            metrics.gift("refunded");
                            return Err((code, "gift not sequenced; the charge was refunded".to_string()));
                        }
                    }
                }
            };
            metrics.gift(label);
            Ok(Resp::GiftAck(v1::GiftAck { outcome: outcome as i32, ..ack }))
        }))
    }
}

/// The longest a repeat of a gift key waits for the first send of the key
/// to be sequenced, so that it can answer with the same `seq`, message id
/// and combo (the ledger's own bound on one call).
const REPEAT_WAIT: Duration = Duration::from_secs(10);

/// Debits `charge`. A repeat of a key whose first send is still being
/// sequenced (in flight: no receipt yet) asks again, with a short backoff,
/// until the receipt is there, the key is handed back as charged (the
/// first send went away: this one sequences it), or [`REPEAT_WAIT`] has
/// passed; only then is it answered without a receipt.
async fn debit_waiting_for_first(
    gifts: &Gifts,
    charge: &Charge,
) -> Result<DebitOutcome, crate::gifts::LedgerError> {
    let deadline = tokio::time::Instant::now() + REPEAT_WAIT;
    let mut backoff = Duration::from_millis(10);
    loop {
        let outcome = gifts.ledger.debit(charge.clone()).await?;
        match outcome {
            DebitOutcome::Repeat { receipt: None, .. }
                if tokio::time::Instant::now() + backoff < deadline =>
            {
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_millis(200));
            }
            outcome => return Ok(outcome),
        }
    }
}

/// A charge being sequenced; dropping it releases the key (see
/// [`crate::gifts::ledger`], "Charged, not yet sequenced").
struct InFlight<'a> {
    ledger: &'a crate::gifts::Ledger,
    charge: &'a Charge,
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.ledger.release(self.charge);
    }
}
