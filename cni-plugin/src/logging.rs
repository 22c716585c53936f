//! Logs go to the file named in the configuration (`log_file`,
//! `log_level`), never to stdout, which carries the CNI result. The file is
//! capped: once it exceeds `log_max_bytes` (default 10 MiB) it is renamed
//! to `<file>.1` (replacing the previous one) and a new one is started, so
//! a node that creates pods for months keeps at most two files.

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

/// Moves `path` to `<path>.1` when it is larger than `max` bytes. Two
/// plugins racing here both rename; one of them renames the other's fresh
/// (empty or tiny) file, which loses at most a few lines of that moment.
pub fn rotate_if_large(path: &std::path::Path, max: u64) {
    if std::fs::metadata(path).is_ok_and(|m| m.len() > max) {
        let mut old = path.as_os_str().to_owned();
        old.push(".1");
        let _ = std::fs::rename(path, old);
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
        rotate_if_large(path, conf.log_max_bytes());
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_large_log_is_rotated_once() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("cni.log");
        std::fs::write(&log, vec![b'x'; 100]).unwrap();
        rotate_if_large(&log, 1000);
        assert!(log.exists() && !dir.path().join("cni.log.1").exists());
        rotate_if_large(&log, 50);
        assert!(!log.exists());
        assert_eq!(
            std::fs::read(dir.path().join("cni.log.1")).unwrap().len(),
            100
        );
        rotate_if_large(&log, 50); // nothing there: nothing happens
        assert!(dir.path().join("cni.log.1").exists());
    }
}
