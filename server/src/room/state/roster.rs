//! Who is in the room: members, their fan-out slots, and presence.
//!
//! The online count is the number of distinct users with a present
//! connection; a member that misses its heartbeats stays joined (and keeps
//! receiving) but stops counting. The viewer page lists hosts first, then the
//! most recent arrivals, one entry per user.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;

use roomcast_protocol::v1;

use super::super::fanout::Outbox;
use super::{ConnId, Filter};
use crate::auth::{Identity, Role};

#[derive(Debug)]
pub(super) struct Member {
    pub(super) identity: Identity,
    pub(super) outbox: Arc<Outbox>,
    present: bool,
    /// Index of this member in `Roster::subscribers`.
    slot: usize,
}

/// What a round needs of a member, kept in a dense array so that a round
/// walks contiguous memory.
#[derive(Debug)]
pub(super) struct Subscriber {
    pub(super) conn: ConnId,
    pub(super) filter: Filter,
    pub(super) outbox: Arc<Outbox>,
    /// Log position of the first event not yet pushed to it.
    pub(super) next: u64,
    /// Version of the online-count datagram it was last given.
    pub(super) online: u64,
    /// Version of the like-total datagram it was last given.
    pub(super) likes: u64,
}

#[derive(Debug)]
pub(super) struct Roster {
    members: HashMap<ConnId, Member>,
    /// The fan-out targets, one per member.
    pub(super) subscribers: Vec<Subscriber>,
    /// Present connections per user: the online count is the number of keys.
    present_users: HashMap<Arc<str>, u32>,
    /// Connections of hosts, for the head of the viewer list.
    hosts: Vec<ConnId>,
    /// Most recent arrivals, newest last, for the viewer list. Bounded.
    recent: VecDeque<ConnId>,
    page_len: usize,
}

impl Roster {
    pub(super) fn new(page_len: usize) -> Self {
        Self {
            members: HashMap::new(),
            subscribers: Vec::new(),
            present_users: HashMap::new(),
            hosts: Vec::new(),
            recent: VecDeque::new(),
            page_len,
        }
    }

    pub(super) fn len(&self) -> usize {
        self.members.len()
    }

    pub(super) fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    pub(super) fn get(&self, conn: ConnId) -> Option<&Member> {
        self.members.get(&conn)
    }

    /// Distinct users with a present connection.
    pub(super) fn online_count(&self) -> u64 {
        self.present_users.len() as u64
    }

    /// Whether `user` has a present connection in the room.
    pub(super) fn is_present(&self, user: &str) -> bool {
        self.present_users.contains_key(user)
    }

    /// Adds a member (present) whose round cursor starts at `next`.
    pub(super) fn insert(&mut self, conn: ConnId, identity: Identity, outbox: Arc<Outbox>, sub: Subscriber) {
        if identity.role == Role::Host {
            self.hosts.push(conn);
        }
        let slot = self.subscribers.len();
        self.subscribers.push(sub);
        *self.present_users.entry(identity.user_id.clone()).or_default() += 1;
        self.members.insert(conn, Member { identity, outbox, present: true, slot });
        self.recent.push_back(conn);
        if self.recent.len() > self.page_len * 4 {
            self.recent.pop_front();
        }
    }

    /// Removes a member and its fan-out slot.
    pub(super) fn remove(&mut self, conn: ConnId) -> Option<Member> {
        let m = self.members.remove(&conn)?;
        self.subscribers.swap_remove(m.slot);
        if let Some(moved) = self.subscribers.get(m.slot)
            && let Some(member) = self.members.get_mut(&moved.conn)
        {
            member.slot = m.slot;
        }
        if m.present {
            self.unpresent(&m.identity.user_id);
        }
        self.hosts.retain(|c| *c != conn);
        self.recent.retain(|c| *c != conn);
        Some(m)
    }

    fn unpresent(&mut self, user: &Arc<str>) {
        if let Some(n) = self.present_users.get_mut(user) {
            *n -= 1;
            if *n == 0 {
                self.present_users.remove(user);
            }
        }
    }

    /// Marks a member present or absent (missed heartbeats).
    pub(super) fn set_present(&mut self, conn: ConnId, present: bool) {
        let Some(m) = self.members.get_mut(&conn) else {
            return;
        };
        if m.present == present {
            return;
        }
        m.present = present;
        let user = m.identity.user_id.clone();
        if present {
            *self.present_users.entry(user).or_default() += 1;
        } else {
            self.unpresent(&user);
        }
    }

    /// Every member's user id.
    pub(super) fn users(&self) -> HashSet<Arc<str>> {
        self.members.values().map(|m| m.identity.user_id.clone()).collect()
    }

    /// The connections of `user`.
    pub(super) fn conns_of(&self, user: &str) -> Vec<ConnId> {
        self.members.iter().filter(|(_, m)| &*m.identity.user_id == user).map(|(c, _)| *c).collect()
    }

    /// Every member's connection.
    pub(super) fn conns(&self) -> Vec<ConnId> {
        self.members.keys().copied().collect()
    }

    /// Distinct users with a connection in the room, by role: viewers,
    /// hosts, admins.
    pub(super) fn role_counts(&self) -> [u64; 3] {
        let mut seen = HashSet::new();
        let mut counts = [0; 3];
        for m in self.members.values() {
            if seen.insert(m.identity.user_id.clone()) {
                counts[match m.identity.role {
                    Role::Viewer => 0,
                    Role::Host => 1,
                    Role::Admin => 2,
                }] += 1;
            }
        }
        counts
    }

    /// A page of the present users (hosts first, then by arrival), one entry
    /// per user, and how many there are in all.
    pub(super) fn viewers(&self, offset: usize, limit: usize) -> (Vec<v1::User>, usize) {
        let mut members: Vec<(&ConnId, &Member)> = self.members.iter().filter(|(_, m)| m.present).collect();
        members.sort_by_key(|(conn, m)| (m.identity.role != Role::Host, **conn));
        let mut seen = HashSet::new();
        let users: Vec<&Member> = members
            .into_iter()
            .filter(|(_, m)| seen.insert(m.identity.user_id.clone()))
            .map(|(_, m)| m)
            .collect();
        let page = users.iter().skip(offset).take(limit).map(|m| m.identity.to_proto()).collect();
        (page, users.len())
    }

    /// Hosts first, then the most recent arrivals; one entry per user.
    pub(super) fn viewer_page(&self) -> Vec<v1::User> {
        let mut seen = HashSet::new();
        let mut page = Vec::new();
        for conn in self.hosts.iter().chain(self.recent.iter().rev()) {
            if page.len() >= self.page_len {
                break;
            }
            if let Some(m) = self.members.get(conn)
                && m.present
                && seen.insert(m.identity.user_id.clone())
            {
                page.push(m.identity.to_proto());
            }
        }
        page
    }
}
