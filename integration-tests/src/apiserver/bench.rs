//! Throughput figures of the API test server, measured over HTTP against an
//! in-process server, each printed beside an anchor from the same run: the
//! server's own `GET /version` rate (the HTTP + routing floor, no store).
//! Run with `margay-apiserver bench` (release build for meaningful numbers).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use http::{Method, Request};
use http_body_util::{BodyExt as _, Full};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt as _, BufReader};

use super::{ApiServer, Config, ServerError};

/// Benchmark sizes.
#[derive(Debug, Clone)]
pub struct BenchOpts {
    /// Objects created (and listed, fetched).
    pub objects: usize,
    /// Concurrent clients for the concurrent phases.
    pub concurrency: usize,
    /// Watchers for the fan-out phase.
    pub watchers: usize,
    /// Updates observed by every watcher.
    pub updates: usize,
    /// Artificial latency of the server under test.
    pub latency: Duration,
}

/// Why a benchmark could not run.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// The server did not start.
    #[error("starting the server")]
    Start(#[source] ServerError),
    /// A request failed.
    #[error("{what}: {why}")]
    Request {
        /// Which request.
        what: String,
        /// What happened.
        why: String,
    },
}

type HttpClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>;

async fn call(
    c: &HttpClient,
    base: &str,
    method: Method,
    path: &str,
    ct: &str,
    body: Option<&Value>,
) -> Result<(u16, Bytes), BenchError> {
    let err = |why: String| BenchError::Request {
        what: format!("{method} {path}"),
        why,
    };
    let bytes = body
        .map(|b| serde_json::to_vec(b).unwrap_or_default())
        .unwrap_or_default();
    let req = Request::builder()
        .method(method.clone())
        .uri(format!("{base}{path}"))
        .header("content-type", ct)
        .header("authorization", format!("Bearer {}", super::ADMIN_TOKEN))
        .body(Full::new(Bytes::from(bytes)))
        .map_err(|e| err(e.to_string()))?;
    let resp = c.request(req).await.map_err(|e| err(e.to_string()))?;
    let code = resp.status().as_u16();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| err(e.to_string()))?
        .to_bytes();
    Ok((code, body))
}

fn expect(what: &str, code: u16, want: u16, body: &Bytes) -> Result<(), BenchError> {
    if code == want {
        Ok(())
    } else {
        Err(BenchError::Request {
            what: what.into(),
            why: format!("HTTP {code}: {}", String::from_utf8_lossy(body)),
        })
    }
}

fn rate(n: usize, d: Duration) -> f64 {
    n as f64 / d.as_secs_f64().max(1e-9)
}

fn line(name: &str, value: f64, unit: &str, anchor: f64) {
    println!(
        "{name:<38} {:>6.2}x anchor   {value:>10.0} {unit}",
        value / anchor
    );
}

const CM: &str = "/api/v1/namespaces/default/configmaps";

/// Runs every phase and prints one line per figure.
pub async fn run(opts: &BenchOpts) -> Result<(), BenchError> {
    let server = ApiServer::start(Config {
        latency: opts.latency,
        ..Config::default()
    })
    .await
    .map_err(BenchError::Start)?;
    let base = server.url();
    let tls = server.tls().client_config().map_err(BenchError::Start)?;
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config((*tls).clone())
        .https_only()
        .enable_http1()
        .build();
    let c: HttpClient = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(256)
        .build(https);
    let n = opts.objects.max(1);

    // Anchor: the HTTP floor.
    let t = Instant::now();
    for _ in 0..n {
        let (code, b) = call(&c, &base, Method::GET, "/version", "application/json", None).await?;
        expect("GET /version", code, 200, &b)?;
    }
    let anchor = rate(n, t.elapsed());
    println!(
        "anchor: GET /version, sequential, one keep-alive connection: {anchor:.0} req/s ({n} requests)"
    );
    println!("{:<38} {:>14}   {:>10}", "phase", "ratio", "figure");

    let t = Instant::now();
    for i in 0..n {
        let body = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": format!("seq-{i}"), "labels": {"bench": "seq"}}, "data": {"k": "v"}});
        let (code, b) = call(&c, &base, Method::POST, CM, "application/json", Some(&body)).await?;
        expect("create", code, 201, &b)?;
    }
    line("create, sequential", rate(n, t.elapsed()), "obj/s", anchor);

    let t = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..opts.concurrency.max(1) {
        let (c, base) = (c.clone(), base.clone());
        let per = n / opts.concurrency.max(1);
        tasks.push(tokio::spawn(async move {
            for i in 0..per {
                let body = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": format!("par-{w}-{i}")}, "data": {"k": "v"}});
                let (code, b) = call(&c, &base, Method::POST, CM, "application/json", Some(&body)).await?;
                expect("create", code, 201, &b)?;
            }
            Ok::<usize, BenchError>(per)
        }));
    }
    let mut done = 0;
    for t in tasks {
        done += t.await.map_err(|e| BenchError::Request {
            what: "task".into(),
            why: e.to_string(),
        })??;
    }
    line(
        &format!("create, {} clients", opts.concurrency),
        rate(done, t.elapsed()),
        "obj/s",
        anchor,
    );

    let t = Instant::now();
    for i in 0..n {
        let (code, b) = call(
            &c,
            &base,
            Method::GET,
            &format!("{CM}/seq-{i}"),
            "application/json",
            None,
        )
        .await?;
        expect("get", code, 200, &b)?;
    }
    line("get, sequential", rate(n, t.elapsed()), "req/s", anchor);

    let total = n + done;
    let reps = 10;
    let t = Instant::now();
    for _ in 0..reps {
        let (code, b) = call(&c, &base, Method::GET, CM, "application/json", None).await?;
        expect("list", code, 200, &b)?;
    }
    line(
        &format!("list of {total}, objects returned"),
        rate(total * reps, t.elapsed()),
        "obj/s",
        anchor,
    );
    let t = Instant::now();
    let mut cont = String::new();
    let mut pages = 0;
    loop {
        let path = format!("{CM}?limit=500&continue={cont}");
        let (code, b) = call(&c, &base, Method::GET, &path, "application/json", None).await?;
        expect("paged list", code, 200, &b)?;
        pages += 1;
        let v: Value = serde_json::from_slice(&b).unwrap_or_default();
        match v.pointer("/metadata/continue").and_then(Value::as_str) {
            Some(t) if !t.is_empty() => cont = t.to_string(),
            _ => break,
        }
    }
    line(
        &format!("paged list (500/page, {pages} pages)"),
        rate(total, t.elapsed()),
        "obj/s",
        anchor,
    );
    let t = Instant::now();
    for _ in 0..reps {
        let (code, b) = call(
            &c,
            &base,
            Method::GET,
            &format!("{CM}?labelSelector=bench%3Dseq"),
            "application/json",
            None,
        )
        .await?;
        expect("selector list", code, 200, &b)?;
    }
    line(
        &format!("label-selected list ({n} of {total})"),
        rate(n * reps, t.elapsed()),
        "obj/s",
        anchor,
    );

    watch_fanout(&server, &c, opts, anchor).await?;
    cas_contention(&c, &base, opts, anchor).await?;
    server.shutdown().await.map_err(BenchError::Start)?;
    Ok(())
}

async fn watch_fanout(
    server: &ApiServer,
    c: &HttpClient,
    opts: &BenchOpts,
    anchor: f64,
) -> Result<(), BenchError> {
    let base = server.url();
    let body = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "hot"}, "data": {"n": "0"}});
    let (code, b) = call(c, &base, Method::POST, CM, "application/json", Some(&body)).await?;
    expect("create hot", code, 201, &b)?;
    let v: Value = serde_json::from_slice(&b).unwrap_or_default();
    let rv = v
        .pointer("/metadata/resourceVersion")
        .and_then(Value::as_str)
        .unwrap_or("0")
        .to_string();
    let received = Arc::new(AtomicU64::new(0));
    let want = opts.updates as u64;
    let mut watchers = Vec::new();
    for _ in 0..opts.watchers {
        // A raw connection per watcher: a stream of lines.
        let addr = server.addr();
        let received = received.clone();
        let path = format!(
            "{CM}?watch=1&fieldSelector=metadata.name%3Dhot&resourceVersion={rv}&timeoutSeconds=300"
        );
        let tcp = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| BenchError::Request {
                what: "connect".into(),
                why: e.to_string(),
            })?;
        let tls = server.tls().client_config().map_err(BenchError::Start)?;
        let stream = tokio_rustls::TlsConnector::from(tls)
            .connect(
                rustls::pki_types::ServerName::IpAddress(addr.ip().into()),
                tcp,
            )
            .await
            .map_err(|e| BenchError::Request {
                what: "TLS".into(),
                why: e.to_string(),
            })?;
        let (r, mut w) = tokio::io::split(stream);
        tokio::io::AsyncWriteExt::write_all(
            &mut w,
            format!(
                "GET {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {}\r\n\r\n",
                super::ADMIN_TOKEN
            )
            .as_bytes(),
        )
        .await
        .map_err(|e| BenchError::Request {
            what: "watch".into(),
            why: e.to_string(),
        })?;
        watchers.push(tokio::spawn(async move {
            let _keep = w;
            let mut lines = BufReader::new(r).lines();
            let mut mine = 0;
            while let Ok(Some(l)) = lines.next_line().await {
                if l.contains("\"MODIFIED\"") {
                    mine += 1;
                    received.fetch_add(1, Ordering::Relaxed);
                    if mine == want {
                        return;
                    }
                }
            }
        }));
    }
    // Let every watch register before the clock starts.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let t = Instant::now();
    for i in 1..=opts.updates {
        let patch = json!({"data": {"n": i.to_string()}});
        let (code, b) = call(
            c,
            &base,
            Method::PATCH,
            &format!("{CM}/hot"),
            "application/merge-patch+json",
            Some(&patch),
        )
        .await?;
        expect("patch", code, 200, &b)?;
    }
    let writes = t.elapsed();
    for w in watchers {
        let _ = tokio::time::timeout(Duration::from_secs(120), w).await;
    }
    let elapsed = t.elapsed();
    let got = received.load(Ordering::Relaxed) as usize;
    line(
        "patch while watched, sequential",
        rate(opts.updates, writes),
        "req/s",
        anchor,
    );
    line(
        &format!("watch events delivered ({} watchers)", opts.watchers),
        rate(got, elapsed),
        "ev/s",
        anchor,
    );
    if got != opts.watchers * opts.updates {
        println!(
            "  note: {got} of {} events delivered",
            opts.watchers * opts.updates
        );
    }
    Ok(())
}

async fn cas_contention(
    c: &HttpClient,
    base: &str,
    opts: &BenchOpts,
    anchor: f64,
) -> Result<(), BenchError> {
    let body = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cas"}, "data": {"n": "0"}});
    let (code, b) = call(c, base, Method::POST, CM, "application/json", Some(&body)).await?;
    expect("create cas", code, 201, &b)?;
    let goal = opts.updates;
    let wins = Arc::new(AtomicU64::new(0));
    let conflicts = Arc::new(AtomicU64::new(0));
    let t = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..opts.concurrency.max(1) {
        let (c, base, wins, conflicts) =
            (c.clone(), base.to_string(), wins.clone(), conflicts.clone());
        tasks.push(tokio::spawn(async move {
            while wins.load(Ordering::Relaxed) < goal as u64 {
                let (_, b) = call(
                    &c,
                    &base,
                    Method::GET,
                    &format!("{CM}/cas"),
                    "application/json",
                    None,
                )
                .await?;
                let mut v: Value = serde_json::from_slice(&b).unwrap_or_default();
                let n: u64 = v
                    .pointer("/data/n")
                    .and_then(Value::as_str)
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(0);
                v["data"]["n"] = json!((n + 1).to_string());
                let (code, b) = call(
                    &c,
                    &base,
                    Method::PUT,
                    &format!("{CM}/cas"),
                    "application/json",
                    Some(&v),
                )
                .await?;
                match code {
                    200 => {
                        wins.fetch_add(1, Ordering::Relaxed);
                    }
                    409 => {
                        conflicts.fetch_add(1, Ordering::Relaxed);
                    }
                    _ => expect("cas put", code, 200, &b)?,
                }
            }
            Ok::<(), BenchError>(())
        }));
    }
    for t in tasks {
        t.await.map_err(|e| BenchError::Request {
            what: "task".into(),
            why: e.to_string(),
        })??;
    }
    let elapsed = t.elapsed();
    let (w, x) = (
        wins.load(Ordering::Relaxed),
        conflicts.load(Ordering::Relaxed),
    );
    let (code, b) = call(
        c,
        base,
        Method::GET,
        &format!("{CM}/cas"),
        "application/json",
        None,
    )
    .await?;
    expect("get cas", code, 200, &b)?;
    let v: Value = serde_json::from_slice(&b).unwrap_or_default();
    let final_n: u64 = v
        .pointer("/data/n")
        .and_then(Value::as_str)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    line(
        &format!("CAS increments, {} writers", opts.concurrency),
        rate(w as usize, elapsed),
        "ok/s",
        anchor,
    );
    println!(
        "  {w} successful, {x} conflicts (409), counter = {final_n} (must equal successes: {})",
        final_n == w
    );
    Ok(())
}
