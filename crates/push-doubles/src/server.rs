//! Serving a double: TLS, then HTTP/2 or HTTP/1.1 (hyper), one task per connection.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

pub type Reply = Response<Full<Bytes>>;

pub async fn serve<H, F>(
    port: u16,
    tls: TlsAcceptor,
    connections: Arc<AtomicU64>,
    handler: H,
) -> anyhow::Result<(SocketAddr, tokio::task::JoinHandle<()>)>
where
    H: Fn(Request<Incoming>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Reply> + Send + 'static,
{
    let listener = TcpListener::bind(("127.0.0.1", port)).await?;
    let addr = listener.local_addr()?;
    Ok((addr, serve_on(listener, tls, connections, handler)))
}

/// Serves until aborted; counts the TLS connections clients open in `connections`.
pub fn serve_on<H, F>(
    listener: TcpListener,
    tls: TlsAcceptor,
    connections: Arc<AtomicU64>,
    handler: H,
) -> tokio::task::JoinHandle<()>
where
    H: Fn(Request<Incoming>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Reply> + Send + 'static,
{
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let _ = tcp.set_nodelay(true);
            let tls = tls.clone();
            let handler = handler.clone();
            let connections = connections.clone();
            tokio::spawn(async move {
                let Ok(stream) = tls.accept(tcp).await else {
                    return;
                };
                connections.fetch_add(1, Ordering::Relaxed);
                let service = hyper::service::service_fn(move |req| {
                    let handler = handler.clone();
                    async move { Ok::<_, Infallible>(handler(req).await) }
                });
                let mut builder =
                    hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                // APNs allows many concurrent streams on one connection.
                builder.http2().max_concurrent_streams(1000);
                let _ = builder
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    })
}

pub fn reply(status: u16, body: impl Into<Bytes>) -> Reply {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() =
        hyper::StatusCode::from_u16(status).unwrap_or(hyper::StatusCode::INTERNAL_SERVER_ERROR);
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    r
}

/// Reads a request body up to `limit` bytes (`None` beyond it).
pub async fn body(req: Request<Incoming>, limit: usize) -> Option<Bytes> {
    use http_body_util::BodyExt as _;
    let limited = http_body_util::Limited::new(req.into_body(), limit);
    limited.collect().await.ok().map(|c| c.to_bytes())
}
