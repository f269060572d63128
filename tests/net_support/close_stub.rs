//! A stand-in fleet node: a real QUIC endpoint (tickforge's ALPN, its own
//! or a given certificate) that answers each connection with the next
//! [`Answer`] of its script: closing it at once the way a node answers a
//! `Hello` for a match it does not host (`Redirect`, `MatchMoving`,
//! `ServerFull`), or admitting it and then closing the live session the
//! way a node does when its match moves away, or admitting it and then
//! handing the connection to the test (to play a server that breaks the
//! protocol).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use rustls::pki_types::CertificateDer;
use tickforge::net::CloseCode;
use tickforge::net::protocol::{self, ClientMsg, FrameBuffer, ServerMsg, Welcome};
use tickforge::net::tls;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// What the stub does with one connection.
#[derive(Debug, Clone)]
pub enum Answer {
    /// Read nothing; close with this code and reason.
    Close(CloseCode, String),
    /// Read the `Hello`, answer with this `Welcome`, and close with the
    /// code and reason when the client sends anything more (a command).
    AdmitThenClose(Welcome, CloseCode, String),
    /// Read the `Hello`, answer with this `Welcome`, and hand the
    /// connection and its control stream to the test.
    AdmitThenHandOver(Welcome, mpsc::UnboundedSender<Admitted>),
}

/// A connection the stub admitted, with its control stream.
pub type Admitted = (quinn::Connection, quinn::SendStream, quinn::RecvStream);

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
    /// Binds `listen` with a fresh certificate and answers the n-th
    /// connection with the n-th answer of `script(own address)`, the last
    /// answer repeating once it is used up.
    pub async fn start(
        listen: SocketAddr,
        script: impl FnOnce(SocketAddr) -> Vec<Answer>,
    ) -> CloseStub {
        let cert = tls::generate_dev_cert().expect("a development certificate");
        Self::start_with_cert(listen, cert, script).await
    }

    /// [`start`](CloseStub::start) with a given certificate (a fleet's
    /// nodes may share one), retrying the bind while a stopped server still
    /// holds the port.
    pub async fn start_with_cert(
        listen: SocketAddr,
        cert: tls::ServerCert,
        script: impl FnOnce(SocketAddr) -> Vec<Answer>,
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
                let answer = answers[n.min(answers.len() - 1)].clone();
                tokio::spawn(async move {
                    if let Ok(conn) = connecting.await {
                        answer_with(conn, answer).await;
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

async fn answer_with(conn: quinn::Connection, answer: Answer) {
    let welcome = match &answer {
        Answer::Close(code, reason) => {
            conn.close(code.code().into(), reason.as_bytes());
            return;
        }
        Answer::AdmitThenClose(welcome, ..) | Answer::AdmitThenHandOver(welcome, _) => {
            welcome.clone()
        }
    };
    let Ok((mut send, mut recv)) = conn.accept_bi().await else {
        return;
    };
    // The Hello (its variant carries no command, so any command type reads it).
    let mut frames = FrameBuffer::new(1 << 20);
    loop {
        match frames.next_frame::<ClientMsg<()>>() {
            Ok(Some(ClientMsg::Hello(_))) => break,
            Ok(Some(_)) | Err(_) => panic!("the stub expected a Hello first"),
            Ok(None) => match recv.read_chunk(64 * 1024, true).await {
                Ok(Some(chunk)) => frames.extend(&chunk.bytes),
                _ => return,
            },
        }
    }
    let frame = protocol::encode_frame(&ServerMsg::<()>::Welcome(welcome), usize::MAX)
        .expect("a Welcome encodes");
    if send.write_all(&frame).await.is_err() {
        return;
    }
    match answer {
        Answer::AdmitThenClose(_, code, reason) => {
            // Whatever comes next (a command, or the stream's end): the match moved.
            let _ = recv.read_chunk(64 * 1024, true).await;
            conn.close(code.code().into(), reason.as_bytes());
        }
        Answer::AdmitThenHandOver(_, to) => {
            let _ = to.send((conn, send, recv));
        }
        Answer::Close(..) => unreachable!("answered above"),
    }
}
