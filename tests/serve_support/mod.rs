//! A server binary (`tickforge serve`, or a game's own) as a child process
//! of a test: started with a clean environment, ready once its log says
//! so, its log lines kept for failure messages, killed on drop.
#![allow(dead_code, unreachable_pub)]

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// `tickforge serve --config <config> <args>`, up once it accepts players
/// over QUIC.
pub fn tickforge_serve(config: &std::path::Path, args: &[&str]) -> ServeProcess {
    let mut command = Command::new(env!("CARGO_BIN_EXE_tickforge"));
    command
        .args(["serve", "--config"])
        .arg(config)
        .args(args)
        .env("RUST_LOG", "info");
    ServeProcess::start(command, Log::Stderr, "accepting players over QUIC")
}

/// An upper bound for anything awaited of the child.
pub const WAIT: Duration = Duration::from_secs(30);

/// Which of the child's streams carries the lines waited for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Log {
    /// Standard output (a game's own `println!`s).
    Stdout,
    /// Standard error (tickforge's tracing log).
    Stderr,
}

/// A running server process.
pub struct ServeProcess {
    child: Child,
    lines: mpsc::Receiver<String>,
    /// Every line read so far.
    pub seen: Vec<String>,
}

impl ServeProcess {
    /// Spawns `command` without the store and secret variables of the
    /// test's own environment, and waits for a line of `log` containing
    /// `ready`.
    pub fn start(mut command: Command, log: Log, ready: &str) -> ServeProcess {
        command
            .env_remove("REDIS_URL")
            .env_remove("STORAGE_BACKEND")
            .env_remove("TICKFORGE_SECRET")
            .env("NO_COLOR", "1");
        match log {
            Log::Stdout => command.stdout(Stdio::piped()).stderr(Stdio::null()),
            Log::Stderr => command.stdout(Stdio::null()).stderr(Stdio::piped()),
        };
        let mut child = command.spawn().expect("spawn the server");
        let stream: Box<dyn Read + Send> = match log {
            Log::Stdout => Box::new(child.stdout.take().expect("piped stdout")),
            Log::Stderr => Box::new(child.stderr.take().expect("piped stderr")),
        };
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stream).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut process = ServeProcess {
            child,
            lines,
            seen: Vec::new(),
        };
        process.wait_for_line(ready);
        process
    }

    /// Waits for a line containing `needle` (among those not read yet) and
    /// returns it.
    pub fn wait_for_line(&mut self, needle: &str) -> String {
        loop {
            match self.lines.recv_timeout(WAIT) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if line.contains(needle) {
                        return line;
                    }
                }
                Err(_) => panic!(
                    "no line with {needle:?} from the server; its log so far:\n{}",
                    self.seen.join("\n")
                ),
            }
        }
    }

    /// The child's process id (for signals).
    pub fn pid(&self) -> i32 {
        i32::try_from(self.child.id()).expect("a pid")
    }

    /// The log read so far, with the lines that arrived since.
    pub fn log(&mut self) -> String {
        self.seen.extend(self.lines.try_iter());
        self.seen.join("\n")
    }

    /// Sends SIGTERM and waits (bounded) for the process to exit.
    pub fn terminate(&mut self) -> ExitStatus {
        let pid = i32::try_from(self.child.id()).expect("a pid");
        // SAFETY: kill(2) on our own child's pid with a valid signal number.
        let sent = unsafe { libc::kill(pid, libc::SIGTERM) };
        assert_eq!(sent, 0, "SIGTERM not delivered");
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait for the server") {
                self.seen.extend(self.lines.try_iter());
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "the server still runs {WAIT:?} after SIGTERM; log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGKILL, and reap.
    pub fn kill(mut self) {
        self.child.kill().expect("SIGKILL the server");
        self.child.wait().expect("reap the server");
    }
}

impl Drop for ServeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
