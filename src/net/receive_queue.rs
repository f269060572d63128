//! How many bytes wait in a UDP socket's receive buffer: the packets the
//! kernel took for the server that it has not read yet. A node short of CPU
//! falls behind here first, before it sends anything late: its players'
//! inputs wait in this queue.
//!
//! Read from `/proc/self/net/udp` and `udp6` (the `rx_queue` column of the
//! socket's line, found by its inode); elsewhere than Linux it is unknown.

use std::net::UdpSocket;

/// A socket whose receive queue can be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReceiveQueue {
    inode: u64,
}

impl ReceiveQueue {
    /// The queue of `socket`; `None` where the platform does not say.
    pub fn of(socket: &UdpSocket) -> Option<Self> {
        #[cfg(target_os = "linux")]
        {
            use std::os::fd::AsRawFd;
            let link = std::fs::read_link(format!("/proc/self/fd/{}", socket.as_raw_fd())).ok()?;
            let inode = link
                .to_str()?
                .strip_prefix("socket:[")?
                .strip_suffix(']')?
                .parse()
                .ok()?;
            Some(Self { inode })
        }
        #[cfg(not(target_os = "linux"))]
        {
            let _ = socket;
            None
        }
    }

    /// Bytes waiting to be read now (the kernel's accounting, overhead
    /// included); `None` when the socket is not listed (closed).
    pub fn bytes(&self) -> Option<u64> {
        ["/proc/self/net/udp", "/proc/self/net/udp6"]
            .iter()
            .filter_map(|path| std::fs::read_to_string(path).ok())
            .find_map(|table| queued_bytes(&table, self.inode))
    }
}

/// The `rx_queue` of the line for `inode` in a `/proc/net/udp` table.
fn queued_bytes(table: &str, inode: u64) -> Option<u64> {
    table.lines().skip(1).find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.get(9)?.parse::<u64>().ok()? != inode {
            return None;
        }
        let (_, receive) = fields.get(4)?.split_once(':')?;
        u64::from_str_radix(receive, 16).ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_line_of_the_inode_gives_its_receive_queue() {
        let table = "   sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops\n\
             7263: 00000000:CCE8 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 1798265 2 00000000752335fa 0\n\
            10207: 0100007F:9868 00000000:0000 07 00000000:00012A00 00:00000000 00000000     0        0 1798262 2 00000000e78f3037 0\n";
        assert_eq!(queued_bytes(table, 1798262), Some(0x12A00));
        assert_eq!(queued_bytes(table, 1798265), Some(0));
        assert_eq!(queued_bytes(table, 42), None);
        assert_eq!(queued_bytes("garbage\nnot a table at all\n", 42), None);
    }

    /// A real socket: empty, then holding the datagrams sent to it.
    #[cfg(target_os = "linux")]
    #[test]
    fn a_socket_reports_the_datagrams_it_has_not_read() {
        let socket = UdpSocket::bind("127.0.0.1:0").expect("bind");
        let queue = ReceiveQueue::of(&socket).expect("a socket inode on Linux");
        assert_eq!(queue.bytes(), Some(0));
        let sender = UdpSocket::bind("127.0.0.1:0").expect("bind");
        for _ in 0..3 {
            sender
                .send_to(&[7; 100], socket.local_addr().expect("address"))
                .expect("send");
        }
        // Loopback delivers within the send call.
        let queued = queue.bytes().expect("still listed");
        assert!(queued >= 300, "3 datagrams of 100 bytes queued: {queued}");
        drop(socket);
        assert_eq!(queue.bytes(), None, "a closed socket is not listed");
    }
}
