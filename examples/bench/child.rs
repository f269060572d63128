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

/// In the child: exits the process if the step has not finished after
/// `limit` (a hung step must not hang the whole run).
pub fn watchdog(limit: Duration) {
    std::thread::spawn(move || {
        std::thread::sleep(limit);
        eprintln!("step did not finish within {limit:?}; giving up");
        std::process::exit(3);
    });
}
