//! A stand-in fleet node: a real QUIC endpoint (tickforge's ALPN, its own
//! development certificate) that accepts each connection, reads nothing,
//! and closes it with the next answer of its script, the way a node answers
//! a `Hello` for a match it does not host (`Redirect`, `MatchMoving`,
//! `ServerFull`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use rustls::pki_types::CertificateDer;
use tickforge::net::CloseCode;
use tickforge::net::tls;
use tokio::task::JoinHandle;

/// A running stub; dropping it stops the endpoint.
pub struct CloseStub {
    pub addr: SocketAddr,
    /// Its certificate, for the client to trust beside the real server's.
    pub cert: CertificateDer<'static>,
    accepted: Arc<AtomicUsize>,
    endpoint: quinn::Endpoint,
    task: JoinHandle<()>,
}

impl Drop for CloseStub {
    fn drop(&mut self) {
        self.task.abort();
        self.endpoint.close(0u32.into(), b"stub stopped");
    }
}

impl CloseStub {
    /// Binds `listen` (retrying while a stopped server still holds the
    /// port) and closes the n-th connection with the n-th answer of
    /// `script(own address)`, the last answer repeating once it is used up.
    pub async fn start(
        listen: SocketAddr,
        script: impl FnOnce(SocketAddr) -> Vec<(CloseCode, String)>,
    ) -> CloseStub {
        let cert = tls::generate_dev_cert().expect("a development certificate");
        Self::start_with_cert(listen, cert, script).await
    }

    /// [`start`](CloseStub::start) with a given certificate (a fleet's
    /// nodes may share one).
    pub async fn start_with_cert(
        listen: SocketAddr,
        cert: tls::ServerCert,
        script: impl FnOnce(SocketAddr) -> Vec<(CloseCode, String)>,
    ) -> CloseStub {
        let config = tls::server_config(&cert, Duration::from_secs(10)).expect("server config");
        let mut attempts = 0;
        let endpoint = loop {
            match quinn::Endpoint::server(config.clone(), listen) {
                Ok(endpoint) => break endpoint,
                Err(e) if attempts < 50 => {
                    attempts += 1;
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => panic!("the stub cannot bind {listen}: {e}"),
            }
        };
        let addr = endpoint.local_addr().expect("a bound address");
        let answers = script(addr);
        assert!(!answers.is_empty(), "a stub needs at least one answer");
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        let incoming = endpoint.clone();
        let task = tokio::spawn(async move {
            while let Some(connecting) = incoming.accept().await {
                let n = count.fetch_add(1, Ordering::SeqCst);
                let (code, reason) = answers[n.min(answers.len() - 1)].clone();
                tokio::spawn(async move {
                    if let Ok(conn) = connecting.await {
                        conn.close(code.code().into(), reason.as_bytes());
                    }
                });
            }
        });
        CloseStub {
            addr,
            cert: cert.leaf().expect("a leaf certificate").clone(),
            accepted,
            endpoint,
            task,
        }
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}
