//! Several drivers on one address: one UDP socket per driver, all bound with
//! `SO_REUSEPORT`, so the kernel spreads clients over them by their address.
//! A client whose address changes (a NAT rebinding, a phone moving from
//! Wi-Fi to mobile) may then land on another driver's socket; its packets
//! are steered back to the driver that holds its connection by the
//! connection id they carry, whose first byte the owning driver chose:
//! every connection id a driver issues starts with its index (as QUIC-LB
//! encodes a server id in the connection id). Such a packet costs one hop
//! through a bounded queue; the rest never leave their socket's driver.
//!
//! A client's first packets (Initial and 0-RTT) carry a connection id the
//! client made up; they stay where they land, which is the same socket for
//! the whole handshake, as QUIC forbids migrating before it completes.

use std::time::Duration;

use bytes::BytesMut;
use quinn::udp::RecvMeta;
use tokio::sync::mpsc;

use super::proto;

/// Length of the connection ids a driver of a group issues.
pub(super) const CID_LEN: usize = 8;

/// Datagrams queued from the other drivers of a group, at most.
pub(super) const MOVED_QUEUE: usize = 4096;

/// Connection ids whose first byte is the issuing driver's index.
pub(super) struct Cids {
    pub(super) driver: u8,
    pub(super) random: proto::RandomConnectionIdGenerator,
}

impl proto::ConnectionIdGenerator for Cids {
    fn generate_cid(&mut self) -> proto::ConnectionId {
        let mut bytes = [0u8; CID_LEN];
        bytes.copy_from_slice(&self.random.generate_cid());
        bytes[0] = self.driver;
        proto::ConnectionId::new(&bytes)
    }

    fn cid_len(&self) -> usize {
        CID_LEN
    }

    fn cid_lifetime(&self) -> Option<Duration> {
        None
    }
}

/// A datagram that arrived on another driver's socket.
pub(super) struct Moved {
    pub(super) meta: RecvMeta,
    pub(super) data: BytesMut,
}

/// A driver's place in its group.
pub(super) struct Steer {
    pub(super) driver: usize,
    pub(super) peers: Vec<mpsc::Sender<Moved>>,
    pub(super) inbox: mpsc::Receiver<Moved>,
    /// Called for each datagram handed to another driver.
    pub(super) steered: Steered,
}

/// What a group calls for each datagram it steers (a metric's increment).
pub type Steered = std::sync::Arc<dyn Fn() + Send + Sync>;

impl Steer {
    /// The driver of the group whose connection `datagram` belongs to, if it
    /// names one by its connection id.
    pub(super) fn owner(&self, datagram: &[u8]) -> Option<usize> {
        let first = *datagram.first()?;
        let cid_start = if first & 0x80 != 0 {
            // Long header: the packet type is in bits 4-5. Initial (0) and
            // 0-RTT (1) may carry the client's own connection id.
            if (first >> 4) & 0x03 < 2 {
                return None;
            }
            // Version (4 bytes), then the destination id's length and bytes.
            if usize::from(*datagram.get(5)?) != CID_LEN {
                return None;
            }
            6
        } else {
            1
        };
        let owner = usize::from(*datagram.get(cid_start)?);
        datagram.get(cid_start + CID_LEN - 1)?;
        (owner < self.peers.len()).then_some(owner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn steer(drivers: usize) -> Steer {
        let (_, inbox) = mpsc::channel(1);
        let peers = (0..drivers).map(|_| mpsc::channel(1).0).collect();
        Steer { driver: 0, peers, inbox, steered: std::sync::Arc::new(|| {}) }
    }

    #[test]
    fn short_and_handshake_packets_go_by_their_id_and_first_packets_stay() {
        let s = steer(4);
        // Short header: flags, then the 8-byte id.
        let short = [0x40, 2, 9, 9, 9, 9, 9, 9, 9, 0xaa, 0xbb];
        assert_eq!(s.owner(&short), Some(2));
        // Handshake (type 2): flags, version, id length, id.
        let handshake = [0xe0, 0, 0, 0, 1, 8, 3, 1, 1, 1, 1, 1, 1, 1, 0];
        assert_eq!(s.owner(&handshake), Some(3));
        // Initial (type 0) and 0-RTT (type 1) carry the client's id.
        let initial = [0xc0, 0, 0, 0, 1, 8, 3, 1, 1, 1, 1, 1, 1, 1, 0];
        assert_eq!(s.owner(&initial), None);
        let zero_rtt = [0xd0, 0, 0, 0, 1, 8, 3, 1, 1, 1, 1, 1, 1, 1, 0];
        assert_eq!(s.owner(&zero_rtt), None);
        // An index past the group, a short datagram, another id length.
        assert_eq!(s.owner(&[0x40, 7, 9, 9, 9, 9, 9, 9, 9]), None);
        assert_eq!(s.owner(&[0x40, 1, 9]), None);
        assert_eq!(s.owner(&[0xe0, 0, 0, 0, 1, 4, 1, 1, 1, 1]), None);
        assert_eq!(s.owner(&[]), None);
    }

    #[test]
    fn issued_ids_start_with_the_driver() {
        use proto::ConnectionIdGenerator;
        let mut cids = Cids { driver: 5, random: proto::RandomConnectionIdGenerator::new(CID_LEN) };
        for _ in 0..100 {
            let cid = cids.generate_cid();
            assert_eq!((cid.len(), cid[0]), (CID_LEN, 5));
        }
    }
}
