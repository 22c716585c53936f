//! Shared helpers of the `apiserver_*` test suites.
#![allow(dead_code)]

use std::future::Future;
use std::time::Duration;

use integration_tests::apiserver::{ApiServer, Config};
use serde_json::Value;

/// Every test step is bounded by this.
pub const STEP: Duration = Duration::from_secs(20);

/// A server on 127.0.0.1 with a free port.
pub async fn start() -> ApiServer {
    start_with(Config::default()).await
}

/// A server with a given config (listen address forced to 127.0.0.1:0).
pub async fn start_with(mut config: Config) -> ApiServer {
    config.listen = "127.0.0.1:0".parse().expect("static address");
    ApiServer::start(config).await.expect("server starts")
}

/// A kube client for the server.
pub fn client(server: &ApiServer) -> kube::Client {
    let mut cfg = server.admin_config();
    cfg.read_timeout = Some(Duration::from_secs(60));
    kube::Client::try_from(cfg).expect("client")
}

/// Polls `check` until it returns true; panics with `what` after `STEP`.
pub async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + STEP;
    loop {
        if check().await {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Runs a future with the step bound.
pub async fn bounded<T>(what: &str, f: impl Future<Output = T>) -> T {
    tokio::time::timeout(STEP, f)
        .await
        .unwrap_or_else(|_| panic!("timed out: {what}"))
}

/// A raw request through the kube client; returns (status, JSON body or Null).
pub async fn raw(
    client: &kube::Client,
    method: &str,
    path: &str,
    content_type: Option<&str>,
    body: Vec<u8>,
) -> (u16, Value) {
    raw_with(client, method, path, content_type, None, body).await
}

/// Like [`raw`] with an Accept header.
pub async fn raw_with(
    client: &kube::Client,
    method: &str,
    path: &str,
    content_type: Option<&str>,
    accept: Option<&str>,
    body: Vec<u8>,
) -> (u16, Value) {
    let mut b = http::Request::builder().method(method).uri(path);
    if let Some(ct) = content_type {
        b = b.header(http::header::CONTENT_TYPE, ct);
    }
    if let Some(a) = accept {
        b = b.header(http::header::ACCEPT, a);
    }
    let req = b.body(body).expect("request");
    let resp = bounded(path, client.send(req.map(kube::client::Body::from)))
        .await
        .expect("transport");
    let code = resp.status().as_u16();
    let bytes = http_body_util::BodyExt::collect(resp.into_body())
        .await
        .expect("body")
        .to_bytes();
    (code, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
}

/// The `kube::Error::Api` status of a failed call.
pub fn api_err<T: std::fmt::Debug>(r: kube::Result<T>) -> Box<kube::core::Status> {
    match r {
        Err(kube::Error::Api(s)) => s,
        other => panic!("expected an API error, got {other:?}"),
    }
}

/// A request over a plain TCP connection (no client retries, no pooling);
/// returns (status, JSON body or Null).
pub async fn raw_tcp(
    server: &ApiServer,
    method: &str,
    path: &str,
    content_type: &str,
    body: &[u8],
) -> (u16, Value) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    bounded(path, async {
        let addr = server.addr();
        let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let tls = server.tls().client_config().expect("TLS client");
        let mut s = tokio_rustls::TlsConnector::from(tls)
            .connect(
                rustls::pki_types::ServerName::IpAddress(addr.ip().into()),
                tcp,
            )
            .await
            .expect("TLS");
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nAuthorization: Bearer {}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\r\n",
            integration_tests::apiserver::ADMIN_TOKEN,
            body.len()
        );
        s.write_all(head.as_bytes()).await.expect("write head");
        // The server may answer (and close) before reading a large body.
        let _ = s.write_all(body).await;
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out).await;
        let text = String::from_utf8_lossy(&out).to_string();
        let code = text.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
        let json = text.split_once("\r\n\r\n").map(|(_, b)| b).and_then(|b| serde_json::from_str(b).ok()).unwrap_or(Value::Null);
        (code, json)
    })
    .await
}
