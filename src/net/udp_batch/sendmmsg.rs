//! One `sendmmsg(2)` over the pending transmits of a [`SendQueue`]: each
//! message carries its own destination and control messages (the ECN
//! codepoint, the GSO segment size, the source address), as quinn-udp's
//! `sendmsg` path would send it alone. Linux only; the only unsafe code of
//! the batching socket lives here.

use std::io;
use std::mem;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::RawFd;

use socket2::SockAddr;

use super::MAX_BATCH;
use super::queue::{Queued, SendQueue};

/// Room for the control messages of one transmit: the traffic class
/// (`c_int`), the GSO segment size (`u16`) and the source address (the
/// larger `in6_pktinfo`), each padded as `CMSG_SPACE` says.
const CONTROL_LEN: usize = 88;

// SAFETY: CMSG_SPACE only does arithmetic on its argument.
const _: () = assert!(
    unsafe {
        libc::CMSG_SPACE(mem::size_of::<libc::c_int>() as u32)
            + libc::CMSG_SPACE(mem::size_of::<u16>() as u32)
            + libc::CMSG_SPACE(mem::size_of::<libc::in6_pktinfo>() as u32)
    } as usize
        <= CONTROL_LEN
);

/// A control-message buffer aligned for `cmsghdr`.
#[repr(C, align(8))]
struct Control([u8; CONTROL_LEN]);

const _: () = assert!(mem::align_of::<Control>() >= mem::align_of::<libc::cmsghdr>());

/// The arrays one `sendmmsg` call points into, kept between calls so that a
/// flush allocates nothing once they have grown.
#[derive(Default)]
pub(crate) struct Scratch {
    names: Vec<SockAddr>,
    iovecs: Vec<libc::iovec>,
    controls: Vec<Control>,
    headers: Vec<libc::mmsghdr>,
}

// SAFETY: the raw pointers in `iovecs` and `headers` are only meaningful
// during `send_pending`, which rebuilds them from scratch on every call;
// between calls they are dead values and nothing dereferences them.
unsafe impl Send for Scratch {}

impl std::fmt::Debug for Scratch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scratch")
            .field("capacity", &self.headers.capacity())
            .finish()
    }
}

/// Hands the kernel up to [`MAX_BATCH`] of `queue`'s pending transmits in
/// one `sendmmsg` on the non-blocking socket `fd`; returns how many it took
/// (at least one). An error means the first pending transmit was not sent:
/// `WouldBlock` when the socket buffer is full, else the kernel's refusal of
/// that transmit (the caller skips it).
pub(crate) fn send_pending(
    fd: RawFd,
    queue: &SendQueue,
    scratch: &mut Scratch,
) -> io::Result<usize> {
    let batch = &queue.pending()[..queue.pending().len().min(MAX_BATCH)];
    if batch.is_empty() {
        return Ok(0);
    }
    let Scratch {
        names,
        iovecs,
        controls,
        headers,
    } = scratch;
    names.clear();
    iovecs.clear();
    controls.clear();
    headers.clear();
    // First fill the arrays the headers point into, so that none of them
    // reallocates once pointers into it are taken.
    for queued in batch {
        let contents = queue.contents(queued);
        names.push(SockAddr::from(queued.destination));
        iovecs.push(libc::iovec {
            // sendmmsg only reads the buffers; the type is shared with recvmsg.
            iov_base: contents.as_ptr() as *mut libc::c_void,
            iov_len: contents.len(),
        });
        let mut control = Control([0; CONTROL_LEN]);
        let control_len = encode_control(&mut control, queued, contents.len());
        controls.push(control);
        // SAFETY: msghdr is plain data; all-zero is a valid (empty) value.
        let mut header: libc::msghdr = unsafe { mem::zeroed() };
        header.msg_controllen = control_len as _;
        headers.push(libc::mmsghdr {
            msg_hdr: header,
            msg_len: 0,
        });
    }
    for (i, header) in headers.iter_mut().enumerate() {
        let hdr = &mut header.msg_hdr;
        hdr.msg_name = names[i].as_ptr() as *mut libc::c_void;
        hdr.msg_namelen = names[i].len();
        hdr.msg_iov = &mut iovecs[i];
        hdr.msg_iovlen = 1;
        if hdr.msg_controllen > 0 {
            hdr.msg_control = controls[i].0.as_mut_ptr().cast();
        }
    }
    loop {
        // SAFETY: every header points into `names`, `iovecs`, `controls`
        // and the queue's contents, all alive and unmoved until this call
        // returns; `headers.len()` is at most MAX_BATCH (below UIO_MAXIOV).
        let sent =
            unsafe { libc::sendmmsg(fd, headers.as_mut_ptr(), headers.len() as libc::c_uint, 0) };
        if sent > 0 {
            return Ok(sent as usize);
        }
        if sent == 0 {
            // Not documented for a non-empty batch: report it against the
            // first transmit rather than retry it forever.
            return Err(io::Error::other("sendmmsg sent nothing"));
        }
        let error = io::Error::last_os_error();
        if error.kind() != io::ErrorKind::Interrupted {
            return Err(error);
        }
    }
}

/// Writes `queued`'s control messages into `control`; returns their length.
fn encode_control(control: &mut Control, queued: &Queued, len: usize) -> usize {
    let mut writer = ControlWriter {
        buf: &mut control.0,
        len: 0,
    };
    let ecn = queued.ecn.map_or(0, |codepoint| codepoint as libc::c_int);
    if is_ipv4(&queued.destination) {
        writer.push(libc::IPPROTO_IP, libc::IP_TOS, ecn);
    } else {
        writer.push(libc::IPPROTO_IPV6, libc::IPV6_TCLASS, ecn);
    }
    // A segment size as large as the contents is one datagram: some drivers
    // refuse GSO for a single segment, so it is not asked for.
    if let Some(segment) = queued.segment_size.filter(|&segment| segment < len) {
        writer.push(libc::SOL_UDP, libc::UDP_SEGMENT, segment as u16);
    }
    match queued.src_ip {
        Some(IpAddr::V4(ip)) => writer.push(
            libc::IPPROTO_IP,
            libc::IP_PKTINFO,
            libc::in_pktinfo {
                ipi_ifindex: 0,
                ipi_spec_dst: libc::in_addr {
                    s_addr: u32::from_ne_bytes(ip.octets()),
                },
                ipi_addr: libc::in_addr { s_addr: 0 },
            },
        ),
        Some(IpAddr::V6(ip)) => writer.push(
            libc::IPPROTO_IPV6,
            libc::IPV6_PKTINFO,
            libc::in6_pktinfo {
                ipi6_ifindex: 0,
                ipi6_addr: libc::in6_addr {
                    s6_addr: ip.octets(),
                },
            },
        ),
        None => {}
    }
    writer.len
}

/// IPv4, or IPv4 mapped into IPv6 (sent as IPv4 by a dual-stack socket).
fn is_ipv4(destination: &SocketAddr) -> bool {
    match destination.ip() {
        IpAddr::V4(_) => true,
        IpAddr::V6(ip) => ip.to_ipv4_mapped().is_some(),
    }
}

/// Appends control messages to a zeroed, aligned buffer.
struct ControlWriter<'a> {
    buf: &'a mut [u8; CONTROL_LEN],
    len: usize,
}

impl ControlWriter<'_> {
    fn push<T: Copy>(&mut self, level: libc::c_int, kind: libc::c_int, value: T) {
        let size = mem::size_of::<T>() as libc::c_uint;
        // SAFETY: arithmetic only.
        let space = unsafe { libc::CMSG_SPACE(size) } as usize;
        // The constant assertion on CONTROL_LEN covers the three messages
        // encode_control writes at most; this guards the arithmetic anyway.
        if self.len + space > CONTROL_LEN {
            debug_assert!(false, "control messages overflow their buffer");
            return;
        }
        // SAFETY: `self.len` is a multiple of CMSG_SPACE's alignment and the
        // buffer is aligned for cmsghdr, so the header is aligned and the
        // header plus `size` bytes of data lie within the buffer (checked
        // above); the data is written unaligned.
        unsafe {
            let header = self.buf.as_mut_ptr().add(self.len).cast::<libc::cmsghdr>();
            (*header).cmsg_level = level;
            (*header).cmsg_type = kind;
            (*header).cmsg_len = libc::CMSG_LEN(size) as _;
            std::ptr::write_unaligned(libc::CMSG_DATA(header).cast::<T>(), value);
        }
        self.len += space;
    }
}

#[cfg(test)]
mod tests {
    use super::super::queue::QueueBound;
    use super::*;
    use quinn::udp::{EcnCodepoint, Transmit};
    use std::net::UdpSocket;

    /// A real loopback receiver: the kernel is the other half of this
    /// function, and there is no sans-IO way to ask it.
    #[test]
    fn one_call_delivers_several_transmits_to_several_peers() {
        let sender = UdpSocket::bind("127.0.0.1:0").unwrap();
        let receivers: Vec<UdpSocket> = (0..3)
            .map(|_| UdpSocket::bind("127.0.0.1:0").unwrap())
            .collect();
        let mut queue = SendQueue::new(QueueBound {
            transmits: 16,
            bytes: 1 << 16,
        });
        let payloads: [&[u8]; 3] = [b"zero", b"one", b"two"];
        for (receiver, payload) in receivers.iter().zip(payloads) {
            queue.push(&Transmit {
                destination: receiver.local_addr().unwrap(),
                ecn: Some(EcnCodepoint::Ect0),
                contents: payload,
                segment_size: None,
                src_ip: Some("127.0.0.1".parse().unwrap()),
            });
        }
        use std::os::fd::AsRawFd;
        let mut scratch = Scratch::default();
        let sent = send_pending(sender.as_raw_fd(), &queue, &mut scratch).unwrap();
        assert_eq!(sent, 3);
        for (receiver, payload) in receivers.iter().zip(payloads) {
            let mut buf = [0u8; 16];
            let (n, from) = receiver.recv_from(&mut buf).unwrap();
            assert_eq!(&buf[..n], payload);
            assert_eq!(from, sender.local_addr().unwrap());
        }
    }

    #[test]
    fn a_segment_size_below_the_length_asks_for_gso_and_the_rest_do_not() {
        let queued_with = |segment_size| {
            let mut queue = SendQueue::new(QueueBound {
                transmits: 1,
                bytes: 100,
            });
            queue.push(&Transmit {
                destination: "10.0.0.1:1".parse().unwrap(),
                ecn: None,
                contents: &[0; 10],
                segment_size,
                src_ip: None,
            });
            let queued = queue.pending()[0];
            let mut control = Control([0; CONTROL_LEN]);
            encode_control(&mut control, &queued, 10)
        };
        // SAFETY: arithmetic only.
        let space = |n: usize| unsafe { libc::CMSG_SPACE(n as u32) } as usize;
        let tos = space(mem::size_of::<libc::c_int>());
        assert_eq!(queued_with(None), tos);
        assert_eq!(queued_with(Some(10)), tos);
        assert_eq!(queued_with(Some(4)), tos + space(2));
    }
}
