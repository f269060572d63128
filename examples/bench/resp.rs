//! A minimal raw Redis client for the append ceiling: RESP2 written by
//! hand into one buffer, sent over a plain tokio `TcpStream`, replies read
//! back with a small parser. No reconnects, no pooling, no TLS: the least
//! work a client can do to send a pipeline and read its answers.

use std::io::Write as _;

use anyhow::{Context, anyhow, bail};
use tokio::net::TcpStream;

/// One RESP2 reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    Simple(String),
    Error(String),
    Int(i64),
    Bulk(Option<Vec<u8>>),
    Array(Option<Vec<Reply>>),
}

impl Reply {
    /// The reply as text (simple or bulk string).
    pub fn text(&self) -> anyhow::Result<String> {
        match self {
            Reply::Simple(s) => Ok(s.clone()),
            Reply::Bulk(Some(b)) => Ok(String::from_utf8_lossy(b).into_owned()),
            Reply::Error(e) => bail!("Redis error: {e}"),
            other => bail!("expected a string, got {other:?}"),
        }
    }
}

/// Appends commands to a pipeline buffer.
#[derive(Debug, Default)]
pub struct Pipeline {
    pub buf: Vec<u8>,
    pub commands: usize,
}

impl Pipeline {
    /// Starts a command of `args` arguments (the command name included).
    pub fn command(&mut self, args: usize) {
        self.commands += 1;
        let _ = write!(self.buf, "*{args}\r\n");
    }

    /// One bulk-string argument.
    pub fn arg(&mut self, bytes: &[u8]) {
        let _ = write!(self.buf, "${}\r\n", bytes.len());
        self.buf.extend_from_slice(bytes);
        self.buf.extend_from_slice(b"\r\n");
    }

    /// One integer argument, formatted as Redis expects it.
    pub fn int(&mut self, n: u64) {
        let mut digits = itoa(n);
        let _ = write!(self.buf, "${}\r\n", digits.len());
        self.buf.append(&mut digits);
        self.buf.extend_from_slice(b"\r\n");
    }

    pub fn clear(&mut self) {
        self.buf.clear();
        self.commands = 0;
    }
}

fn itoa(mut n: u64) -> Vec<u8> {
    let mut out = [0u8; 20];
    let mut i = out.len();
    loop {
        i -= 1;
        out[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out[i..].to_vec()
}

/// One connection.
pub struct Raw {
    stream: TcpStream,
    buf: Vec<u8>,
    pos: usize,
}

impl Raw {
    /// Connects to `redis://[:password@]host:port[/db]` (AUTH and SELECT
    /// are sent when given). `rediss://` is refused: no TLS here.
    pub async fn connect(url: &str) -> anyhow::Result<Self> {
        let rest = url
            .strip_prefix("redis://")
            .ok_or_else(|| anyhow!("the raw client speaks plain redis:// only"))?;
        let (auth, rest) = match rest.rsplit_once('@') {
            Some((auth, rest)) => (Some(auth), rest),
            None => (None, rest),
        };
        let (host, db) = match rest.split_once('/') {
            Some((host, db)) => (host, db),
            None => (rest, ""),
        };
        let host = if host.contains(':') {
            host.to_owned()
        } else {
            format!("{host}:6379")
        };
        let stream = TcpStream::connect(&host)
            .await
            .with_context(|| format!("connecting to {host}"))?;
        stream.set_nodelay(true).context("TCP_NODELAY")?;
        let mut raw = Self {
            stream,
            buf: Vec::with_capacity(64 * 1024),
            pos: 0,
        };
        if let Some(auth) = auth {
            let (user, password) = auth.split_once(':').unwrap_or(("", auth));
            let mut p = Pipeline::default();
            if user.is_empty() {
                p.command(2);
                p.arg(b"AUTH");
                p.arg(password.as_bytes());
            } else {
                p.command(3);
                p.arg(b"AUTH");
                p.arg(user.as_bytes());
                p.arg(password.as_bytes());
            }
            raw.call(&p).await?.text()?;
        }
        if !db.is_empty() && db != "0" {
            let mut p = Pipeline::default();
            p.command(2);
            p.arg(b"SELECT");
            p.arg(db.as_bytes());
            raw.call(&p).await?.text()?;
        }
        Ok(raw)
    }

    /// Sends one command and reads its reply.
    pub async fn call(&mut self, pipeline: &Pipeline) -> anyhow::Result<Reply> {
        self.send(&pipeline.buf).await?;
        self.read_reply().await
    }

    /// Writes the whole buffer.
    pub async fn send(&mut self, mut bytes: &[u8]) -> anyhow::Result<()> {
        while !bytes.is_empty() {
            self.stream.writable().await.context("waiting to write")?;
            match self.stream.try_write(bytes) {
                Ok(0) => bail!("Redis closed the connection"),
                Ok(n) => bytes = &bytes[n..],
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e).context("writing to Redis"),
            }
        }
        Ok(())
    }

    /// Reads the next reply.
    pub async fn read_reply(&mut self) -> anyhow::Result<Reply> {
        loop {
            if let Some((reply, used)) = parse(&self.buf[self.pos..])? {
                self.pos += used;
                if self.pos == self.buf.len() {
                    self.buf.clear();
                    self.pos = 0;
                }
                return Ok(reply);
            }
            self.fill().await?;
        }
    }

    async fn fill(&mut self) -> anyhow::Result<()> {
        if self.pos > 0 {
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
        let len = self.buf.len();
        self.buf.resize(len + 64 * 1024, 0);
        loop {
            self.stream.readable().await.context("waiting to read")?;
            match self.stream.try_read(&mut self.buf[len..]) {
                Ok(0) => {
                    self.buf.truncate(len);
                    bail!("Redis closed the connection");
                }
                Ok(n) => {
                    self.buf.truncate(len + n);
                    return Ok(());
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => {
                    self.buf.truncate(len);
                    return Err(e).context("reading from Redis");
                }
            }
        }
    }
}

/// Parses one reply from the start of `bytes`: `None` when incomplete.
fn parse(bytes: &[u8]) -> anyhow::Result<Option<(Reply, usize)>> {
    let Some(end) = bytes.windows(2).position(|w| w == b"\r\n") else {
        return Ok(None);
    };
    let Some((&kind, line)) = bytes[..end].split_first() else {
        bail!("empty RESP line");
    };
    let line_str = std::str::from_utf8(line).context("RESP header is not UTF-8")?;
    let after = end + 2;
    let number = || -> anyhow::Result<i64> {
        line_str
            .parse()
            .with_context(|| format!("bad RESP number {line_str:?}"))
    };
    Ok(match kind {
        b'+' => Some((Reply::Simple(line_str.to_owned()), after)),
        b'-' => Some((Reply::Error(line_str.to_owned()), after)),
        b':' => Some((Reply::Int(number()?), after)),
        b'$' => {
            let len = number()?;
            if len < 0 {
                return Ok(Some((Reply::Bulk(None), after)));
            }
            let len = len as usize;
            if bytes.len() < after + len + 2 {
                return Ok(None);
            }
            Some((
                Reply::Bulk(Some(bytes[after..after + len].to_vec())),
                after + len + 2,
            ))
        }
        b'*' => {
            let count = number()?;
            if count < 0 {
                return Ok(Some((Reply::Array(None), after)));
            }
            let mut items = Vec::with_capacity(count as usize);
            let mut at = after;
            for _ in 0..count {
                match parse(&bytes[at..])? {
                    Some((item, used)) => {
                        items.push(item);
                        at += used;
                    }
                    None => return Ok(None),
                }
            }
            Some((Reply::Array(Some(items)), at))
        }
        other => bail!("unknown RESP type byte {other:#x}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_nested_replies() {
        let (reply, used) = parse(b"*3\r\n:1\r\n$3\r\nabc\r\n+OK\r\n").unwrap().unwrap();
        assert_eq!(used, 22);
        assert_eq!(
            reply,
            Reply::Array(Some(vec![
                Reply::Int(1),
                Reply::Bulk(Some(b"abc".to_vec())),
                Reply::Simple("OK".into())
            ]))
        );
        assert!(parse(b"*2\r\n:1\r\n").unwrap().is_none());
        assert_eq!(itoa(0), b"0");
        assert_eq!(itoa(1234567890), b"1234567890");
    }
}
