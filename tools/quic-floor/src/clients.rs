//! N stock quinn clients in one process, one UDP socket (endpoint) each, counting datagrams.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::common;

/// A datagram arriving this long after the previous one on its connection counts as late
/// (the server sends every 33.3 ms, so this means at least one tick's datagram was held back).
const LATE_GAP: Duration = Duration::from_millis(50);

/// How many handshakes are in flight at once while connecting.
const CONNECT_CONCURRENCY: usize = 32;

/// `inputs`: each connection also sends one `INPUT_PAYLOAD`-byte datagram every tick on a
/// fixed schedule from its own phase (not in reply to what it receives).
pub fn run(n: usize, addr: SocketAddr, cert: &Path, inputs: bool) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(run_async(n, addr, cert, inputs))
}

async fn run_async(n: usize, addr: SocketAddr, cert: &Path, inputs: bool) -> anyhow::Result<()> {
    let der = std::fs::read(cert).with_context(|| format!("reading {}", cert.display()))?;
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(der.into())
        .context("trusting the server certificate")?;
    let mut config = quinn::ClientConfig::with_root_certificates(Arc::new(roots))?;
    let mut transport = quinn::TransportConfig::default();
    // Keep connections alive regardless of traffic (the server also sends every tick).
    transport.keep_alive_interval(Some(Duration::from_secs(5)));
    config.transport_config(Arc::new(transport));

    let received = Arc::new(AtomicU64::new(0));
    let connected = Arc::new(AtomicUsize::new(0));
    let lost = Arc::new(AtomicU64::new(0));
    let late = Arc::new(AtomicU64::new(0));
    let permits = Arc::new(tokio::sync::Semaphore::new(CONNECT_CONCURRENCY));
    let mut keep = Vec::with_capacity(n);
    for index in 0..n {
        let mut endpoint = quinn::Endpoint::client(([127, 0, 0, 1], 0).into())?;
        endpoint.set_default_client_config(config.clone());
        keep.push(endpoint.clone());
        let permit = permits.clone().acquire_owned().await?;
        let (received, connected, lost, late) = (
            received.clone(),
            connected.clone(),
            lost.clone(),
            late.clone(),
        );
        tokio::spawn(async move {
            let connection = match endpoint.connect(addr, "localhost") {
                Ok(connecting) => connecting.await,
                Err(e) => {
                    eprintln!("connect: {e}");
                    lost.fetch_add(1, Ordering::Relaxed);
                    return;
                }
            };
            drop(permit);
            let connection = match connection {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("handshake: {e}");
                    lost.fetch_add(1, Ordering::Relaxed);
                    return;
                }
            };
            connected.fetch_add(1, Ordering::Relaxed);
            if inputs {
                tokio::spawn(send_inputs(connection.clone(), index));
            }
            let mut last: Option<Instant> = None;
            loop {
                match connection.read_datagram().await {
                    Ok(_) => {
                        received.fetch_add(1, Ordering::Relaxed);
                        let now = Instant::now();
                        if last.is_some_and(|t| now - t > LATE_GAP) {
                            late.fetch_add(1, Ordering::Relaxed);
                        }
                        last = Some(now);
                    }
                    Err(e) => {
                        eprintln!("connection lost: {e}");
                        connected.fetch_sub(1, Ordering::Relaxed);
                        lost.fetch_add(1, Ordering::Relaxed);
                        return;
                    }
                }
            }
        });
    }
    let mut ticker = tokio::time::interval(Duration::from_secs(1));
    loop {
        ticker.tick().await;
        common::print_stat(
            received.load(Ordering::Relaxed),
            connected.load(Ordering::Relaxed),
            lost.load(Ordering::Relaxed),
            late.load(Ordering::Relaxed),
            0,
        );
    }
}

/// Send one input datagram per tick from this client's phase until the connection closes;
/// ticks the process fell behind on are skipped, not sent in a burst.
async fn send_inputs(connection: quinn::Connection, index: usize) {
    let input = bytes::Bytes::from(vec![0x5Au8; common::INPUT_PAYLOAD]);
    let start = tokio::time::Instant::now() + common::input_phase(index);
    let mut schedule = tokio::time::interval_at(start, common::TICK);
    schedule.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        schedule.tick().await;
        if connection.send_datagram(input.clone()).is_err() {
            return;
        }
    }
}
