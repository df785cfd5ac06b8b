//! What every mock provider shares: an HTTP/1 server on an ephemeral port, the record of a request,
//! and response builders (JSON, SSE from a channel).

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::net::TcpListener;

pub type Body = BoxBody<Bytes, std::io::Error>;

/// Frames of a streamed body; an `Err` drops the connection mid-body.
pub type FrameSender = tokio::sync::mpsc::Sender<Result<Frame<Bytes>, std::io::Error>>;

/// One request as a mock received it.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    pub path: String,
    /// The query string, without `?` (empty when none).
    pub query: String,
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
}

impl Recorded {
    /// Reads a whole request.
    pub async fn read(req: Request<Incoming>) -> Self {
        let method = req.method().to_string();
        let path = req.uri().path().to_owned();
        let query = req.uri().query().unwrap_or("").to_owned();
        let headers =
            req.headers().iter().map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_owned())).collect();
        let body = req.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
        Self { method, path, query, headers, body }
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }
}

/// A running mock server; it stops when dropped.
pub struct MockServer {
    pub addr: SocketAddr,
    connections: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl MockServer {
    /// Serves `handler(state, request)` on an ephemeral loopback port.
    pub async fn start<S, F, Fut>(state: Arc<S>, handler: F) -> Self
    where
        S: Send + Sync + 'static,
        F: Fn(Arc<S>, Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
        Fut: Future<Output = Response<Body>> + Send + 'static,
    {
        // A provider's backlog, not the 128 a plain bind gets here: a test that opens hundreds of
        // connections at once must not see the kernel drop handshakes (the connecting side then
        // believes it is connected and waits a second for the retransmitted SYN-ACK).
        let socket = tokio::net::TcpSocket::new_v4().expect("mock socket");
        socket.bind("127.0.0.1:0".parse().expect("loopback")).expect("bind mock");
        let listener: TcpListener = socket.listen(4096).expect("listen mock");
        let addr = listener.local_addr().expect("mock addr");
        let connections = Arc::new(AtomicUsize::new(0));
        let counted = connections.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { continue };
                counted.fetch_add(1, Ordering::SeqCst);
                let (state, handler) = (state.clone(), handler.clone());
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        let fut = handler(state.clone(), req);
                        async move { Ok::<_, Infallible>(fut.await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Self { addr, connections, task }
    }

    /// TCP connections accepted so far.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}

impl Drop for MockServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A complete response.
pub fn full(status: u16, content_type: &str, body: impl Into<Bytes>) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("content-type", content_type)
        .body(Full::new(body.into()).map_err(|never| match never {}).boxed())
        .expect("response")
}

pub fn json(status: u16, v: &Value) -> Response<Body> {
    full(status, "application/json", v.to_string())
}

/// A streamed `text/event-stream` response fed by the returned sender (dropping it ends the body).
pub fn event_stream() -> (FrameSender, Response<Body>) {
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    let stream =
        futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|item| (item, rx)) });
    let response = Response::builder()
        .status(200)
        .header("content-type", "text/event-stream")
        .header("cache-control", "no-cache")
        .body(BodyExt::boxed(StreamBody::new(stream)))
        .expect("response");
    (tx, response)
}
