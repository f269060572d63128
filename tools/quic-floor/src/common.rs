//! Pieces shared by servers, clients and the runner.

use std::net::{SocketAddr, UdpSocket};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use quinn_proto::{ServerConfig, TransportConfig};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// Datagram payload size, as in issue #12.
pub const PAYLOAD: usize = 60;
/// Input datagram size (`--inputs`): about what a tickforge `Move` input is on the wire.
pub const INPUT_PAYLOAD: usize = 32;
/// Send period: 30 Hz.
pub const TICK: Duration = Duration::from_micros(33_333);
/// Socket buffers for both servers (same for both so only the driver differs).
const SOCKET_BUFFER: usize = 8 << 20;

/// Which server to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// quinn::Endpoint, one `send_datagram` per connection per tick from one task.
    Stock,
    /// One loop owning a quinn_proto::Endpoint; quinn-udp recv (recvmmsg) and send (sendmsg, GSO).
    Loop,
    /// Same loop, every tick's transmits flushed with libc::sendmmsg across peers.
    LoopMmsg,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::Stock => "stock",
            Mode::Loop => "loop",
            Mode::LoopMmsg => "loop-mmsg",
        }
    }
}

/// The server's self-signed certificate and key.
pub struct Identity {
    cert: CertificateDer<'static>,
    key: PrivatePkcs8KeyDer<'static>,
}

impl Identity {
    pub fn generate() -> anyhow::Result<Self> {
        let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_string()])
            .context("generating the self-signed certificate")?;
        Ok(Self {
            cert: certified.cert.der().clone(),
            key: PrivatePkcs8KeyDer::from(certified.signing_key.serialize_der()),
        })
    }

    pub fn write_cert(&self, path: &Path) -> anyhow::Result<()> {
        std::fs::write(path, self.cert.as_ref())
            .with_context(|| format!("writing the certificate to {}", path.display()))
    }

    /// Server config shared by both modes: default transport, datagrams on (quinn's default).
    /// `ack_every` > 0 asks clients (ACK_FREQUENCY extension) to ACK only every that many
    /// ack-eliciting packets, or after 200 ms.
    pub fn server_config(&self, ack_every: u32) -> anyhow::Result<ServerConfig> {
        let mut config = ServerConfig::with_single_cert(
            vec![self.cert.clone()],
            PrivateKeyDer::Pkcs8(self.key.clone_key()),
        )
        .context("building the server TLS config")?;
        let mut transport = TransportConfig::default();
        if ack_every > 0 {
            let mut ack = quinn_proto::AckFrequencyConfig::default();
            ack.ack_eliciting_threshold(ack_every.into())
                .max_ack_delay(Some(Duration::from_millis(200)));
            transport.ack_frequency_config(Some(ack));
        }
        config.transport_config(Arc::new(transport));
        Ok(config)
    }
}

/// A non-blocking UDP socket on 127.0.0.1:port with large buffers.
pub fn bind(port: u16) -> anyhow::Result<UdpSocket> {
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let socket = UdpSocket::bind(addr).with_context(|| format!("binding {addr}"))?;
    socket.set_nonblocking(true)?;
    let state = quinn_udp::UdpSocketState::new((&socket).into())?;
    state.set_send_buffer_size((&socket).into(), SOCKET_BUFFER)?;
    state.set_recv_buffer_size((&socket).into(), SOCKET_BUFFER)?;
    Ok(socket)
}

/// A payload of `PAYLOAD` bytes.
pub fn payload() -> bytes::Bytes {
    bytes::Bytes::from(vec![0xA5u8; PAYLOAD])
}

/// The phase of client `index`'s input schedule within a tick: spread evenly over the
/// tick by the golden ratio, so neighbours never send together (a fixed-schedule client
/// population with independent phases, as in tickforge's `network-split` load).
pub fn input_phase(index: usize) -> Duration {
    const GOLDEN: f64 = 0.618_033_988_749_895;
    TICK.mul_f64((index as f64 * GOLDEN).fract())
}

/// Raise the soft open-file limit to the hard one (thousands of client sockets).
pub fn raise_fd_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid pointer to an rlimit.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}

/// Prints a status line `stat <count> <connections> <lost> <late> <inputs>` on stdout (the
/// runner parses it); `late` counts gaps of more than 50 ms between datagrams on one
/// connection; `inputs` is the datagrams the server received (0 from the clients).
pub fn print_stat(count: u64, connections: usize, lost: u64, late: u64, inputs: u64) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "stat {count} {connections} {lost} {late} {inputs}");
    let _ = out.flush();
}
