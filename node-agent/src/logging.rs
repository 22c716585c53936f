//! Log setup: text or JSON lines on stderr, level or full tracing filter.

use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// Installs the global subscriber. `level` is a level ("info") or a filter
/// ("info,margay_bgp=debug"); an invalid one falls back to info with a
/// warning instead of silencing the agent.
pub fn init(level: &str, format: LogFormat) {
    let (filter, bad) = match EnvFilter::try_new(level) {
        Ok(f) => (f, None),
        Err(e) => (EnvFilter::new("info"), Some(e.to_string())),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(true);
    let res = match format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Text => builder.try_init(),
    };
    if let Err(e) = res {
        eprintln!("logging already initialised: {e}");
    }
    if let Some(e) = bad {
        tracing::warn!(level, error = %e, "invalid log level; using info");
    }
}
