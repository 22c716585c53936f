//! `margay-node`: the per-node agent (and its `install-cni` init step).

use std::process::ExitCode;

use clap::Parser as _;
use node_agent::agent::config::{Cli, Command};

/// mimalloc (v2), not glibc's malloc: at 5,000 nodes / 150,000 pods the
/// agent spends ~17% less CPU per pod event with it and its RSS no longer
/// grows in churn; the peak at ready is the same (docs/scale.md, "The
/// allocator"). Feature `system-allocator` keeps glibc's, for heap
/// profilers that intercept `malloc` (heaptrack).
#[cfg(not(feature = "system-allocator"))]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    node_agent::logging::init(&cli.agent.log_level, cli.agent.log_format);
    match cli.command {
        Some(Command::InstallCni(args)) => match node_agent::agent::install_cni::install(&args) {
            Ok(done) => {
                tracing::info!(plugins_updated = ?done.binaries, config_updated = done.config, bin_dir = %args.bin_dir.display(), conf_dir = %args.conf_dir.display(), "CNI installed");
                ExitCode::SUCCESS
            }
            Err(e) => {
                tracing::error!(error = %node_agent::logging::chain(&e), "install-cni failed");
                ExitCode::FAILURE
            }
        },
        None | Some(Command::Run) => {
            let rt = match tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    tracing::error!(error = %e, "cannot start the runtime");
                    return ExitCode::FAILURE;
                }
            };
            match rt.block_on(node_agent::agent::run(cli.agent)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!(error = %node_agent::logging::chain(&e), "agent stopped");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
