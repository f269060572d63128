//! (a) Stock quinn: `quinn::Endpoint` with its per-connection driver tasks; one task sends
//! one datagram to every connection per tick.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;

use crate::common::{self, Identity, TICK};

/// Serve on 127.0.0.1:port until killed, on a current-thread tokio runtime (one core).
pub fn serve(port: u16, identity: Identity, ack_every: u32) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(serve_async(port, identity, ack_every))
}

async fn serve_async(port: u16, identity: Identity, ack_every: u32) -> anyhow::Result<()> {
    let socket = common::bind(port)?;
    let endpoint = quinn::Endpoint::new(
        quinn::EndpointConfig::default(),
        Some(identity.server_config(ack_every)?),
        socket,
        Arc::new(quinn::TokioRuntime),
    )
    .context("creating the quinn endpoint")?;
    let connections: Arc<Mutex<Vec<quinn::Connection>>> = Arc::default();
    let lost = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let inputs = Arc::new(std::sync::atomic::AtomicU64::new(0));

    let accepted = connections.clone();
    let accept_lost = lost.clone();
    let accept_inputs = inputs.clone();
    tokio::spawn(async move {
        while let Some(incoming) = endpoint.accept().await {
            let accepted = accepted.clone();
            let lost = accept_lost.clone();
            let inputs = accept_inputs.clone();
            tokio::spawn(async move {
                match incoming.await {
                    Ok(connection) => {
                        accepted
                            .lock()
                            .expect("not poisoned")
                            .push(connection.clone());
                        // One reader per connection, as a server that takes inputs has.
                        while connection.read_datagram().await.is_ok() {
                            inputs.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        }
                    }
                    Err(e) => {
                        eprintln!("handshake failed: {e}");
                        lost.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                }
            });
        }
    });

    let payload = common::payload();
    let mut sent: u64 = 0;
    let mut ticker = tokio::time::interval(TICK);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut last_stat = tokio::time::Instant::now();
    let mut batch: Vec<quinn::Connection> = Vec::new();
    loop {
        ticker.tick().await;
        batch.clear();
        {
            let mut all = connections.lock().expect("not poisoned");
            all.retain(|c| {
                let open = c.close_reason().is_none();
                if !open {
                    lost.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                open
            });
            batch.extend(all.iter().cloned());
        }
        for connection in &batch {
            if connection.send_datagram(payload.clone()).is_ok() {
                sent += 1;
            }
        }
        if last_stat.elapsed() >= Duration::from_secs(1) {
            last_stat = tokio::time::Instant::now();
            common::print_stat(
                sent,
                batch.len(),
                lost.load(std::sync::atomic::Ordering::Relaxed),
                0,
                inputs.load(std::sync::atomic::Ordering::Relaxed),
            );
        }
    }
}
