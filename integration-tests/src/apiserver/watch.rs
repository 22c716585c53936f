//! Streams one watch: initial events, then live events from the broadcast,
//! as newline-delimited JSON, with bookmarks and a timeout. A watcher that
//! falls further behind than the broadcast buffer is closed (the client
//! resumes from its last resourceVersion), so memory stays bounded.

use std::sync::Arc;
use std::time::Duration;

use hyper::body::Bytes;
use serde_json::{Value, json};
use tokio::sync::{broadcast, mpsc};
use tracing::{Instrument as _, debug};

use super::object::Obj;
use super::resources::ResourceDef;
use super::store::{Event, Initial, WatchStart, watch_line, watch_line_raw};
use super::table::{Output, at_version, partial, table};

/// Frames waiting in the HTTP body before the producer blocks.
const BODY_BUFFER: usize = 64;

/// Knobs of one watch stream.
#[derive(Debug, Clone, Copy)]
pub struct StreamOpts {
    /// Rendering.
    pub output: Output,
    /// End the stream after this long.
    pub timeout: Duration,
    /// Send BOOKMARK events this often (`None` = not asked for).
    pub bookmark_every: Option<Duration>,
    /// Each change reaches the watcher this long after its commit (the
    /// real server's watch cache and network; not cumulative).
    pub delivery_delay: Duration,
}

fn line(kind: &str, object: Value) -> Bytes {
    watch_line(kind, &object)
}

/// The watch line of `obj` as `output` wants it: its stored text when
/// that is what is asked for.
fn obj_line(def: &ResourceDef, output: Output, kind: &str, obj: &Obj) -> Bytes {
    if output == Output::Json && obj.api_version() == def.api_version() {
        watch_line_raw(kind, obj.json())
    } else {
        line(kind, render(def, output, &obj.value()))
    }
}

fn render(def: &ResourceDef, output: Output, obj: &Value) -> Value {
    match output {
        Output::Json => at_version(def, obj),
        Output::Partial => partial(obj),
        Output::Table(version, include) => {
            let rv = obj
                .pointer("/metadata/resourceVersion")
                .and_then(Value::as_str)
                .and_then(|s| s.parse().ok())
                .unwrap_or(0);
            table(def, version, include, &[obj], rv, None)
        }
    }
}

fn bookmark(def: &ResourceDef, rv: u64, initial_end: bool) -> Value {
    let mut meta = json!({"resourceVersion": rv.to_string()});
    if initial_end {
        meta["annotations"] = json!({"k8s.io/initial-events-end": "true"});
    }
    json!({"kind": def.kind, "apiVersion": def.api_version(), "metadata": meta})
}

/// Spawns the producer; returns the receiving end of the body.
pub fn spawn(
    def: Arc<ResourceDef>,
    start: WatchStart,
    rx: broadcast::Receiver<Arc<Event>>,
    opts: StreamOpts,
) -> mpsc::Receiver<Bytes> {
    let (tx, body) = mpsc::channel(BODY_BUFFER);
    let span = tracing::debug_span!("watch", resource = %def.plural, ns = ?start.filter.namespace);
    tokio::spawn(produce(def, start, rx, opts, tx).instrument(span));
    body
}

async fn produce(
    def: Arc<ResourceDef>,
    start: WatchStart,
    mut rx: broadcast::Receiver<Arc<Event>>,
    opts: StreamOpts,
    tx: mpsc::Sender<Bytes>,
) {
    let deadline = tokio::time::sleep(opts.timeout);
    tokio::pin!(deadline);
    // Sends one line unless the deadline passes or the client goes away.
    macro_rules! send {
        ($bytes:expr) => {
            tokio::select! {
                r = tx.send($bytes) => if r.is_err() { return },
                _ = &mut deadline => return,
            }
        };
    }
    if let Some(err) = start.expired {
        send!(line("ERROR", err.to_status()));
        return;
    }
    let mut last_rv = start.rv;
    for item in start.initial {
        match item {
            Initial::Event(t, obj) => send!(obj_line(&def, opts.output, t.as_str(), &obj)),
            Initial::InitialEventsEnd(rv) => send!(line("BOOKMARK", bookmark(&def, rv, true))),
        }
    }
    let api_version = def.api_version();
    let period = opts.bookmark_every.unwrap_or(Duration::from_secs(3600));
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    loop {
        tokio::select! {
            _ = &mut deadline => return,
            _ = tx.closed() => return,
            _ = ticker.tick(), if opts.bookmark_every.is_some() => {
                send!(line("BOOKMARK", bookmark(&def, last_rv, false)));
            }
            r = rx.recv() => match r {
                Ok(ev) => {
                    if ev.rv <= last_rv {
                        continue;
                    }
                    last_rv = ev.rv;
                    if !opts.delivery_delay.is_zero() {
                        tokio::select! {
                            _ = tokio::time::sleep_until(ev.at + opts.delivery_delay) => {}
                            _ = &mut deadline => return,
                        }
                    }
                    if let Some((t, obj)) = start.filter.classify(&ev) {
                        let as_stored = opts.output == Output::Json
                            && obj.api_version() == api_version;
                        if as_stored {
                            send!(ev.line(t));
                        } else {
                            send!(line(t.as_str(), render(&def, opts.output, &obj.value())));
                        }
                    }
                }
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    // As the real watch cache does: close, the client resumes
                    // from its last resourceVersion.
                    debug!(missed = n, "slow watcher closed");
                    return;
                }
                Err(broadcast::error::RecvError::Closed) => return,
            }
        }
    }
}
