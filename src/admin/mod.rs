//! The admin HTTP listener (`[admin] listen`): metrics and probes for
//! whoever operates the node.
//!
//! - `GET /metrics`: every metric recorded in the process, as Prometheus
//!   text ([`metrics`] holds the names and the one recorder);
//! - `GET /healthz`: 200 while every shard ticks (or the node drains),
//!   else 503 saying which shard stands still;
//! - `GET /readyz`: 200 when restored, the store reachable, every write
//!   backlog under its bound and not draining, else 503 listing each
//!   failed condition ([`Health`]).
//!
//! Anything else is 404 (405 for another method); hyper answers requests
//! it cannot parse with 400 and closes that connection only. The listener
//! is plain HTTP/1.1, meant for a private address (the default is
//! loopback): it has no authentication. It runs until the shutdown future
//! given to [`spawn`] resolves.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{ALLOW, CONTENT_TYPE, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::{JoinHandle, JoinSet};
use tokio_util::sync::CancellationToken;

mod health;
pub mod metrics;

pub use health::{DEFAULT_STALL_AFTER, Health, STORE_FAILURE_STREAK, Verdict};
pub use metrics::RecorderError;

/// The content type of the Prometheus text exposition format.
pub const METRICS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Admin connections served at once; more are closed on accept.
const MAX_CONNECTIONS: usize = 64;
/// How long a client may take to send a request's headers.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// How long open connections get to finish after shutdown.
const CLOSE_GRACE: Duration = Duration::from_secs(2);
/// How often histograms are compacted and the shards' progress sampled.
const UPKEEP_EVERY: Duration = Duration::from_secs(1);

/// The `[admin]` table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminConfig {
    /// Where the admin HTTP listener binds; `None` turns it off.
    pub listen: Option<SocketAddr>,
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            listen: Some(SocketAddr::from(([127, 0, 0, 1], 9100))),
        }
    }
}

/// Why the admin listener could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AdminError {
    /// The TCP address could not be bound.
    #[error("cannot bind the admin HTTP listener on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The metrics recorder could not be installed.
    #[error(transparent)]
    Recorder(#[from] RecorderError),
}

/// Installs the metrics recorder (once per process), binds `listen` and
/// serves the admin endpoints until `shutdown` resolves. Returns the bound
/// address (useful with port 0) and the listener task, which ends after
/// the shutdown once open connections finished (or after a short grace).
pub async fn spawn(
    listen: SocketAddr,
    health: Health,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(SocketAddr, JoinHandle<()>), AdminError> {
    let handle = metrics::install()?;
    ::metrics::gauge!(metrics::DRAINING).set(if health.is_draining() { 1.0 } else { 0.0 });
    let bind_error = |source| AdminError::Bind {
        addr: listen,
        source,
    };
    let listener = TcpListener::bind(listen).await.map_err(bind_error)?;
    let local = listener.local_addr().map_err(bind_error)?;
    let task = tokio::spawn(run(listener, Endpoints { health, handle }, shutdown));
    Ok((local, task))
}

/// What the requests are answered from.
#[derive(Debug, Clone)]
struct Endpoints {
    health: Health,
    handle: PrometheusHandle,
}

async fn run(listener: TcpListener, endpoints: Endpoints, shutdown: impl Future<Output = ()>) {
    let endpoints = Arc::new(endpoints);
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let stop = CancellationToken::new();
    let mut connections = JoinSet::new();
    let mut upkeep = tokio::time::interval(UPKEEP_EVERY);
    upkeep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            _ = upkeep.tick() => {
                endpoints.handle.run_upkeep();
                endpoints.health.sample();
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let Ok(permit) = permits.clone().try_acquire_owned() else {
                        tracing::warn!(%peer, "admin connection refused: {MAX_CONNECTIONS} already open");
                        continue;
                    };
                    let (endpoints, stop) = (endpoints.clone(), stop.clone());
                    connections.spawn(async move {
                        serve_connection(stream, endpoints, stop).await;
                        drop(permit);
                    });
                }
                Err(error) => {
                    // Out of file descriptors and the like: back off, do not spin.
                    tracing::warn!(%error, "admin listener cannot accept");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
        }
    }
    drop(listener);
    stop.cancel();
    let drained = tokio::time::timeout(CLOSE_GRACE, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        connections.shutdown().await;
    }
}

async fn serve_connection(
    stream: tokio::net::TcpStream,
    endpoints: Arc<Endpoints>,
    stop: CancellationToken,
) {
    let service = service_fn(move |request: Request<Incoming>| {
        let response = respond(request.method(), request.uri().path(), &endpoints);
        async move { Ok::<_, Infallible>(response) }
    });
    let connection = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .serve_connection(TokioIo::new(stream), service);
    tokio::pin!(connection);
    let result = tokio::select! {
        result = connection.as_mut() => result,
        () = stop.cancelled() => {
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    if let Err(error) = result {
        tracing::debug!(%error, "admin connection ended with an error");
    }
}

/// Answers one request.
fn respond(method: &Method, path: &str, endpoints: &Endpoints) -> Response<Full<Bytes>> {
    if method != Method::GET && method != Method::HEAD {
        let mut response = text(StatusCode::METHOD_NOT_ALLOWED, "only GET and HEAD\n");
        response
            .headers_mut()
            .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
        return response;
    }
    match path {
        "/metrics" => {
            let mut response = Response::new(Full::new(Bytes::from(endpoints.handle.render())));
            response
                .headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static(METRICS_CONTENT_TYPE));
            response
        }
        "/healthz" => probe(&endpoints.health.live()),
        "/readyz" => probe(&endpoints.health.ready()),
        _ => text(
            StatusCode::NOT_FOUND,
            "not found: try /metrics, /healthz or /readyz\n",
        ),
    }
}

fn probe(verdict: &Verdict) -> Response<Full<Bytes>> {
    if verdict.is_ok() {
        text(StatusCode::OK, "ok\n")
    } else {
        let mut body = verdict.failures.join("\n");
        body.push('\n');
        text(StatusCode::SERVICE_UNAVAILABLE, body)
    }
}

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::ShardStats;

    fn endpoints() -> Endpoints {
        let health = Health::over_shards(vec![Arc::new(ShardStats::default())], 10);
        let handle = metrics::install().expect("the recorder installs");
        Endpoints { health, handle }
    }

    fn body(response: &Response<Full<Bytes>>) -> String {
        use http_body_util::BodyExt as _;
        let full = response.body().clone();
        let bytes = futures_util::FutureExt::now_or_never(full.collect())
            .expect("a full body is ready")
            .expect("infallible")
            .to_bytes();
        String::from_utf8(bytes.to_vec()).expect("text")
    }

    #[test]
    fn routes_answer_by_path_and_method() {
        let e = endpoints();
        assert_eq!(
            respond(&Method::GET, "/nope", &e).status(),
            StatusCode::NOT_FOUND
        );
        let post = respond(&Method::POST, "/metrics", &e);
        assert_eq!(post.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(post.headers()[ALLOW], "GET, HEAD");
        let metrics = respond(&Method::GET, "/metrics", &e);
        assert_eq!(metrics.status(), StatusCode::OK);
        assert_eq!(metrics.headers()[CONTENT_TYPE], METRICS_CONTENT_TYPE);
        assert_eq!(
            respond(&Method::GET, "/healthz", &e).status(),
            StatusCode::OK
        );
    }

    #[test]
    fn readiness_lists_what_failed_then_turns_ok() {
        let e = endpoints();
        let before = respond(&Method::GET, "/readyz", &e);
        assert_eq!(before.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(body(&before).contains("not restored"));
        e.health.set_restored();
        let after = respond(&Method::GET, "/readyz", &e);
        assert_eq!(after.status(), StatusCode::OK);
        assert_eq!(body(&after), "ok\n");
    }
}
