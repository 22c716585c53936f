//! The HTTP endpoint: `/livez`, `/readyz`, `/status` and `/metrics` on the
//! loopback listener, `/metrics` alone on the one Prometheus scrapes.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::time::Instant;

use super::health::{Health, Verdict};
use super::metrics::Metrics;

fn text(code: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = code;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

fn verdict_response(v: Verdict) -> Response<Full<Bytes>> {
    let mut body = v.checks.join("\n");
    body.push('\n');
    body.push_str(if v.ok { "ok\n" } else { "not ok\n" });
    text(
        if v.ok {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        },
        body,
    )
}

/// What a listener serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exposure {
    /// `/livez`, `/readyz`, `/status`, `/metrics` and `/policy/trace` (the
    /// loopback listener).
    All,
    /// `/metrics` only (the listener Prometheus scrapes from elsewhere).
    MetricsOnly,
}

async fn route(
    req: Request<Incoming>,
    health: Arc<Health>,
    metrics: Arc<Metrics>,
    exposure: Exposure,
) -> Result<Response<Full<Bytes>>, Infallible> {
    if exposure == Exposure::MetricsOnly && req.uri().path() != "/metrics" {
        return Ok(text(
            StatusCode::NOT_FOUND,
            "this listener serves /metrics only\n".into(),
        ));
    }
    Ok(match req.uri().path() {
        "/livez" => verdict_response(health.liveness_at(Instant::now())),
        "/readyz" => verdict_response(health.readiness_at(Instant::now())),
        "/status" => {
            let mut r = text(
                StatusCode::OK,
                health.status_json(Instant::now()).to_string(),
            );
            r.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("application/json"),
            );
            r
        }
        "/policy/trace" => {
            let (code, body) = match health.tracer() {
                Some(t) => {
                    let q = super::tracer::decode_query(req.uri().query().unwrap_or(""));
                    match q {
                        Ok(q) => t.call(q).await,
                        Err(e) => (400, serde_json::json!({"error": e.to_string()})),
                    }
                }
                None => (
                    503,
                    serde_json::json!({"error": "the dataplane controller has not started yet"}),
                ),
            };
            let mut r = text(
                StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
                body.to_string(),
            );
            r.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("application/json"),
            );
            r
        }
        "/metrics" => {
            let mut r = text(StatusCode::OK, metrics.encode());
            r.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static(
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                ),
            );
            r
        }
        _ => text(
            StatusCode::NOT_FOUND,
            "try /livez, /readyz, /status, /metrics or /policy/trace\n".into(),
        ),
    })
}

/// Serves what `exposure` says on `listener` until the task is dropped.
pub async fn serve(
    listener: TcpListener,
    health: Arc<Health>,
    metrics: Arc<Metrics>,
    exposure: Exposure,
) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(error = %e, "health endpoint accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let (h, m) = (health.clone(), metrics.clone());
        tokio::spawn(async move {
            let svc = service_fn(move |req| route(req, h.clone(), m.clone(), exposure));
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await
            {
                tracing::debug!(%peer, error = %e, "health connection ended");
            }
        });
    }
}

/// Binds `addr` and serves there (see [`serve`]); returns the bound address.
pub async fn bind_and_serve(
    addr: SocketAddr,
    health: Arc<Health>,
    metrics: Arc<Metrics>,
    exposure: Exposure,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let l = TcpListener::bind(addr).await?;
    let bound = l.local_addr()?;
    Ok((bound, tokio::spawn(serve(l, health, metrics, exposure))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn http_endpoint_answers_with_status_codes() {
        let health = Arc::new(Health::new(Duration::ZERO));
        let metrics = Arc::new(Metrics::new());
        let (addr, task) = bind_and_serve(
            "127.0.0.1:0".parse().expect("addr"),
            health.clone(),
            metrics.clone(),
            Exposure::All,
        )
        .await
        .expect("bind");
        let (metrics_addr, metrics_task) = bind_and_serve(
            "127.0.0.1:0".parse().expect("addr"),
            health.clone(),
            metrics,
            Exposure::MetricsOnly,
        )
        .await
        .expect("bind");
        let get_from = |addr: SocketAddr, path: &'static str| async move {
            use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
            let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
            s.write_all(
                format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
            )
            .await
            .expect("write");
            let mut out = String::new();
            s.read_to_string(&mut out).await.expect("read");
            out
        };
        let get = |path: &'static str| get_from(addr, path);
        assert!(get("/readyz").await.starts_with("HTTP/1.1 503"));
        health.set_datastore_synced(true);
        health.set_dataplane_programmed(true);
        assert!(get("/readyz").await.starts_with("HTTP/1.1 200"));
        assert!(get("/livez").await.starts_with("HTTP/1.1 200"));
        let m = get("/metrics").await;
        assert!(m.contains("margay_policy_sync_failures_total"), "{m}");
        health.set_status("node", serde_json::json!({"name": "n1"}));
        let st = get("/status").await;
        assert!(
            st.contains(r#""node":{"name":"n1"}"#) && st.contains(r#""ready":true"#),
            "{st}"
        );
        assert!(get("/nope").await.starts_with("HTTP/1.1 404"));
        // The metrics-only listener: metrics, nothing else.
        let m = get_from(metrics_addr, "/metrics").await;
        assert!(m.contains("margay_policy_sync_failures_total"), "{m}");
        assert!(
            get_from(metrics_addr, "/status")
                .await
                .starts_with("HTTP/1.1 404")
        );
        assert!(
            get_from(metrics_addr, "/livez")
                .await
                .starts_with("HTTP/1.1 404")
        );
        // /policy/trace: 503 until the controller installs its hook, then
        // the hook gets the decoded query; never on the metrics listener.
        let t = get("/policy/trace?from=demo%2Fa&to=b").await;
        assert!(t.starts_with("HTTP/1.1 503"), "{t}");
        health.set_tracer(super::super::tracer::Tracer::new(|q| {
            Box::pin(async move { (409, serde_json::json!({ "error": format!("{q:?}") })) })
        }));
        let t = get("/policy/trace?from=demo%2Fa&to=2001%3Adb8%3A%3A1").await;
        assert!(
            t.starts_with("HTTP/1.1 409")
                && t.contains(r#"[(\"from\", \"demo/a\"), (\"to\", \"2001:db8::1\")]"#),
            "{t}"
        );
        assert!(
            get_from(metrics_addr, "/policy/trace?from=a")
                .await
                .starts_with("HTTP/1.1 404")
        );
        task.abort();
        metrics_task.abort();
    }
}
