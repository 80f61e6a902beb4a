//! A relay between clients and a server whose server-facing port can change.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tokio::net::UdpSocket;
use tokio::task::JoinHandle;

/// A relay between clients and a server whose server-facing port can
/// change mid-connection (a NAT rebinding, a phone moving networks), and
/// which can drop everything.
pub(super) struct Rebinder {
    pub(super) addr: SocketAddr,
    pub(super) moved: Arc<AtomicBool>,
    pub(super) dropping: Arc<AtomicBool>,
    tasks: Vec<JoinHandle<()>>,
}

impl Rebinder {
    pub(super) async fn start(server: SocketAddr) -> Self {
        let front = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
        let backs = [
            Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap()),
            Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap()),
        ];
        let (moved, dropping) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicBool::new(false)));
        let client: Arc<Mutex<Option<SocketAddr>>> = Arc::default();
        let mut tasks = Vec::new();
        {
            let (front, backs, moved, dropping, client) =
                (front.clone(), backs.clone(), moved.clone(), dropping.clone(), client.clone());
            tasks.push(tokio::spawn(async move {
                let mut buf = vec![0u8; 65536];
                while let Ok((n, from)) = front.recv_from(&mut buf).await {
                    *client.lock().unwrap() = Some(from);
                    if dropping.load(Ordering::SeqCst) {
                        continue;
                    }
                    let back = &backs[usize::from(moved.load(Ordering::SeqCst))];
                    let _ = back.send_to(&buf[..n], server).await;
                }
            }));
        }
        for back in backs {
            let (front, dropping, client) = (front.clone(), dropping.clone(), client.clone());
            tasks.push(tokio::spawn(async move {
                let mut buf = vec![0u8; 65536];
                while let Ok((n, _)) = back.recv_from(&mut buf).await {
                    let to = *client.lock().unwrap();
                    if let Some(to) = to
                        && !dropping.load(Ordering::SeqCst)
                    {
                        let _ = front.send_to(&buf[..n], to).await;
                    }
                }
            }));
        }
        Self { addr: front.local_addr().unwrap(), moved, dropping, tasks }
    }
}

impl Drop for Rebinder {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}
