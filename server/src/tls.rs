//! TLS: the node's certificate and its rustls configuration.
//!
//! Production passes a certificate chain and key in PEM files. The embedded
//! default creates a self-signed development certificate for `localhost`,
//! `127.0.0.1` and `::1` once, keeps it in the data directory, and reuses it
//! so clients can keep trusting it.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result};
use prometheus_client::metrics::counter::Counter;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::Config;

use roomcast_protocol::dev::{CERT_FILE as DEV_CERT_FILE, KEY_FILE as DEV_KEY_FILE};

/// The certificate a node serves, for printing and for tests to pin.
#[derive(Debug, Clone)]
pub struct CertInfo {
    pub cert_path: PathBuf,
    /// SHA-256 of the end-entity certificate, colon-separated upper-case hex.
    pub fingerprint: String,
    pub development: bool,
}

struct Material {
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    info: CertInfo,
}

/// SHA-256 fingerprint of a DER certificate, as `AB:CD:...`.
pub fn fingerprint(der: &[u8]) -> String {
    let d = ring::digest::digest(&ring::digest::SHA256, der);
    d.as_ref().iter().map(|b| format!("{b:02X}")).collect::<Vec<_>>().join(":")
}

fn load(config: &Config) -> Result<Material> {
    match (&config.tls.cert, &config.tls.key) {
        (Some(cert), Some(key)) => load_files(cert, key, false),
        (None, None) => dev_material(&config.data_dir),
        _ => anyhow::bail!("tls.cert and tls.key must be given together"),
    }
}

fn load_files(cert: &Path, key: &Path, development: bool) -> Result<Material> {
    let chain = CertificateDer::pem_file_iter(cert)
        .with_context(|| format!("reading certificate {}", cert.display()))?
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("parsing certificate {}", cert.display()))?;
    let first = chain.first().with_context(|| format!("no certificate in {}", cert.display()))?;
    let info = CertInfo { cert_path: cert.to_owned(), fingerprint: fingerprint(first), development };
    let key = PrivateKeyDer::from_pem_file(key).with_context(|| format!("reading key {}", key.display()))?;
    Ok(Material { chain, key, info })
}

fn dev_material(dir: &Path) -> Result<Material> {
    let cert = dir.join(DEV_CERT_FILE);
    let key = dir.join(DEV_KEY_FILE);
    if cert.exists() && key.exists() {
        match load_files(&cert, &key, true) {
            Ok(m) => return Ok(m),
            // Only this node ever wrote them: a pair it cannot read (cut short
            // by a full disk under an older node) is made anew.
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "development certificate unreadable; making a new one")
            }
        }
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let names = vec!["localhost".to_string(), "127.0.0.1".to_string(), "::1".to_string()];
    let ck = rcgen::generate_simple_self_signed(names).context("generating development certificate")?;
    // The key first: a certificate on disk means its key is there, whole.
    crate::durable::write_private(&key, ck.signing_key.serialize_pem().as_bytes())?;
    crate::durable::write_private(&cert, ck.cert.pem().as_bytes())?;
    load_files(&cert, &key, true)
}

/// The certificate `config` asks for (creating the development certificate
/// on first use).
pub fn cert_info(config: &Config) -> Result<CertInfo> {
    Ok(load(config)?.info)
}

/// Builds the QUIC crypto configuration: TLS 1.3 only, ALPN `roomcast/1`,
/// ring as the crypto provider. It counts in `resumed` the resumption tickets
/// clients present that the node can read: each is a reconnection that
/// skips the certificate exchange.
pub fn crypto(
    config: &Config,
    resumed: Counter,
) -> Result<(quinn::crypto::rustls::QuicServerConfig, CertInfo)> {
    let m = load(config)?;
    let mut tls = rustls::ServerConfig::builder_with_provider(Arc::new(provider()))
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_no_client_auth()
        .with_single_cert(m.chain, m.key)
        .context("certificate and key do not match")?;
    tls.alpn_protocols = vec![roomcast_protocol::ALPN.to_vec()];
    // The node's suite order decides: AES-128-GCM with SHA-256 wherever the
    // client offers it.
    tls.ignore_client_order = true;
    // Stateless resumption tickets, so a reconnecting client (a network
    // switch, a drained node) skips the certificate signature and its
    // verification however many clients there are; one ticket per
    // handshake is enough for the next reconnection.
    let inner = rustls::crypto::ring::Ticketer::new().context("resumption ticketer")?;
    tls.ticketer = Arc::new(CountingTicketer { inner, resumed });
    tls.send_tls13_tickets = 1;
    Ok((quinn::crypto::rustls::QuicServerConfig::try_from(tls)?, m.info))
}

/// The node's ticketer, counting the tickets it can decrypt.
#[derive(Debug)]
struct CountingTicketer {
    inner: Arc<dyn rustls::server::ProducesTickets>,
    resumed: Counter,
}

impl rustls::server::ProducesTickets for CountingTicketer {
    fn enabled(&self) -> bool {
        self.inner.enabled()
    }

    fn lifetime(&self) -> u32 {
        self.inner.lifetime()
    }

    fn encrypt(&self, plain: &[u8]) -> Option<Vec<u8>> {
        self.inner.encrypt(plain)
    }

    fn decrypt(&self, cipher: &[u8]) -> Option<Vec<u8>> {
        let plain = self.inner.decrypt(cipher);
        if plain.is_some() {
            self.resumed.inc();
        }
        plain
    }
}

/// ring, with TLS 1.3's AES-128-GCM-SHA256 first. It is the suite QUIC's
/// Initial packets already use; on every packet its AES is cheaper than
/// AES-256, and its handshake hashing is SHA-256, which CPUs accelerate, where
/// AES-256-GCM-SHA384 needs SHA-512 rounds.
fn provider() -> rustls::crypto::CryptoProvider {
    let mut provider = rustls::crypto::ring::default_provider();
    provider.cipher_suites.sort_by_key(|s| s.suite() != rustls::CipherSuite::TLS13_AES_128_GCM_SHA256);
    provider
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn development_certificate_is_created_once_and_reused() {
        let dir = std::env::temp_dir().join(format!("roomcast-tls-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let config = Config { data_dir: dir.clone(), ..Config::default() };
        let (_, a) = crypto(&config, Counter::default()).unwrap();
        let (_, b) = crypto(&config, Counter::default()).unwrap();
        assert!(a.development);
        assert_eq!(a.fingerprint, b.fingerprint);
        assert_eq!(a.fingerprint.len(), 32 * 3 - 1);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_development_certificate_cut_short_is_made_anew() {
        let dir = std::env::temp_dir().join(format!("roomcast-tls-torn-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let config = Config { data_dir: dir.clone(), ..Config::default() };
        let (_, a) = crypto(&config, Counter::default()).unwrap();
        // What an older node left when the disk filled mid-write.
        let pem = std::fs::read(dir.join(DEV_CERT_FILE)).unwrap();
        std::fs::write(dir.join(DEV_CERT_FILE), &pem[..pem.len() / 2]).unwrap();
        let (_, b) = crypto(&config, Counter::default()).unwrap();
        assert!(b.development);
        assert_ne!(a.fingerprint, b.fingerprint, "a new certificate");
        let (_, c) = crypto(&config, Counter::default()).unwrap();
        assert_eq!(b.fingerprint, c.fingerprint, "and kept");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
