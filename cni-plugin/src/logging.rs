//! Logs go to the file named in the configuration (`log_file`,
//! `log_level`), never to stdout, which carries the CNI result.

use std::fs::OpenOptions;
use std::sync::Mutex;

use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use crate::config::{LogLevel, NetConf};

fn level(l: LogLevel) -> LevelFilter {
    match l {
        LogLevel::Error => LevelFilter::ERROR,
        LogLevel::Warn => LevelFilter::WARN,
        LogLevel::Info => LevelFilter::INFO,
        LogLevel::Debug => LevelFilter::DEBUG,
        LogLevel::Trace => LevelFilter::TRACE,
    }
}

/// The plugin's own events at `lvl`; libraries (h2, tower, netlink) only
/// from WARN up, so a debug log shows the plugin's steps, not HTTP/2 frames.
fn filter(lvl: LevelFilter) -> Targets {
    Targets::new()
        .with_target("cni_plugin", lvl)
        .with_target("margay", lvl)
        .with_default(lvl.min(LevelFilter::WARN))
}

/// Installs the global subscriber: the configured file at the configured
/// level, or warnings and errors on stderr when no file is configured (or
/// it cannot be opened).
pub fn init(conf: &NetConf) {
    let lvl = level(conf.log_level.unwrap_or_default());
    if let Some(path) = &conf.log_file {
        if let Some(dir) = path.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        match OpenOptions::new().create(true).append(true).open(path) {
            Ok(f) => {
                let _ = tracing_subscriber::registry()
                    .with(
                        tracing_subscriber::fmt::layer()
                            .with_writer(Mutex::new(f))
                            .with_ansi(false),
                    )
                    .with(filter(lvl))
                    .try_init();
                return;
            }
            Err(e) => {
                eprintln!("margay: cannot open log file {}: {e}", path.display());
            }
        }
    }
    let _ = tracing_subscriber::registry()
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_ansi(false),
        )
        .with(filter(lvl.min(LevelFilter::WARN)))
        .try_init();
}
