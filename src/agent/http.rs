//! `/metrics`, `/healthz` and `/readyz` over plain HTTP/1.1 (hyper, already in the tree
//! through kube).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{Context, Result};
use http_body_util::Full;
use hyper::body::Bytes;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use super::Shared;

/// Binds `addr` (port 0 picks one) and serves until the task is aborted.
pub async fn serve(addr: SocketAddr, shared: Arc<Shared>) -> Result<(SocketAddr, JoinHandle<()>)> {
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr} for /metrics"))?;
    let local = listener.local_addr()?;
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let shared = shared.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req| {
                    let shared = shared.clone();
                    async move { Ok::<_, Infallible>(respond(&req, &shared)) }
                });
                // A client that goes away mid-request is not our problem.
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok((local, task))
}

fn respond<B>(req: &Request<B>, shared: &Shared) -> Response<Full<Bytes>> {
    let (status, content_type, body) = match (req.method(), req.uri().path()) {
        (&Method::GET, "/metrics") => (
            StatusCode::OK,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            shared.metrics.render(),
        ),
        (&Method::GET, "/healthz") => match shared.health() {
            Ok(()) => (StatusCode::OK, "text/plain", "ok\n".to_string()),
            Err(e) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "text/plain",
                format!("{e}\n"),
            ),
        },
        (&Method::GET, "/readyz") => match shared.readiness() {
            Ok(()) => (StatusCode::OK, "text/plain", "ok\n".to_string()),
            Err(e) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "text/plain",
                format!("{e}\n"),
            ),
        },
        _ => (
            StatusCode::NOT_FOUND,
            "text/plain",
            "try /metrics, /healthz or /readyz\n".to_string(),
        ),
    };
    Response::builder()
        .status(status)
        .header("content-type", content_type)
        .body(Full::new(Bytes::from(body)))
        .expect("static parts are valid")
}
