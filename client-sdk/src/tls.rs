//! How the client decides to trust a server's certificate.

use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

use crate::Error;

/// Which server certificates the client accepts.
#[derive(Debug, Clone)]
pub enum Trust {
    /// Exactly the certificate with this SHA-256 fingerprint (hex, colons
    /// optional), whatever name it carries. For development certificates and
    /// for apps that pin their server.
    Fingerprint([u8; 32]),
    /// Certificates that chain to one of these roots and match the server
    /// name (ordinary WebPKI validation).
    Roots(Vec<CertificateDer<'static>>),
}

impl Trust {
    /// Pins a fingerprint such as `AB:CD:…` (64 hex digits, colons optional).
    pub fn fingerprint(hex: &str) -> Result<Self, Error> {
        let digits: String = hex.chars().filter(|c| *c != ':').collect();
        if digits.len() != 64 {
            return Err(Error::Config(format!("fingerprint must be 64 hex digits, got {}", digits.len())));
        }
        let mut out = [0u8; 32];
        for (i, b) in out.iter_mut().enumerate() {
            *b = u8::from_str_radix(&digits[2 * i..2 * i + 2], 16)
                .map_err(|_| Error::Config(format!("not a hex fingerprint: {hex}")))?;
        }
        Ok(Self::Fingerprint(out))
    }

    /// Pins the (first) certificate in a PEM file, e.g. the server's
    /// development certificate.
    pub fn pinned_cert_file(path: &Path) -> Result<Self, Error> {
        let cert = CertificateDer::from_pem_file(path)
            .map_err(|e| Error::Config(format!("reading certificate {}: {e}", path.display())))?;
        Ok(Self::Fingerprint(sha256(&cert)))
    }

    /// Trusts the CA certificates in a PEM file.
    pub fn ca_file(path: &Path) -> Result<Self, Error> {
        let certs = CertificateDer::pem_file_iter(path)
            .and_then(|it| it.collect::<Result<Vec<_>, _>>())
            .map_err(|e| Error::Config(format!("reading CA file {}: {e}", path.display())))?;
        Ok(Self::Roots(certs))
    }
}

fn sha256(der: &[u8]) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, der);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// Room streams the node may have open to a client at once.
const MAX_ROOM_STREAMS: u32 = 64;

pub(crate) fn client_config(options: &crate::ClientConfig) -> Result<quinn::ClientConfig, Error> {
    let trust = &options.trust;
    // AES-128-GCM-SHA256 first: cheaper per packet than AES-256, and its
    // handshake hashing is hardware-accelerated SHA-256 (a phone's battery
    // notices either).
    let mut provider = rustls::crypto::ring::default_provider();
    provider.cipher_suites.sort_by_key(|s| s.suite() != rustls::CipherSuite::TLS13_AES_128_GCM_SHA256);
    let provider = Arc::new(provider);
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| Error::Config(e.to_string()))?;
    let mut tls = match trust {
        Trust::Fingerprint(fp) => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(Pinned {
                fingerprint: *fp,
                algorithms: provider.signature_verification_algorithms,
            }))
            .with_no_client_auth(),
        Trust::Roots(certs) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in certs {
                roots.add(c.clone()).map_err(|e| Error::Config(format!("bad root certificate: {e}")))?;
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
    };
    tls.alpn_protocols = vec![roomcast_protocol::ALPN.to_vec()];
    let crypto =
        quinn::crypto::rustls::QuicClientConfig::try_from(tls).map_err(|e| Error::Config(e.to_string()))?;
    let mut config = quinn::ClientConfig::new(Arc::new(crypto));
    let mut transport = quinn::TransportConfig::default();
    // One stream per joined room (a node allows 16 by default), with room
    // for rejoins and resumes, whose new streams open while old ones end.
    // QUIC stacks keep an entry per stream the peer may open, so a phone
    // should not offer hundreds.
    transport.max_concurrent_uni_streams(MAX_ROOM_STREAMS.into());
    transport.max_concurrent_bidi_streams(0u32.into());
    transport.datagram_receive_buffer_size(Some(64 * 1024));
    transport.datagram_send_buffer_size(16 * 1024);
    // No path MTU probing of its own: what a client sends (requests,
    // heartbeats) fits QUIC's 1,200-byte minimum, and the probes would cost a
    // phone packets and wake-ups at every connect. The node probes its side.
    transport.mtu_discovery_config(None);
    let idle =
        quinn::IdleTimeout::try_from(options.idle_timeout).map_err(|e| Error::Config(e.to_string()))?;
    transport.max_idle_timeout(Some(idle));
    if let Some(window) = options.stream_receive_window {
        transport.stream_receive_window(window.into());
    }
    config.transport_config(Arc::new(transport));
    Ok(config)
}

/// Accepts exactly one certificate, by fingerprint, and still checks that the
/// server holds its private key (the handshake signature).
#[derive(Debug)]
struct Pinned {
    fingerprint: [u8; 32],
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if sha256(end_entity) == self.fingerprint {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::InvalidCertificate(rustls::CertificateError::ApplicationVerificationFailure))
        }
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::PeerIncompatible(rustls::PeerIncompatible::Tls12NotOffered))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_fingerprints_with_or_without_colons() {
        let hex = "00112233445566778899AABBCCDDEEFF00112233445566778899aabbccddeeff";
        let a = Trust::fingerprint(hex).unwrap();
        let with_colons: String =
            hex.as_bytes().chunks(2).map(|c| std::str::from_utf8(c).unwrap()).collect::<Vec<_>>().join(":");
        let b = Trust::fingerprint(&with_colons).unwrap();
        match (a, b) {
            (Trust::Fingerprint(a), Trust::Fingerprint(b)) => {
                assert_eq!(a, b);
                assert_eq!(a[1], 0x11);
            }
            _ => panic!("expected fingerprints"),
        }
        assert!(Trust::fingerprint("abc").is_err());
        assert!(Trust::fingerprint(&"zz".repeat(32)).is_err());
    }
}
