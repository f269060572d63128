//! Steps that run in a child process of their own (engine and network
//! loads): a fresh process per step gives clean CPU and RSS figures and
//! leaves no tasks or connections behind for the next step.
//!
//! The parent runs `bench --child <kind> --spec <json>`; the child prints
//! progress on stderr (passed through) and its result as one
//! `STEP-RESULT <json>` line on stdout.

use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};
use serde::Serialize;
use serde::de::DeserializeOwned;

const RESULT_PREFIX: &str = "STEP-RESULT ";

/// Runs one step of `kind` in a child process and returns its result.
pub async fn run<T: DeserializeOwned>(kind: &str, spec: &impl Serialize) -> anyhow::Result<T> {
    let exe = std::env::current_exe().context("finding the bench executable")?;
    let spec = serde_json::to_string(spec).context("encoding the step")?;
    let kind = kind.to_owned();
    let output = tokio::task::spawn_blocking(move || {
        Command::new(exe)
            .args(["--child", &kind, "--spec", &spec])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .output()
    })
    .await
    .context("waiting for the step process")?
    .context("starting the step process")?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let Some(line) = stdout.lines().find_map(|l| l.strip_prefix(RESULT_PREFIX)) else {
        bail!(
            "the step process ended with {} and no result",
            output.status
        );
    };
    serde_json::from_str(line).context("decoding the step result")
}

/// In the child: prints the result line for the parent.
pub fn emit(result: &impl Serialize) -> anyhow::Result<()> {
    let line = serde_json::to_string(result).context("encoding the step result")?;
    println!("{RESULT_PREFIX}{line}");
    Ok(())
}

/// In the child: a noisy neighbour. Spins on its CPU until the parent
/// closes its stdin (or kills it), so whatever shares that CPU gets only its
/// fair share of it.
pub fn spin() -> anyhow::Result<()> {
    watchdog(Duration::from_secs(3600));
    std::thread::spawn(|| {
        let mut sink = Vec::new();
        let _ = std::io::Read::read_to_end(&mut std::io::stdin(), &mut sink);
        std::process::exit(0);
    });
    let mut x = 0u64;
    loop {
        x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
    }
}

/// In the child: exits the process if the step has not finished after
/// `limit` (a hung step must not hang the whole run).
pub fn watchdog(limit: Duration) {
    std::thread::spawn(move || {
        std::thread::sleep(limit);
        eprintln!("step did not finish within {limit:?}; giving up");
        std::process::exit(3);
    });
}

/// A step process that talks in lines while it runs: the parent reads its
/// stdout line by line and may write lines to its stdin. Killed on drop.
pub struct LineChild {
    child: std::process::Child,
    stdin: Option<std::process::ChildStdin>,
    lines: tokio::sync::mpsc::UnboundedReceiver<String>,
    /// The process id (for its CPU time in `/proc`).
    pub pid: u32,
}

impl LineChild {
    /// Starts `bench --child <kind> --spec <json>`, on `cpus` when given,
    /// at priority `nice` when not 0.
    pub fn spawn(
        kind: &str,
        spec: &impl Serialize,
        cpus: Option<&[usize]>,
        nice: i32,
    ) -> anyhow::Result<Self> {
        let exe = std::env::current_exe().context("finding the bench executable")?;
        let spec = serde_json::to_string(spec).context("encoding the step")?;
        let mut command = Command::new(exe);
        command
            .args(["--child", kind, "--spec", &spec])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        if let Some(cpus) = cpus {
            crate::sys::pin_command(&mut command, cpus);
        }
        if nice != 0 {
            crate::sys::nice_command(&mut command, nice);
        }
        let mut child = command
            .spawn()
            .with_context(|| format!("starting the {kind} process"))?;
        let stdout = child.stdout.take().context("the child's stdout")?;
        let (tx, lines) = tokio::sync::mpsc::unbounded_channel();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Ok(Self {
            pid: child.id(),
            stdin: child.stdin.take(),
            child,
            lines,
        })
    }

    /// The rest of the next line that starts with `prefix` (other lines
    /// are skipped), waiting at most `limit`.
    pub async fn expect(&mut self, prefix: &str, limit: Duration) -> anyhow::Result<String> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let line = tokio::time::timeout_at(deadline, self.lines.recv())
                .await
                .map_err(|_| anyhow::anyhow!("no {prefix:?} line within {limit:?}"))?;
            let Some(line) = line else {
                bail!(
                    "the step process ended ({}) before a {prefix:?} line",
                    self.status()
                );
            };
            if let Some(rest) = line.strip_prefix(prefix) {
                return Ok(rest.trim().to_owned());
            }
        }
    }

    /// Writes one line to the child's stdin.
    pub fn send(&mut self, line: &str) -> anyhow::Result<()> {
        use std::io::Write;
        let stdin = self.stdin.as_mut().context("the child's stdin is closed")?;
        writeln!(stdin, "{line}").context("writing to the step process")?;
        stdin.flush().context("writing to the step process")
    }

    /// Closes the child's stdin (the server child stops on it) and waits
    /// up to `limit` for it to exit; kills it after that.
    pub async fn finish(mut self, limit: Duration) {
        self.stdin = None;
        let deadline = std::time::Instant::now() + limit;
        while std::time::Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn status(&mut self) -> String {
        match self.child.try_wait() {
            Ok(Some(status)) => status.to_string(),
            _ => "still running".to_owned(),
        }
    }
}

impl Drop for LineChild {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
