//! A UDP socket for the server's QUIC endpoint that sends many datagrams
//! per system call, across peers (`net.batch_sends`).
//!
//! quinn drives each connection in its own task, and each task hands its
//! packets to the socket one `sendmsg` at a time; GSO only batches packets
//! to the same peer. At 30 Hz every client gets a small state datagram in
//! the same few hundred microseconds after a tick, so the kernel's per-call
//! cost dominates. [`BatchingSocket`] implements [`quinn::AsyncUdpSocket`]:
//! `try_send` copies the transmit into a queue and returns; the queue goes
//! out with one `sendmmsg` per [`MAX_BATCH`] transmits:
//!
//! - the first transmit into an empty queue wakes a flusher task, which
//!   yields once (so the other connection tasks woken by the same tick
//!   queue theirs) and then drains everything queued by then;
//! - the connection task whose transmit fills the queue to
//!   [`EAGER_FLUSH_AT`] sends at once, bounding the wait of the first one;
//! - when the kernel's buffer is full the rest stays queued and the flusher
//!   waits for the socket to be writable; past [`QUEUE_BOUND`] a transmit is
//!   dropped, counted in [`SendBatchStats::dropped_full`] and logged (QUIC
//!   treats it as a lost packet).
//!
//! GSO keeps working: a transmit with a segment size carries its
//! `UDP_SEGMENT` control message within the batch. Receiving is quinn's
//! stock path (quinn-udp already reads many datagrams per call). The queue
//! is sans-IO (`queue`); the one `unsafe` system call is in `sendmmsg`.
//! Linux only: elsewhere [`server_endpoint`] falls back to quinn's socket.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use super::receive_queue::ReceiveQueue;

#[cfg(target_os = "linux")]
mod queue;
#[cfg(target_os = "linux")]
mod sendmmsg;

#[cfg(target_os = "linux")]
pub use linux::BatchingSocket;

/// Transmits one `sendmmsg` hands the kernel at most.
pub const MAX_BATCH: usize = 64;
/// A connection task whose transmit makes the queue this long sends the
/// queue itself instead of waiting for the flusher.
pub const EAGER_FLUSH_AT: usize = 64;
/// Transmits queued at most (per buffer: one filling, one being sent);
/// beyond it a transmit is dropped and counted.
pub const QUEUE_BOUND: usize = 16_384;
/// Bytes of contents queued at most (per buffer), as [`QUEUE_BOUND`].
pub const QUEUE_BOUND_BYTES: usize = 16 << 20;

/// Counters of a [`BatchingSocket`] (all cumulative).
#[derive(Debug, Default)]
pub struct SendBatchStats {
    /// `sendmmsg` calls that sent something.
    pub system_calls: AtomicU64,
    /// Transmits the kernel took (a GSO transmit counts once).
    pub transmits_sent: AtomicU64,
    /// Transmits dropped because the queue was at its bound.
    pub dropped_full: AtomicU64,
    /// Transmits the kernel refused (e.g. `EMSGSIZE` for a path-MTU probe
    /// larger than the interface allows); quinn treats them as lost.
    pub refused: AtomicU64,
}

/// The server's QUIC endpoint on `listen`: on a [`BatchingSocket`] when
/// `batch_sends` (Linux; elsewhere a warning and quinn's stock socket), with
/// the socket's counters; else on quinn's stock socket. Within a tokio
/// runtime.
pub fn server_endpoint(
    listen: SocketAddr,
    batch_sends: bool,
    socket_buffer_bytes: usize,
    server_config: quinn::ServerConfig,
) -> std::io::Result<ServerEndpoint> {
    let (udp, _) = super::socket::bind_udp(listen, socket_buffer_bytes)?;
    let receive_queue = ReceiveQueue::of(&udp);
    if batch_sends {
        #[cfg(target_os = "linux")]
        {
            let socket = BatchingSocket::from_std(udp)?;
            let stats = socket.stats();
            let endpoint = quinn::Endpoint::new_with_abstract_socket(
                quinn::EndpointConfig::default(),
                Some(server_config),
                socket,
                Arc::new(quinn::TokioRuntime),
            )?;
            return Ok(ServerEndpoint {
                endpoint,
                send_batches: Some(stats),
                receive_queue,
            });
        }
        #[cfg(not(target_os = "linux"))]
        tracing::warn!("net.batch_sends needs Linux (sendmmsg); using the stock UDP socket");
    }
    let endpoint = quinn::Endpoint::new(
        quinn::EndpointConfig::default(),
        Some(server_config),
        udp,
        Arc::new(quinn::TokioRuntime),
    )?;
    Ok(ServerEndpoint {
        endpoint,
        send_batches: None,
        receive_queue,
    })
}

/// What [`server_endpoint`] binds.
pub struct ServerEndpoint {
    /// The endpoint.
    pub endpoint: quinn::Endpoint,
    /// The batching socket's counters, with `batch_sends`.
    pub send_batches: Option<Arc<SendBatchStats>>,
    /// The socket's receive queue, where the platform shows it.
    pub receive_queue: Option<ReceiveQueue>,
}

#[cfg(target_os = "linux")]
mod linux {
    use std::io;
    use std::net::SocketAddr;
    use std::os::fd::AsRawFd;
    use std::pin::Pin;
    use std::sync::atomic::Ordering::{Acquire, Relaxed, Release};
    use std::sync::atomic::{AtomicBool, AtomicUsize};
    use std::sync::{Arc, Mutex, MutexGuard};
    use std::task::{Context, Poll};
    use std::time::{Duration, Instant};

    use quinn::udp::{RecvMeta, Transmit, UdpSocketState};
    use quinn::{AsyncUdpSocket, UdpPoller};
    use tokio::io::Interest;
    use tokio::sync::Notify;

    use super::queue::{Pushed, QueueBound, SendQueue};
    use super::sendmmsg::{self, Scratch};
    use super::{EAGER_FLUSH_AT, QUEUE_BOUND, QUEUE_BOUND_BYTES, SendBatchStats};

    /// Warnings about dropped or refused transmits, at most one per this.
    const WARN_EVERY: Duration = Duration::from_secs(10);

    /// A UDP socket whose sends are queued and flushed with `sendmmsg`
    /// (see the module documentation). Linux only.
    #[derive(Debug)]
    pub struct BatchingSocket {
        shared: Arc<Shared>,
    }

    /// What the socket, its flusher task and the connection tasks share.
    #[derive(Debug)]
    struct Shared {
        io: tokio::net::UdpSocket,
        state: UdpSocketState,
        /// Where `try_send` copies transmits.
        filling: Mutex<SendQueue>,
        /// What is being sent, with the system call's arrays; one sender at a time.
        sending: Mutex<Sending>,
        /// Wakes the flusher task.
        wake: Notify,
        /// The socket was dropped: the flusher sends what is left and ends.
        closed: AtomicBool,
        /// Datagrams quinn may put in one transmit (1 once GSO failed).
        gso_segments: AtomicUsize,
        stats: Arc<SendBatchStats>,
        last_warning: Mutex<Option<Instant>>,
    }

    #[derive(Debug)]
    struct Sending {
        queue: SendQueue,
        scratch: Scratch,
    }

    /// How a flush ended.
    enum Flushed {
        /// Both queues are empty.
        Empty,
        /// The kernel's buffer is full; something is still queued.
        Blocked,
    }

    impl BatchingSocket {
        /// Binds `addr` and starts the flusher task. Within a tokio runtime.
        pub fn bind(addr: SocketAddr) -> io::Result<Arc<Self>> {
            Self::from_std(std::net::UdpSocket::bind(addr)?)
        }

        /// Takes a bound socket and starts the flusher task. Within a tokio runtime.
        pub fn from_std(std_socket: std::net::UdpSocket) -> io::Result<Arc<Self>> {
            let runtime = tokio::runtime::Handle::try_current().map_err(io::Error::other)?;
            let state = UdpSocketState::new((&std_socket).into())?;
            let _guard = runtime.enter();
            let io = tokio::net::UdpSocket::from_std(std_socket)?;
            let bound = QueueBound {
                transmits: QUEUE_BOUND,
                bytes: QUEUE_BOUND_BYTES,
            };
            let shared = Arc::new(Shared {
                gso_segments: AtomicUsize::new(state.max_gso_segments()),
                io,
                state,
                filling: Mutex::new(SendQueue::new(bound)),
                sending: Mutex::new(Sending {
                    queue: SendQueue::new(bound),
                    scratch: Scratch::default(),
                }),
                wake: Notify::new(),
                closed: AtomicBool::new(false),
                stats: Arc::new(SendBatchStats::default()),
                last_warning: Mutex::new(None),
            });
            runtime.spawn(flush_task(shared.clone()));
            Ok(Arc::new(Self { shared }))
        }

        /// The socket's counters.
        pub fn stats(&self) -> Arc<SendBatchStats> {
            self.shared.stats.clone()
        }
    }

    impl Drop for BatchingSocket {
        fn drop(&mut self) {
            self.shared.closed.store(true, Release);
            self.shared.wake.notify_one();
        }
    }

    /// Sends whatever is queued each time it is woken, until the socket is
    /// dropped and the queue is empty.
    async fn flush_task(shared: Arc<Shared>) {
        loop {
            shared.wake.notified().await;
            // Let the other tasks of this burst (the connections woken by
            // the same tick) queue their transmits first.
            tokio::task::yield_now().await;
            let closing = shared.closed.load(Acquire);
            loop {
                let flushed = shared.flush();
                match flushed {
                    Flushed::Empty => break,
                    Flushed::Blocked => {
                        if let Err(error) = shared.io.writable().await {
                            tracing::warn!(%error, "batching UDP socket: cannot wait to send");
                            return;
                        }
                    }
                }
            }
            if closing {
                return;
            }
        }
    }

    impl Shared {
        /// Sends until both queues are empty or the kernel's buffer is full.
        fn flush(&self) -> Flushed {
            let mut sending = lock(&self.sending);
            self.flush_locked(&mut sending)
        }

        fn flush_locked(&self, sending: &mut Sending) -> Flushed {
            loop {
                if sending.queue.is_sent() {
                    sending.queue.clear();
                    let mut filling = lock(&self.filling);
                    if filling.is_empty() {
                        return Flushed::Empty;
                    }
                    std::mem::swap(&mut *filling, &mut sending.queue);
                }
                let Sending { queue, scratch } = sending;
                let fd = self.io.as_raw_fd();
                match self.io.try_io(Interest::WRITABLE, || {
                    sendmmsg::send_pending(fd, queue, scratch)
                }) {
                    Ok(sent) => {
                        queue.advance(sent);
                        self.stats.system_calls.fetch_add(1, Relaxed);
                        self.stats.transmits_sent.fetch_add(sent as u64, Relaxed);
                    }
                    Err(error) if error.kind() == io::ErrorKind::WouldBlock => {
                        return Flushed::Blocked;
                    }
                    Err(error) => {
                        let gso = queue.pending().first().and_then(|q| q.segment_size);
                        self.refused(error, gso.is_some());
                        queue.advance(1);
                    }
                }
            }
        }

        /// The kernel refused the first pending transmit: count it, log it
        /// now and then, and stop asking for GSO if that is what it refused.
        fn refused(&self, error: io::Error, used_gso: bool) {
            self.stats.refused.fetch_add(1, Relaxed);
            // Expected for path-MTU probes larger than the interface allows.
            if error.raw_os_error() == Some(libc::EMSGSIZE) {
                return;
            }
            // Some drivers do not support GSO and say so only when asked.
            if used_gso
                && matches!(error.raw_os_error(), Some(libc::EIO) | Some(libc::EINVAL))
                && self.gso_segments.swap(1, Relaxed) > 1
            {
                tracing::info!(%error, "batching UDP socket: GSO refused, sending one datagram per message");
                return;
            }
            if self.may_warn() {
                tracing::warn!(%error, refused = self.stats.refused.load(Relaxed), "batching UDP socket: the kernel refused a datagram");
            }
        }

        fn may_warn(&self) -> bool {
            let mut last = lock(&self.last_warning);
            let now = Instant::now();
            if last.is_some_and(|at| now.duration_since(at) < WARN_EVERY) {
                return false;
            }
            *last = Some(now);
            true
        }
    }

    /// A poisoned lock only means a panic elsewhere; the queues stay valid.
    fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
        mutex
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    impl AsyncUdpSocket for BatchingSocket {
        fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
            Box::pin(AlwaysWritable)
        }

        /// Queues `transmit`; never blocks (see the module documentation).
        fn try_send(&self, transmit: &Transmit) -> io::Result<()> {
            let shared = &self.shared;
            let pushed = lock(&shared.filling).push(transmit);
            match pushed {
                Pushed::First => shared.wake.notify_one(),
                Pushed::Behind(queued) if queued >= EAGER_FLUSH_AT => {
                    // Whoever holds the lock is sending and will take
                    // these too; a full kernel buffer is the flusher's to wait on.
                    if let Ok(mut sending) = shared.sending.try_lock() {
                        if let Flushed::Blocked = shared.flush_locked(&mut sending) {
                            shared.wake.notify_one();
                        }
                    }
                }
                Pushed::Behind(_) => {}
                Pushed::Full => {
                    let dropped = shared.stats.dropped_full.fetch_add(1, Relaxed) + 1;
                    if shared.may_warn() {
                        tracing::warn!(
                            dropped,
                            bound = QUEUE_BOUND,
                            "batching UDP socket: send queue full, dropping datagrams"
                        );
                    }
                }
            }
            Ok(())
        }

        fn poll_recv(
            &self,
            cx: &mut Context,
            bufs: &mut [io::IoSliceMut<'_>],
            meta: &mut [RecvMeta],
        ) -> Poll<io::Result<usize>> {
            let io = &self.shared.io;
            loop {
                std::task::ready!(io.poll_recv_ready(cx))?;
                if let Ok(received) = io.try_io(Interest::READABLE, || {
                    self.shared.state.recv(io.into(), bufs, meta)
                }) {
                    return Poll::Ready(Ok(received));
                }
            }
        }

        fn local_addr(&self) -> io::Result<SocketAddr> {
            self.shared.io.local_addr()
        }

        fn max_transmit_segments(&self) -> usize {
            self.shared.gso_segments.load(Relaxed)
        }

        fn max_receive_segments(&self) -> usize {
            self.shared.state.gro_segments()
        }

        fn may_fragment(&self) -> bool {
            self.shared.state.may_fragment()
        }
    }

    /// `try_send` only queues, so the socket is always ready for it.
    #[derive(Debug)]
    struct AlwaysWritable;

    impl UdpPoller for AlwaysWritable {
        fn poll_writable(self: Pin<&mut Self>, _: &mut Context) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use std::sync::atomic::Ordering::Relaxed;
    use std::time::Duration;

    use quinn::AsyncUdpSocket;
    use quinn::udp::Transmit;

    use super::{BatchingSocket, EAGER_FLUSH_AT, MAX_BATCH};

    const WAIT: Duration = Duration::from_secs(5);

    /// On a current-thread runtime nothing else runs while the test queues,
    /// so the calls are exactly the eager flushes plus the flusher's one.
    #[tokio::test(flavor = "current_thread")]
    async fn queued_datagrams_all_arrive_in_order_in_few_calls() {
        let socket = BatchingSocket::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let receiver = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let destination = receiver.local_addr().unwrap();
        let count = 200u32;
        for i in 0..count {
            socket
                .try_send(&Transmit {
                    destination,
                    ecn: None,
                    contents: &i.to_be_bytes(),
                    segment_size: None,
                    src_ip: None,
                })
                .unwrap();
        }
        let mut buf = [0u8; 16];
        for i in 0..count {
            let (n, from) = tokio::time::timeout(WAIT, receiver.recv_from(&mut buf))
                .await
                .expect("the datagram arrived")
                .unwrap();
            assert_eq!(&buf[..n], &i.to_be_bytes());
            assert_eq!(from, socket.local_addr().unwrap());
        }
        let stats = socket.stats();
        assert_eq!(stats.transmits_sent.load(Relaxed), u64::from(count));
        assert_eq!(EAGER_FLUSH_AT, MAX_BATCH);
        let eager = count as usize / EAGER_FLUSH_AT;
        assert_eq!(stats.system_calls.load(Relaxed), eager as u64 + 1);
        assert_eq!(stats.dropped_full.load(Relaxed), 0);
        assert_eq!(stats.refused.load(Relaxed), 0);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_gso_transmit_arrives_as_its_segments() {
        let socket = BatchingSocket::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        assert!(
            socket.max_transmit_segments() > 1,
            "this kernel offers no UDP GSO (Linux 4.18+), which this test checks"
        );
        let receiver = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let contents: Vec<u8> = (0..250u32).map(|i| (i / 100) as u8).collect();
        socket
            .try_send(&Transmit {
                destination: receiver.local_addr().unwrap(),
                ecn: Some(quinn::udp::EcnCodepoint::Ect0),
                contents: &contents,
                segment_size: Some(100),
                src_ip: None,
            })
            .unwrap();
        let mut buf = [0u8; 512];
        for (segment, len) in [(0u8, 100), (1, 100), (2, 50)] {
            let n = tokio::time::timeout(WAIT, receiver.recv(&mut buf))
                .await
                .expect("the segment arrived")
                .unwrap();
            assert_eq!(n, len);
            assert!(buf[..n].iter().all(|&b| b == segment));
        }
        assert_eq!(socket.stats().transmits_sent.load(Relaxed), 1);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn the_flusher_sends_what_is_left_when_the_socket_is_dropped() {
        let socket = BatchingSocket::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let stats = socket.stats();
        let receiver = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        socket
            .try_send(&Transmit {
                destination: receiver.local_addr().unwrap(),
                ecn: None,
                contents: b"last words",
                segment_size: None,
                src_ip: None,
            })
            .unwrap();
        drop(socket);
        let mut buf = [0u8; 16];
        let n = tokio::time::timeout(WAIT, receiver.recv(&mut buf))
            .await
            .expect("the queued datagram went out after the drop")
            .unwrap();
        assert_eq!(&buf[..n], b"last words");
        assert_eq!(stats.transmits_sent.load(Relaxed), 1);
    }
}
