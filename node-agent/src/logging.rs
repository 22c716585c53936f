//! Log setup: text or JSON lines on stderr, level or full tracing filter.

use clap::ValueEnum;
use tracing_subscriber::EnvFilter;

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

static RELOAD: std::sync::OnceLock<(
    tracing_subscriber::reload::Handle<EnvFilter, tracing_subscriber::Registry>,
    String,
)> = std::sync::OnceLock::new();

/// Installs the global subscriber. `level` is a level ("info") or a filter
/// ("info,margay_bgp=debug"); an invalid one falls back to info with a
/// warning instead of silencing the agent. The filter can be changed later
/// with [`set_level`].
pub fn init(level: &str, format: LogFormat) {
    use std::io::IsTerminal as _;
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    let (filter, bad) = match EnvFilter::try_new(level) {
        Ok(f) => (f, None),
        Err(e) => (EnvFilter::new("info"), Some(e.to_string())),
    };
    let (filter, handle) = tracing_subscriber::reload::Layer::new(filter);
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(true);
    let registry = tracing_subscriber::registry().with(filter);
    let res = match format {
        LogFormat::Json => registry.with(fmt.json().flatten_event(true)).try_init(),
        LogFormat::Text => registry.with(fmt).try_init(),
    };
    if let Err(e) = res {
        eprintln!("logging already initialised: {e}");
        return;
    }
    let _ = RELOAD.set((handle, level.to_string()));
    if let Some(e) = bad {
        tracing::warn!(level, error = %e, "invalid log level; using info");
    }
}

/// Changes the log filter at run time; `None` restores the one given at
/// start (flag / environment).
pub fn set_level(level: Option<&str>) -> Result<(), String> {
    let Some((handle, initial)) = RELOAD.get() else {
        return Err("logging is not initialised".into());
    };
    let wanted = level.unwrap_or(initial);
    let filter = EnvFilter::try_new(wanted).map_err(|e| format!("{wanted:?}: {e}"))?;
    handle.reload(filter).map_err(|e| e.to_string())
}

/// An error and every cause below it, "outer: inner: innermost" — what an
/// operator needs in one log line.
pub fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        let text = s.to_string();
        // Some errors repeat their source in their own message.
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cur = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    #[derive(Debug, thiserror::Error)]
    #[error("outer")]
    struct Outer(#[source] std::io::Error);

    #[test]
    fn chain_shows_every_cause_once() {
        let e = Outer(std::io::Error::other("connection refused"));
        assert_eq!(super::chain(&e), "outer: connection refused");
    }
}
