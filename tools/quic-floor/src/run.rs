//! The runner: server pinned to CPU 0, clients pinned to CPU 1, one fresh pair per
//! measurement; server CPU from /proc/<pid>/stat over the window, syscalls from perf.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::common::Mode;

const WARM_UP: Duration = Duration::from_secs(3);
const PERF_SECONDS: u64 = 5;
const SYSCALLS: [&str; 4] = ["sendmsg", "sendmmsg", "recvmsg", "recvmmsg"];

struct Row {
    mode: Mode,
    n: usize,
    connected: usize,
    lost: u64,
    cpu_percent: f64,
    us_per_datagram: f64,
    us_per_conn_second: f64,
    sent_per_s: f64,
    received_per_s: f64,
    /// Datagrams the server received from the clients per second (`--inputs`).
    inputs_per_s: f64,
    /// Gaps > 50 ms between datagrams on one connection, per second, over all connections.
    late_per_s: f64,
    /// Share of the window the server spent runnable but waiting for the CPU.
    server_wait_percent: f64,
    client_cpu_percent: f64,
    syscalls_per_s: [f64; 4],
}

/// What every measurement of one `run` shares.
#[derive(Clone, Copy)]
pub struct Settings {
    /// Seconds of measurement window.
    pub window: u64,
    pub port: u16,
    /// Passed to the server (`--ack-every`).
    pub ack_every: u32,
    /// Passed to the server (`--coalesce-us`).
    pub coalesce_us: u64,
    /// Niceness of both children.
    pub nice: i32,
    /// Passed to the clients (`--inputs`).
    pub inputs: bool,
}

pub fn run(ns: &[usize], modes: &[Mode], repeat: usize, settings: &Settings) -> anyhow::Result<()> {
    let exe = std::env::current_exe()?;
    let mut rows = Vec::new();
    for &n in ns {
        for round in 0..repeat {
            // Interleave modes, reversing the order every other round.
            let mut order = modes.to_vec();
            if round % 2 == 1 {
                order.reverse();
            }
            for mode in order {
                eprintln!(
                    "[run] n={n} mode={} round {}/{repeat}: starting",
                    mode.name(),
                    round + 1
                );
                match measure(&exe, n, mode, settings) {
                    Ok(row) => {
                        eprintln!("[run]   {}", format_row(&row));
                        rows.push(Ok(row));
                    }
                    Err(e) => {
                        eprintln!("[run]   failed: {e:#}");
                        rows.push(Err(format!("| {} | {n} | failed: {e:#} |", mode.name())));
                    }
                }
            }
        }
    }
    println!(
        "ack-every {} (0 = QUIC default), coalesce {} µs, window {} s, nice {}, inputs {}",
        settings.ack_every, settings.coalesce_us, settings.window, settings.nice, settings.inputs
    );
    println!("{}", header());
    for row in &rows {
        match row {
            Ok(row) => println!("{}", format_row(row)),
            Err(line) => println!("{line}"),
        }
    }
    Ok(())
}

fn header() -> String {
    let mut h = String::from(
        "| mode | conns | up | server CPU % | µs/datagram | µs/conn-s | sent/s | of 30 Hz | received/s | inputs/s | late gaps/s | server run-queue wait % | client CPU %",
    );
    for s in SYSCALLS {
        h.push_str(&format!(" | {s}/s"));
    }
    h.push_str(" |\n|---|---|---|---|---|---|---|---|---|---|---|---|---");
    h.push_str(&"|---".repeat(SYSCALLS.len()));
    h.push('|');
    h
}

fn format_row(r: &Row) -> String {
    let mut s = format!(
        "| {} | {} | {}{} | {:.1} | {:.2} | {:.0} | {:.0} | {:.0} % | {:.0} | {:.0} | {:.0} | {:.1} | {:.1}",
        r.mode.name(),
        r.n,
        r.connected,
        if r.lost > 0 {
            format!(" ({} lost)", r.lost)
        } else {
            String::new()
        },
        r.cpu_percent,
        r.us_per_datagram,
        r.us_per_conn_second,
        r.sent_per_s,
        100.0 * r.sent_per_s / (r.n as f64 / crate::common::TICK.as_secs_f64()),
        r.received_per_s,
        r.inputs_per_s,
        r.late_per_s,
        r.server_wait_percent,
        r.client_cpu_percent,
    );
    for v in r.syscalls_per_s {
        s.push_str(&format!(" | {v:.0}"));
    }
    s.push_str(" |");
    s
}

/// The latest `stat` line a child printed, with when it arrived.
#[derive(Clone, Copy, Default)]
struct Stat {
    at: Option<Instant>,
    count: u64,
    connections: usize,
    lost: u64,
    late: u64,
    inputs: u64,
}

/// A pinned child process whose `stat` lines are collected by a reader thread.
struct Pinned {
    child: Child,
    latest: Arc<Mutex<Stat>>,
}

impl Pinned {
    fn spawn(
        cpu: &str,
        nice: i32,
        exe: &std::path::Path,
        args: &[String],
        log: &str,
    ) -> anyhow::Result<Self> {
        let log_file = std::fs::File::create(log).with_context(|| format!("creating {log}"))?;
        let mut child = Command::new("nice")
            .arg("-n")
            .arg(nice.to_string())
            .arg("taskset")
            .arg("-c")
            .arg(cpu)
            .arg(exe)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(log_file)
            .spawn()
            .context("spawning taskset (is util-linux installed?)")?;
        let stdout = child.stdout.take().context("child stdout")?;
        let latest = Arc::new(Mutex::new(Stat::default()));
        let sink = latest.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let fields: Vec<&str> = line.split_whitespace().collect();
                if let ["stat", count, connections, lost, late, inputs] = fields[..] {
                    let (Ok(count), Ok(connections), Ok(lost), Ok(late), Ok(inputs)) = (
                        count.parse(),
                        connections.parse(),
                        lost.parse(),
                        late.parse(),
                        inputs.parse(),
                    ) else {
                        continue;
                    };
                    *sink.lock().expect("not poisoned") = Stat {
                        at: Some(Instant::now()),
                        count,
                        connections,
                        lost,
                        late,
                        inputs,
                    };
                }
            }
        });
        Ok(Self { child, latest })
    }

    fn stat(&self) -> Stat {
        *self.latest.lock().expect("not poisoned")
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn cpu_seconds(&self) -> anyhow::Result<f64> {
        cpu_seconds(self.pid())
    }
}

impl Drop for Pinned {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn measure(
    exe: &std::path::Path,
    n: usize,
    mode: Mode,
    settings: &Settings,
) -> anyhow::Result<Row> {
    let Settings {
        window,
        port,
        ack_every,
        coalesce_us,
        nice,
        inputs,
    } = *settings;
    let window = Duration::from_secs(window);
    let cert = format!("/tmp/quic-floor-{port}.der");
    let server = Pinned::spawn(
        "0",
        nice,
        exe,
        &[
            "server".into(),
            "--mode".into(),
            mode.name().into(),
            "--port".into(),
            port.to_string(),
            "--cert-out".into(),
            cert.clone(),
            "--ack-every".into(),
            ack_every.to_string(),
            "--coalesce-us".into(),
            coalesce_us.to_string(),
        ],
        &format!("/tmp/quic-floor-server-{}-{n}.log", mode.name()),
    )?;
    wait_for(
        || server.stat().at.is_some(),
        Duration::from_secs(10),
        "the server's first stat line",
    )?;
    let mut client_args = vec![
        "clients".into(),
        "--n".into(),
        n.to_string(),
        "--addr".into(),
        format!("127.0.0.1:{port}"),
        "--cert".into(),
        cert,
    ];
    if inputs {
        client_args.push("--inputs".into());
    }
    let clients = Pinned::spawn(
        "1",
        nice,
        exe,
        &client_args,
        &format!("/tmp/quic-floor-clients-{}-{n}.log", mode.name()),
    )?;
    let started = Instant::now();
    wait_for(
        || {
            let s = clients.stat();
            s.connections + s.lost as usize >= n
        },
        Duration::from_secs(90),
        "all client connections",
    )?;
    eprintln!(
        "[run]   {} connections up in {:.1} s; warming up {} s",
        clients.stat().connections,
        started.elapsed().as_secs_f64(),
        WARM_UP.as_secs()
    );
    std::thread::sleep(WARM_UP);

    let (server_cpu0, client_cpu0) = (server.cpu_seconds()?, clients.cpu_seconds()?);
    let server_wait0 = run_queue_wait_seconds(server.pid())?;
    let (sent0, received0, t0) = (server.stat(), clients.stat(), Instant::now());
    eprintln!("[run]   measuring {} s", window.as_secs());
    std::thread::sleep(window);
    let (server_cpu1, client_cpu1) = (server.cpu_seconds()?, clients.cpu_seconds()?);
    let server_wait1 = run_queue_wait_seconds(server.pid())?;
    let (sent1, received1, elapsed) = (server.stat(), clients.stat(), t0.elapsed().as_secs_f64());

    eprintln!("[run]   perf stat {PERF_SECONDS} s");
    let syscalls = perf_syscalls(server.pid())?;

    let rate = |a: Stat, b: Stat| -> f64 {
        match (a.at, b.at) {
            (Some(x), Some(y)) if y > x => (b.count - a.count) as f64 / (y - x).as_secs_f64(),
            _ => 0.0,
        }
    };
    let sent_per_s = rate(sent0, sent1);
    let inputs_per_s = match (sent0.at, sent1.at) {
        (Some(x), Some(y)) if y > x => (sent1.inputs - sent0.inputs) as f64 / (y - x).as_secs_f64(),
        _ => 0.0,
    };
    let received_per_s = rate(received0, received1);
    let cpu = server_cpu1 - server_cpu0;
    let connected = received1.connections;
    if sent_per_s == 0.0 || connected == 0 {
        bail!(
            "nothing was sent during the window (n={n}, mode={})",
            mode.name()
        );
    }
    Ok(Row {
        mode,
        n,
        connected,
        lost: received1.lost.max(sent1.lost),
        cpu_percent: 100.0 * cpu / elapsed,
        us_per_datagram: 1e6 * cpu / (sent_per_s * elapsed),
        us_per_conn_second: 1e6 * cpu / (connected as f64 * elapsed),
        sent_per_s,
        received_per_s,
        inputs_per_s,
        late_per_s: match (received0.at, received1.at) {
            (Some(x), Some(y)) if y > x => {
                (received1.late - received0.late) as f64 / (y - x).as_secs_f64()
            }
            _ => 0.0,
        },
        server_wait_percent: 100.0 * (server_wait1 - server_wait0) / elapsed,
        client_cpu_percent: 100.0 * (client_cpu1 - client_cpu0) / elapsed,
        syscalls_per_s: syscalls.map(|c| c as f64 / PERF_SECONDS as f64),
    })
}

fn wait_for(mut ready: impl FnMut() -> bool, limit: Duration, what: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + limit;
    while !ready() {
        if Instant::now() > deadline {
            bail!("timed out waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

/// utime + stime of a process, in seconds.
fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    // Fields after the ")" that ends the command name; utime and stime are fields 14 and 15.
    let rest = stat.rsplit_once(')').context("malformed /proc stat")?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields[11].parse::<u64>()? + fields[12].parse::<u64>()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Ok(ticks as f64 / hz)
}

/// Time the process's threads spent runnable but not running (from /proc/<pid>/schedstat
/// of its main thread, which is the only busy one in both servers), in seconds.
fn run_queue_wait_seconds(pid: u32) -> anyhow::Result<f64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/schedstat"))
        .with_context(|| format!("reading /proc/{pid}/schedstat"))?;
    let wait_ns: u64 = text
        .split_whitespace()
        .nth(1)
        .context("malformed schedstat")?
        .parse()?;
    Ok(wait_ns as f64 / 1e9)
}

/// Counts of the four socket syscalls the server made over `PERF_SECONDS`.
fn perf_syscalls(pid: u32) -> anyhow::Result<[u64; 4]> {
    let events: Vec<String> = SYSCALLS
        .iter()
        .map(|s| format!("syscalls:sys_enter_{s}"))
        .collect();
    let output = Command::new("perf")
        .args([
            "stat",
            "-x",
            ",",
            "-e",
            &events.join(","),
            "-p",
            &pid.to_string(),
        ])
        .args(["sleep", &PERF_SECONDS.to_string()])
        .output()
        .context("running perf stat")?;
    let text = String::from_utf8_lossy(&output.stderr);
    let mut counts = [0u64; 4];
    for line in text.lines() {
        let fields: Vec<&str> = line.split(',').collect();
        if fields.len() < 3 {
            continue;
        }
        if let Some(i) = events.iter().position(|e| e == fields[2]) {
            counts[i] = fields[0].parse().unwrap_or(0);
        }
    }
    Ok(counts)
}
