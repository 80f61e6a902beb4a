//! What each kind of room event is: its priority, who sees it, and how it
//! is shed. A new kind (a gift, a like total, a quiz question) is added to
//! the proto's `RoomEvent.kind`, answered for here, and created by the
//! command that makes it (`RoomState::sequence` for the sequenced class,
//! `RoomState::ephemeral` for the ephemeral one). Rounds, outboxes and
//! history take everything else from these answers.

use roomcast_protocol::v1;
use v1::room_event::Kind;

use super::fanout::Shed;

/// The priority the server gives each kind of event.
pub(crate) fn priority(kind: &Kind) -> v1::Priority {
    match kind {
        // Gifts are money: never sampled by the chat budget and, being High
        // and sequenced, never shed (an outbox lags before it drops one).
        Kind::Chat(_)
        | Kind::HostMessage(_)
        | Kind::Recall(_)
        | Kind::Gift(_)
        | Kind::QuizQuestion(_)
        | Kind::QuizResult(_) => v1::Priority::High,
        Kind::SystemNotice(_) | Kind::RoomStatus(_) | Kind::Ranking(_) => v1::Priority::Normal,
        Kind::UserEntered(_) => v1::Priority::Low,
    }
}

/// Whether a host-only member receives this kind.
pub(crate) fn host_visible(kind: &Kind) -> bool {
    match kind {
        // A host-only view (the host's own screen) still shows who paid.
        Kind::HostMessage(_)
        | Kind::SystemNotice(_)
        | Kind::Recall(_)
        | Kind::RoomStatus(_)
        | Kind::Gift(_)
        | Kind::QuizQuestion(_)
        | Kind::QuizResult(_) => true,
        Kind::Chat(_) | Kind::UserEntered(_) | Kind::Ranking(_) => false,
    }
}

/// Every kind's name, for metrics, in the order of [`index`].
pub(crate) const NAMES: [&str; KINDS] = [
    "chat",
    "host_message",
    "system_notice",
    "user_entered",
    "recall",
    "room_status",
    "gift",
    "ranking",
    "quiz_question",
    "quiz_result",
];

/// How many kinds there are.
pub(crate) const KINDS: usize = 10;

/// A kind's place in [`NAMES`].
pub(crate) fn index(kind: &Kind) -> usize {
    match kind {
        Kind::Chat(_) => 0,
        Kind::HostMessage(_) => 1,
        Kind::SystemNotice(_) => 2,
        Kind::UserEntered(_) => 3,
        Kind::Recall(_) => 4,
        Kind::RoomStatus(_) => 5,
        Kind::Gift(_) => 6,
        Kind::Ranking(_) => 7,
        Kind::QuizQuestion(_) => 8,
        Kind::QuizResult(_) => 9,
    }
}

/// Which ephemeral events an overflowing outbox sheds first.
pub(crate) fn shed(priority: v1::Priority) -> Shed {
    if priority == v1::Priority::Low { Shed::Low } else { Shed::Normal }
}
