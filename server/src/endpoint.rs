//! The node's QUIC endpoint: its UDP socket, the transport limits a
//! roomcast client gets, and the server configuration that puts them
//! together with TLS.

use std::sync::Arc;

use anyhow::{Context, Result};
use prometheus_client::metrics::counter::Counter;

use crate::config::Config;
use crate::tls::{self, CertInfo};

/// Builds the QUIC server configuration: the TLS of [`tls::crypto`] (whose
/// resumed handshakes are counted in `resumed`), datagrams on, and the
/// transport limits a roomcast client needs (one bidirectional stream, no
/// client-opened unidirectional streams).
pub fn server_config(config: &Config, resumed: Counter) -> Result<(quinn::ServerConfig, CertInfo)> {
    let (crypto, info) = tls::crypto(config, resumed)?;
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    server.transport_config(Arc::new(transport(config)?));
    Ok((server, info))
}

fn transport(config: &Config) -> Result<quinn::TransportConfig> {
    let mut t = quinn::TransportConfig::default();
    t.max_idle_timeout(Some(config.presence.idle_timeout().try_into().context("idle timeout too large")?));
    t.max_concurrent_bidi_streams(1u32.into());
    t.max_concurrent_uni_streams(0u32.into());
    // Heartbeats are tiny and a client sends a handful per minute.
    t.datagram_receive_buffer_size(Some(16 * 1024));
    t.datagram_send_buffer_size(64 * 1024);
    // The control stream carries small requests; keep the receive windows small
    // so idle connections cost little memory.
    t.stream_receive_window((64u32 * 1024).into());
    t.receive_window((128u32 * 1024).into());
    // Path MTU discovery with a single probe per connection, straight to
    // 1,452 bytes (Ethernet's MTU less IPv6 and UDP headers): a big room's
    // batching window of messages then fits one packet where 1,200 bytes
    // would need two, while a join storm pays one probe per newcomer rather
    // than a binary search's four or five.
    if config.limits.ack_delay_ms > 0 {
        // Clients acknowledge at most every `ack_delay_ms` (or every 10
        // packets), not every packet: the node receives and decrypts a
        // fraction of the ACKs. Reordering still asks for an ACK at once, so
        // a loss in mid-stream is found as quickly as before.
        let mut ack = quinn::AckFrequencyConfig::default();
        ack.ack_eliciting_threshold(9u32.into());
        ack.max_ack_delay(Some(std::time::Duration::from_millis(config.limits.ack_delay_ms)));
        t.ack_frequency_config(Some(ack));
    }
    let mut mtud = quinn::MtuDiscoveryConfig::default();
    mtud.upper_bound(1452).minimum_change(200);
    t.mtu_discovery_config(Some(mtud));
    Ok(t)
}

/// The node's UDP socket, bound: [`crate::serve`] runs a transport driver
/// ([`crate::edge`]) on it.
#[derive(Debug)]
pub struct Listener {
    sockets: Vec<std::net::UdpSocket>,
}

impl Listener {
    /// A listener on sockets already bound (all to the same address).
    pub fn new(sockets: Vec<std::net::UdpSocket>) -> Self {
        Self { sockets }
    }

    /// The address clients reach the node at.
    pub fn local_addr(&self) -> std::io::Result<std::net::SocketAddr> {
        match self.sockets.first() {
            Some(s) => s.local_addr(),
            None => Err(std::io::Error::other("no socket")),
        }
    }

    pub(crate) fn into_sockets(self) -> Vec<std::net::UdpSocket> {
        self.sockets
    }
}

/// Binds the node's UDP socket described by `config` and reports the
/// certificate it will serve (creating the development certificate on first
/// use). Nothing is accepted until [`crate::serve`] runs on it with the
/// node's server configuration.
pub fn bind(config: &Config) -> Result<(Listener, CertInfo)> {
    let info = tls::cert_info(config)?;
    let drivers = config.limits.drivers();
    let sockets = udp_sockets(config.listen, config.limits.udp_buffer_bytes, drivers)
        .with_context(|| format!("binding UDP {}", config.listen))?;
    Ok((Listener::new(sockets), info))
}

/// Binds `n` UDP sockets to `addr` (the first one's port if `addr`'s is 0),
/// all with `SO_REUSEPORT` when there are several, so that the kernel
/// spreads clients over them by address; each with the buffers of
/// [`udp_socket`].
pub fn udp_sockets(
    addr: std::net::SocketAddr,
    buffer: usize,
    n: usize,
) -> std::io::Result<Vec<std::net::UdpSocket>> {
    if n <= 1 {
        return Ok(vec![udp_socket(addr, buffer)?]);
    }
    let first = socket(addr, buffer, true)?;
    let addr = first.local_addr()?;
    let mut sockets = vec![first];
    for _ in 1..n {
        sockets.push(socket(addr, buffer, true)?);
    }
    Ok(sockets)
}

/// Binds a UDP socket with the given receive and send buffer sizes (as far as
/// the kernel allows: it logs what it got when that is less).
pub fn udp_socket(addr: std::net::SocketAddr, buffer: usize) -> std::io::Result<std::net::UdpSocket> {
    socket(addr, buffer, false)
}

fn socket(
    addr: std::net::SocketAddr,
    buffer: usize,
    reuse_port: bool,
) -> std::io::Result<std::net::UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() {
        socket.set_only_v6(false)?;
    }
    if reuse_port {
        socket.set_reuse_port(true)?;
    }
    if buffer > 0 {
        socket.set_recv_buffer_size(buffer)?;
        socket.set_send_buffer_size(buffer)?;
        // Linux reports twice what it grants (the doubling covers overhead).
        let (recv, send) = (socket.recv_buffer_size()? / 2, socket.send_buffer_size()? / 2);
        if recv < buffer || send < buffer {
            tracing::warn!(
                requested = buffer,
                recv,
                send,
                "UDP socket buffers capped by the kernel; raise net.core.rmem_max and net.core.wmem_max"
            );
        }
    }
    socket.bind(&addr.into())?;
    Ok(socket.into())
}
