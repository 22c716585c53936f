//! `margay-apiserver`: the Kubernetes API test server as a process (the lab
//! starts it inside the ToR namespace; stopping the process simulates an
//! API server outage).
//!
//! ```text
//! margay-apiserver --listen 198.18.0.1:6443 --state /run/margay-lab/api.json \
//!                  --addr-file /run/margay-lab/api.addr --kubeconfig /run/margay-lab/kubeconfig
//! ```
//! Prints `listening on http://ADDR` on stdout once it accepts connections.
//! SIGTERM/SIGINT: close connections, write the state file, exit 0.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use integration_tests::apiserver::bench::{self, BenchOpts};
use integration_tests::apiserver::{ADMIN_TOKEN, ApiServer, Config, kubeconfig};
use tokio::signal::unix::{SignalKind, signal};

#[derive(Parser, Debug)]
#[command(
    version,
    about = "Kubernetes API test server (HTTPS with its own CA, bearer tokens, RBAC)"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Option<Cmd>,
    /// Address to listen on; port 0 picks a free port (see --addr-file).
    #[arg(long, default_value = "127.0.0.1:6443")]
    listen: SocketAddr,
    /// Keep objects in this file (atomic writes, reloaded at start).
    #[arg(long)]
    state: Option<PathBuf>,
    /// Write the bound address (`IP:PORT`) to this file once listening.
    #[arg(long)]
    addr_file: Option<PathBuf>,
    /// Write a kubeconfig pointing at the server to this file.
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// Delay between a change and its delivery to watchers, in
    /// milliseconds (a real API server's watch cache and network).
    #[arg(long, default_value_t = 0)]
    watch_delay_ms: u64,
    /// Artificial latency per request, in milliseconds.
    #[arg(long, default_value_t = 0)]
    latency_ms: u64,
    /// Changes kept for watch resumption (older resourceVersions get 410).
    #[arg(long, default_value_t = 10_000)]
    history: usize,
    /// Events a watcher may lag before it is closed.
    #[arg(long, default_value_t = 4096)]
    watch_buffer: usize,
    /// BOOKMARK period in milliseconds for watches that allow them.
    #[arg(long, default_value_t = 5000)]
    bookmark_interval_ms: u64,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Measure throughput against an in-process server and print the figures.
    Bench {
        /// Objects to create, get and list.
        #[arg(long, default_value_t = 5000)]
        objects: usize,
        /// Concurrent clients.
        #[arg(long, default_value_t = 16)]
        concurrency: usize,
        /// Watchers for the fan-out phase.
        #[arg(long, default_value_t = 100)]
        watchers: usize,
        /// Updates every watcher must see (also the CAS goal).
        #[arg(long, default_value_t = 1000)]
        updates: usize,
    },
}

fn write_atomic(path: &PathBuf, contents: &str) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, contents).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming to {}", path.display()))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    if let Some(Cmd::Bench {
        objects,
        concurrency,
        watchers,
        updates,
    }) = cli.cmd
    {
        let opts = BenchOpts {
            objects,
            concurrency,
            watchers,
            updates,
            latency: Duration::from_millis(cli.latency_ms),
        };
        return bench::run(&opts).await.context("benchmark");
    }
    let config = Config {
        listen: cli.listen,
        state_file: cli.state.clone(),
        latency: Duration::from_millis(cli.latency_ms),
        watch_delay: Duration::from_millis(cli.watch_delay_ms),
        history_limit: cli.history,
        watch_buffer: cli.watch_buffer,
        bookmark_interval: Duration::from_millis(cli.bookmark_interval_ms.max(1)),
        ..Config::default()
    };
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let server = ApiServer::start(config)
        .await
        .context("starting the API server")?;
    if let Some(p) = &cli.addr_file {
        write_atomic(p, &format!("{}\n", server.addr()))?;
    }
    if let Some(p) = &cli.kubeconfig {
        write_atomic(
            p,
            &kubeconfig(&server.url(), &server.tls().ca_data(), ADMIN_TOKEN),
        )?;
    }
    println!("listening on {}", server.url());
    tokio::select! {
        _ = term.recv() => {}
        r = tokio::signal::ctrl_c() => r.context("waiting for SIGINT")?,
    }
    server.shutdown().await.context("stopping the API server")?;
    Ok(())
}
