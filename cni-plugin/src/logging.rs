//! Logs go to the file named in the configuration (`log_file`,
//! `log_level`), never to stdout, which carries the CNI result.

use std::fs::OpenOptions;
use std::sync::Mutex;

use tracing_subscriber::filter::LevelFilter;

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
                let _ = tracing_subscriber::fmt()
                    .with_writer(Mutex::new(f))
                    .with_ansi(false)
                    .with_max_level(lvl)
                    .try_init();
                return;
            }
            Err(e) => {
                eprintln!("margay: cannot open log file {}: {e}", path.display());
            }
        }
    }
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .with_max_level(lvl.min(LevelFilter::WARN))
        .try_init();
}
