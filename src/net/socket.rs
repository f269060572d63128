//! Binding the UDP sockets QUIC runs on, with kernel buffers sized for many
//! connections.
//!
//! A server with hundreds of clients receives their packets in bursts (each
//! tick's states draw inputs and ACKs back at once); with the kernel's
//! default receive buffer (about 208 KiB on Linux) a burst that arrives
//! while the endpoint is busy overflows it and the packets are dropped:
//! inputs are repeated, but a dropped handshake packet costs a retransmit
//! timer (a second or more), enough to fail a join under load. Too large a
//! buffer hurts the other way: a node short of CPU then queues its
//! players' inputs for seconds (8 MiB held about 7 MB, three quarters of
//! a second of a 400-player node's packets) and, after shedding, keeps
//! looking overloaded while it works through that backlog, so it sheds
//! again. The server asks for 512 KiB (Linux grants twice that): a join
//! storm of 800 clients failed no handshake, and an overloaded node's
//! admitted players saw a p99 of 42–76 ms in four runs against 38–688 ms
//! with 4 MiB. Linux caps the sizes asked for at `net.core.rmem_max` /
//! `wmem_max`; a socket that got less than it asked for says so in a
//! warning.

use std::io;
use std::net::{SocketAddr, UdpSocket};

use socket2::{Domain, Protocol, Socket, Type};

/// Buffer size a QUIC endpoint asks for by default, each way, in bytes.
pub const DEFAULT_SOCKET_BUFFER_BYTES: usize = 512 << 10;

/// The buffer sizes a socket got from the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Buffers {
    /// Receive buffer, as the kernel reports it.
    pub recv: usize,
    /// Send buffer, as the kernel reports it.
    pub send: usize,
}

/// Binds a UDP socket on `addr` with receive and send buffers of
/// `buffer_bytes` each (0 keeps the kernel's defaults). Asking for more
/// than the kernel allows is not an error: the socket gets the cap, and a
/// warning names the sysctl to raise. A wildcard IPv6 address takes IPv4
/// too where the platform allows.
pub fn bind_udp(addr: SocketAddr, buffer_bytes: usize) -> io::Result<(UdpSocket, Buffers)> {
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() && addr.ip().is_unspecified() {
        // Serve both families where the platform allows, as Linux does by default.
        let _ = socket.set_only_v6(false);
    }
    if buffer_bytes > 0 {
        // Either may be refused outright on some systems; the sizes read back tell.
        let _ = socket.set_recv_buffer_size(buffer_bytes);
        let _ = socket.set_send_buffer_size(buffer_bytes);
    }
    socket.bind(&addr.into())?;
    let buffers = Buffers {
        recv: socket.recv_buffer_size()?,
        send: socket.send_buffer_size()?,
    };
    // Linux reports twice the size asked for (the other half is its bookkeeping).
    if buffer_bytes > 0 && buffers.recv.min(buffers.send) < buffer_bytes {
        tracing::warn!(
            asked = buffer_bytes,
            recv = buffers.recv,
            send = buffers.send,
            "the UDP socket got smaller buffers than asked for; raise the sysctls \
             net.core.rmem_max and net.core.wmem_max to give it more"
        );
    }
    Ok((socket.into(), buffers))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Linux grants twice the size asked for, up to twice its cap.
    #[cfg(target_os = "linux")]
    #[test]
    fn buffers_are_what_was_asked_within_the_kernel_cap() {
        let cap = |name: &str| -> usize {
            std::fs::read_to_string(format!("/proc/sys/net/core/{name}"))
                .expect("the sysctl is readable")
                .trim()
                .parse()
                .expect("the sysctl is a number")
        };
        let asked = 256 << 10;
        let (socket, buffers) = bind_udp("127.0.0.1:0".parse().unwrap(), asked).unwrap();
        assert_ne!(socket.local_addr().unwrap().port(), 0);
        assert_eq!(buffers.recv, 2 * asked.min(cap("rmem_max")), "{buffers:?}");
        assert_eq!(buffers.send, 2 * asked.min(cap("wmem_max")), "{buffers:?}");
    }

    #[test]
    fn a_taken_address_is_an_error() {
        let (socket, _) = bind_udp("127.0.0.1:0".parse().unwrap(), 0).unwrap();
        let taken = socket.local_addr().unwrap();
        assert!(bind_udp(taken, 0).is_err());
    }
}
