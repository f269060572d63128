//! (b) One loop that owns a `quinn_proto::Endpoint` and every `quinn_proto::Connection`:
//! no task per connection, receives batched by quinn-udp (recvmmsg, GRO), one timer heap
//! fed by `Connection::poll_timeout`, and each pass's transmits flushed together either
//! per transmit through quinn-udp (sendmsg, GSO for several packets to one peer) or with
//! `libc::sendmmsg` across peers.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::io::IoSliceMut;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use quinn_proto::{
    Connection, ConnectionHandle, DatagramEvent, EcnCodepoint, Endpoint, EndpointConfig, Event,
};
use quinn_udp::{RecvMeta, UdpSocketState, BATCH_SIZE};

use crate::common::{self, Identity, TICK};

/// How the loop hands its transmits to the kernel.
#[derive(Clone, Copy, Debug)]
pub enum SendPath {
    /// One `UdpSocketState::send` (sendmsg, GSO when one transmit holds several packets).
    PerTransmit,
    /// `libc::sendmmsg` over all pending transmits (UDP_SEGMENT cmsg where GSO applies).
    Sendmmsg,
}

/// Bytes per receive buffer (room for a GRO batch).
const RECV_CHUNK: usize = 64 * 1024;
/// Linux `UDP_SEGMENT` socket option (GSO segment size), level SOL_UDP.
const UDP_SEGMENT: libc::c_int = 103;
/// Most messages one `sendmmsg` takes (UIO_MAXIOV).
const MMSG_MAX: usize = 1024;

/// Serve on 127.0.0.1:port until killed.
pub fn serve(
    port: u16,
    identity: Identity,
    path: SendPath,
    ack_every: u32,
    coalesce: Duration,
) -> anyhow::Result<()> {
    let socket = common::bind(port)?;
    let udp = UdpSocketState::new((&socket).into())?;
    let endpoint = Endpoint::new(
        Arc::new(EndpointConfig::default()),
        Some(Arc::new(identity.server_config(ack_every)?)),
        !udp.may_fragment(),
        None,
    );
    let mut server = LoopServer {
        max_gso: udp.max_gso_segments(),
        endpoint,
        slots: Vec::new(),
        dirty: Vec::new(),
        timers: BinaryHeap::new(),
        tx: TxBatch::default(),
        mmsg: MmsgScratch::default(),
        scratch: Vec::new(),
        path,
        coalesce,
        counters: Counters::default(),
        udp,
        socket,
    };
    server.run()
}

#[derive(Default)]
struct Counters {
    sent: u64,
    lost: u64,
    /// Datagrams received from clients (`--inputs`).
    inputs: u64,
    /// Transmits the kernel refused (WouldBlock or error); QUIC recovers, but we count them.
    send_failed: u64,
}

struct Slot {
    connection: Connection,
    /// The deadline last pushed to the heap for this connection.
    timer: Option<Instant>,
    dirty: bool,
    established: bool,
}

struct LoopServer {
    socket: UdpSocket,
    udp: UdpSocketState,
    max_gso: usize,
    endpoint: Endpoint,
    /// Indexed by `ConnectionHandle.0`.
    slots: Vec<Option<Slot>>,
    dirty: Vec<usize>,
    timers: BinaryHeap<Reverse<(Instant, usize)>>,
    tx: TxBatch,
    mmsg: MmsgScratch,
    /// Endpoint responses (handshake refusals, resets) are built here.
    scratch: Vec<u8>,
    path: SendPath,
    /// Least time between two passes over the socket (0: wake on every readable event).
    coalesce: Duration,
    counters: Counters,
}

impl LoopServer {
    fn run(&mut self) -> anyhow::Result<()> {
        let payload = common::payload();
        let mut recv_buf = vec![0u8; RECV_CHUNK * BATCH_SIZE];
        let mut metas = [RecvMeta::default(); BATCH_SIZE];
        let mut next_tick = Instant::now() + TICK;
        let mut next_stat = Instant::now() + Duration::from_secs(1);
        let (mut ticks, mut iterations) = (0u64, 0u64);
        loop {
            let now = Instant::now();
            self.receive(now, &mut recv_buf, &mut metas);
            self.expire_timers(now);
            iterations += 1;
            if now >= next_tick {
                ticks += 1;
                // Skip ticks missed while overloaded rather than bursting to catch up
                // (what a game server does; tokio's MissedTickBehavior::Skip in stock).
                next_tick += TICK;
                while next_tick <= now {
                    next_tick += TICK;
                }
                for (index, slot) in self.slots.iter_mut().enumerate() {
                    let Some(slot) = slot else { continue };
                    if !slot.established {
                        continue;
                    }
                    if slot
                        .connection
                        .datagrams()
                        .send(payload.clone(), true)
                        .is_ok()
                    {
                        self.counters.sent += 1;
                    }
                    mark(&mut self.dirty, slot, index);
                }
            }
            self.drive_dirty(now);
            self.flush();
            if now >= next_stat {
                next_stat += Duration::from_secs(1);
                let open = self
                    .slots
                    .iter()
                    .flatten()
                    .filter(|s| s.established)
                    .count();
                common::print_stat(
                    self.counters.sent,
                    open,
                    self.counters.lost,
                    0,
                    self.counters.inputs,
                );
                eprintln!(
                    "loop: ticks {ticks} wake-ups {iterations} timer heap {}",
                    self.timers.len()
                );
                if self.counters.send_failed > 0 {
                    eprintln!("send failures so far: {}", self.counters.send_failed);
                }
            }
            self.compact_timers();
            let wake = match self.timers.peek() {
                Some(Reverse((t, _))) => next_tick.min(*t),
                None => next_tick,
            };
            let earliest = (now + self.coalesce).min(wake);
            let pause = earliest.saturating_duration_since(Instant::now());
            if !pause.is_zero() {
                std::thread::sleep(pause);
            }
            wait_readable(&self.socket, wake.saturating_duration_since(Instant::now()));
        }
    }

    /// Read until the socket is empty, feeding each datagram to the endpoint.
    fn receive(&mut self, now: Instant, recv_buf: &mut [u8], metas: &mut [RecvMeta]) {
        loop {
            let mut iovs: Vec<IoSliceMut<'_>> = recv_buf
                .chunks_mut(RECV_CHUNK)
                .map(IoSliceMut::new)
                .collect();
            let count = match self.udp.recv((&self.socket).into(), &mut iovs, metas) {
                Ok(count) => count,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
                Err(e) => {
                    eprintln!("recv: {e}");
                    return;
                }
            };
            for (meta, buf) in metas.iter().zip(iovs.iter()).take(count) {
                let stride = meta.stride.max(1);
                for datagram in buf[..meta.len].chunks(stride) {
                    let ecn = meta.ecn.and_then(|e| EcnCodepoint::from_bits(e as u8));
                    self.handle_datagram(now, meta.addr, meta.dst_ip, ecn, datagram);
                }
            }
        }
    }

    fn handle_datagram(
        &mut self,
        now: Instant,
        remote: SocketAddr,
        local_ip: Option<IpAddr>,
        ecn: Option<EcnCodepoint>,
        datagram: &[u8],
    ) {
        self.scratch.clear();
        let event = self.endpoint.handle(
            now,
            remote,
            local_ip,
            ecn,
            BytesMut::from(datagram),
            &mut self.scratch,
        );
        match event {
            Some(DatagramEvent::ConnectionEvent(handle, event)) => {
                if let Some(Some(slot)) = self.slots.get_mut(handle.0) {
                    slot.connection.handle_event(event);
                    mark(&mut self.dirty, slot, handle.0);
                }
            }
            Some(DatagramEvent::NewConnection(incoming)) => {
                self.scratch.clear();
                match self.endpoint.accept(incoming, now, &mut self.scratch, None) {
                    Ok((handle, connection)) => self.insert(handle, connection),
                    Err(error) => {
                        eprintln!("accept: {}", error.cause);
                        if let Some(transmit) = error.response {
                            self.send_now(&transmit);
                        }
                    }
                }
            }
            Some(DatagramEvent::Response(transmit)) => self.send_now(&transmit),
            None => {}
        }
    }

    fn insert(&mut self, handle: ConnectionHandle, connection: Connection) {
        if self.slots.len() <= handle.0 {
            self.slots.resize_with(handle.0 + 1, || None);
        }
        self.slots[handle.0] = Some(Slot {
            connection,
            timer: None,
            dirty: true,
            established: false,
        });
        self.dirty.push(handle.0);
    }

    /// Send an endpoint-generated transmit held in `scratch` right away (rare path).
    fn send_now(&mut self, transmit: &quinn_proto::Transmit) {
        let result = self.udp.send(
            (&self.socket).into(),
            &udp_transmit(transmit, &self.scratch[..transmit.size]),
        );
        if result.is_err() {
            self.counters.send_failed += 1;
        }
    }

    /// Fire every timer that is due (skipping heap entries a newer deadline replaced).
    fn expire_timers(&mut self, now: Instant) {
        while let Some(Reverse((deadline, index))) = self.timers.peek().copied() {
            if deadline > now {
                break;
            }
            self.timers.pop();
            let Some(Some(slot)) = self.slots.get_mut(index) else {
                continue;
            };
            if slot.timer != Some(deadline) {
                continue;
            }
            slot.timer = None;
            slot.connection.handle_timeout(now);
            mark(&mut self.dirty, slot, index);
        }
    }

    /// Rebuild the heap from the live deadlines when stale entries pile up.
    fn compact_timers(&mut self) {
        if self.timers.len() <= 4 * self.slots.len() + 1024 {
            return;
        }
        self.timers = self
            .slots
            .iter()
            .enumerate()
            .filter_map(|(i, s)| s.as_ref()?.timer.map(|t| Reverse((t, i))))
            .collect();
    }

    /// Let every connection that had input, a timeout or new data do its work.
    fn drive_dirty(&mut self, now: Instant) {
        while !self.dirty.is_empty() {
            let mut batch = std::mem::take(&mut self.dirty);
            for index in batch.drain(..) {
                self.drive(index, now);
            }
            if self.dirty.is_empty() {
                self.dirty = batch; // keep the allocation
            }
        }
    }

    /// Poll one connection in the order quinn-proto documents: transmits, timeout,
    /// endpoint events, application events.
    fn drive(&mut self, index: usize, now: Instant) {
        let Some(Some(slot)) = self.slots.get_mut(index) else {
            return;
        };
        slot.dirty = false;
        loop {
            let buf = self.tx.next_buf();
            match slot.connection.poll_transmit(now, self.max_gso, buf) {
                Some(transmit) => self.tx.commit(transmit),
                None => break,
            }
        }
        let deadline = slot.connection.poll_timeout();
        if deadline != slot.timer {
            slot.timer = deadline;
            if let Some(deadline) = deadline {
                self.timers.push(Reverse((deadline, index)));
            }
        }
        let handle = ConnectionHandle(index);
        while let Some(event) = slot.connection.poll_endpoint_events() {
            let drained = event.is_drained();
            if let Some(reply) = self.endpoint.handle_event(handle, event) {
                slot.connection.handle_event(reply);
                mark(&mut self.dirty, slot, index);
            }
            if drained {
                self.slots[index] = None;
                return;
            }
        }
        while let Some(event) = slot.connection.poll() {
            match event {
                Event::Connected => slot.established = true,
                Event::ConnectionLost { reason } => {
                    eprintln!("connection lost: {reason}");
                    slot.established = false;
                    self.counters.lost += 1;
                }
                Event::DatagramReceived => {
                    while slot.connection.datagrams().recv().is_some() {
                        self.counters.inputs += 1;
                    }
                }
                _ => {}
            }
        }
    }

    /// Hand every pending transmit to the kernel.
    fn flush(&mut self) {
        if self.tx.len == 0 {
            return;
        }
        match self.path {
            SendPath::PerTransmit => {
                for (meta, buf) in self.tx.metas.iter().zip(&self.tx.bufs) {
                    let transmit = udp_transmit(meta, &buf[..meta.size]);
                    if self.udp.send((&self.socket).into(), &transmit).is_err() {
                        self.counters.send_failed += 1;
                    }
                }
            }
            SendPath::Sendmmsg => {
                let failed = self.mmsg.send(&self.socket, &self.tx);
                self.counters.send_failed += failed;
            }
        }
        self.tx.clear();
    }
}

fn mark(dirty: &mut Vec<usize>, slot: &mut Slot, index: usize) {
    if !slot.dirty {
        slot.dirty = true;
        dirty.push(index);
    }
}

fn udp_transmit<'a>(meta: &quinn_proto::Transmit, contents: &'a [u8]) -> quinn_udp::Transmit<'a> {
    quinn_udp::Transmit {
        destination: meta.destination,
        ecn: meta
            .ecn
            .and_then(|e| quinn_udp::EcnCodepoint::from_bits(e as u8)),
        contents,
        segment_size: meta.segment_size,
        src_ip: meta.src_ip,
    }
}

/// One pass's transmits: a reusable buffer per transmit plus its metadata.
#[derive(Default)]
struct TxBatch {
    bufs: Vec<Vec<u8>>,
    metas: Vec<quinn_proto::Transmit>,
    len: usize,
}

impl TxBatch {
    /// An empty buffer for the next transmit (reused across passes).
    fn next_buf(&mut self) -> &mut Vec<u8> {
        if self.bufs.len() == self.len {
            self.bufs.push(Vec::with_capacity(1500));
        }
        let buf = &mut self.bufs[self.len];
        buf.clear();
        buf
    }

    fn commit(&mut self, transmit: quinn_proto::Transmit) {
        self.metas.push(transmit);
        self.len += 1;
    }

    fn clear(&mut self) {
        self.metas.clear();
        self.len = 0;
    }
}

/// Reusable arrays for `sendmmsg`: one header, iovec, address and control buffer per message.
#[derive(Default)]
struct MmsgScratch {
    headers: Vec<libc::mmsghdr>,
    iovecs: Vec<libc::iovec>,
    names: Vec<libc::sockaddr_in>,
    controls: Vec<[u64; 8]>,
}

impl MmsgScratch {
    /// Send every transmit in `batch`; returns how many the kernel did not take.
    fn send(&mut self, socket: &UdpSocket, batch: &TxBatch) -> u64 {
        let count = batch.len;
        // SAFETY (all of this fn): plain C structs, zero is a valid initial value; the
        // pointers stored in the headers point into these vectors and `batch`, which are
        // neither moved nor resized until sendmmsg has returned.
        self.headers
            .resize_with(count, || unsafe { std::mem::zeroed() });
        self.iovecs
            .resize_with(count, || unsafe { std::mem::zeroed() });
        self.names
            .resize_with(count, || unsafe { std::mem::zeroed() });
        self.controls.resize(count, [0; 8]);
        for i in 0..count {
            let meta = &batch.metas[i];
            let SocketAddr::V4(destination) = meta.destination else {
                eprintln!("sendmmsg path is IPv4-only");
                return (count - i) as u64;
            };
            self.names[i] = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: destination.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(destination.ip().octets()),
                },
                sin_zero: [0; 8],
            };
            self.iovecs[i] = libc::iovec {
                iov_base: batch.bufs[i].as_ptr() as *mut libc::c_void,
                iov_len: meta.size,
            };
            let header = &mut self.headers[i].msg_hdr;
            header.msg_name = &mut self.names[i] as *mut _ as *mut libc::c_void;
            header.msg_namelen = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
            header.msg_iov = &mut self.iovecs[i];
            header.msg_iovlen = 1;
            header.msg_control = self.controls[i].as_mut_ptr() as *mut libc::c_void;
            header.msg_controllen = std::mem::size_of::<[u64; 8]>() as _;
            let mut used = 0;
            unsafe {
                let mut cmsg = libc::CMSG_FIRSTHDR(header);
                if let Some(ecn) = meta.ecn {
                    (*cmsg).cmsg_level = libc::IPPROTO_IP;
                    (*cmsg).cmsg_type = libc::IP_TOS;
                    (*cmsg).cmsg_len = libc::CMSG_LEN(4) as _;
                    std::ptr::write_unaligned(
                        libc::CMSG_DATA(cmsg) as *mut libc::c_int,
                        ecn as u8 as libc::c_int,
                    );
                    used += libc::CMSG_SPACE(4) as usize;
                    cmsg = libc::CMSG_NXTHDR(header, cmsg);
                }
                if let Some(segment) = meta.segment_size.filter(|s| *s < meta.size) {
                    (*cmsg).cmsg_level = libc::SOL_UDP;
                    (*cmsg).cmsg_type = UDP_SEGMENT;
                    (*cmsg).cmsg_len = libc::CMSG_LEN(2) as _;
                    std::ptr::write_unaligned(libc::CMSG_DATA(cmsg) as *mut u16, segment as u16);
                    used += libc::CMSG_SPACE(2) as usize;
                }
            }
            if used == 0 {
                header.msg_control = std::ptr::null_mut();
            }
            header.msg_controllen = used as _;
        }
        let fd = socket.as_raw_fd();
        let mut done = 0;
        let mut failed = 0;
        while done < count {
            let chunk = (count - done).min(MMSG_MAX);
            let sent = unsafe {
                libc::sendmmsg(
                    fd,
                    self.headers[done..].as_mut_ptr(),
                    chunk as libc::c_uint,
                    0,
                )
            };
            if sent >= 0 {
                done += sent as usize;
                continue;
            }
            let error = std::io::Error::last_os_error();
            match error.kind() {
                std::io::ErrorKind::Interrupted => {}
                std::io::ErrorKind::WouldBlock => return failed + (count - done) as u64,
                _ => {
                    // The first message failed; drop it (as sendmsg would) and go on.
                    eprintln!("sendmmsg: {error}");
                    done += 1;
                    failed += 1;
                }
            }
        }
        failed
    }
}

/// Block until the socket is readable or `timeout` passes (µs precision, via ppoll).
fn wait_readable(socket: &UdpSocket, timeout: Duration) {
    let mut fd = libc::pollfd {
        fd: socket.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    let spec = libc::timespec {
        tv_sec: timeout.as_secs() as libc::time_t,
        tv_nsec: timeout.subsec_nanos() as libc::c_long,
    };
    // SAFETY: one valid pollfd, a valid timespec, no signal mask.
    unsafe {
        libc::ppoll(&mut fd, 1, &spec, std::ptr::null());
    }
}
