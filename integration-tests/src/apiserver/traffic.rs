//! What the server sent to whom: response body bytes, responses and body
//! frames (a watch sends one frame per event) per authenticated user,
//! resource and verb. A test-tool feature for benchmarks (how many bytes
//! an agent receives per pod event), read with `GET /margay/traffic`
//! (admin only, like the other `/margay/` hooks).
//!
//! Counted: the bytes of response bodies as they are handed to the
//! connection, so HTTP headers, chunked framing and TLS records (about
//! 30 bytes per watch event together) are not included. Requests that fail
//! authentication are not counted (there is no user to count them for).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};

use http_body_util::BodyExt as _;
use hyper::body::{Bytes, Frame, SizeHint};
use serde_json::{Value, json};

use super::http::Body;

/// A body that counts its data frames (and keeps the inner body's length,
/// so a full response still carries Content-Length).
struct Counted {
    inner: Body,
    c: Arc<Counters>,
}

impl hyper::body::Body for Counted {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let r = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(f))) = &r
            && let Some(d) = f.data_ref()
        {
            self.c.bytes.fetch_add(d.len() as u64, Ordering::Relaxed);
            self.c.frames.fetch_add(1, Ordering::Relaxed);
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Who asked for what; set by the router once the user is known.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Tag {
    /// Authenticated user name (`None`: not authenticated, not counted).
    pub user: Option<String>,
    /// Resource (`pods`, `pods/status`, `ipamblocks.crd.margay.dev`) or,
    /// for other paths, the path's first segment (`/api`, `/apis`, `/openapi`).
    pub resource: String,
    /// Verb (`get`, `list`, `watch`, `create`, ...).
    pub verb: String,
}

/// Counters of one (user, resource, verb).
#[derive(Debug, Default)]
pub struct Counters {
    responses: AtomicU64,
    bytes: AtomicU64,
    frames: AtomicU64,
}

/// Every counter of the server.
#[derive(Debug, Default)]
pub struct Traffic {
    by_key: Mutex<BTreeMap<(String, String, String), Arc<Counters>>>,
}

impl Traffic {
    fn counters(&self, user: &str, resource: &str, verb: &str) -> Arc<Counters> {
        // A poisoned lock only means a panic elsewhere mid-insert; the
        // map is still usable.
        let mut m = self.by_key.lock().unwrap_or_else(|p| p.into_inner());
        m.entry((user.to_string(), resource.to_string(), verb.to_string()))
            .or_default()
            .clone()
    }

    /// `body`, counted for `tag` as it is sent (unchanged if nobody is
    /// authenticated).
    pub fn count(&self, tag: &Tag, body: Body) -> Body {
        let Some(user) = &tag.user else {
            return body;
        };
        let c = self.counters(user, &tag.resource, &tag.verb);
        c.responses.fetch_add(1, Ordering::Relaxed);
        Counted { inner: body, c }.boxed_unsync()
    }

    /// The `/margay/traffic` document: one item per (user, resource, verb).
    pub fn report(&self) -> Value {
        let m = self.by_key.lock().unwrap_or_else(|p| p.into_inner());
        let items: Vec<Value> = m
            .iter()
            .map(|((user, resource, verb), c)| {
                json!({
                    "user": user,
                    "resource": resource,
                    "verb": verb,
                    "responses": c.responses.load(Ordering::Relaxed),
                    "bytes": c.bytes.load(Ordering::Relaxed),
                    "frames": c.frames.load(Ordering::Relaxed),
                })
            })
            .collect();
        json!({"kind": "MargayTraffic", "apiVersion": "margay.dev/test", "items": items})
    }
}

/// Sums of a `/margay/traffic` document for one user: (bytes, frames)
/// per `resource verb`, and the total bytes.
pub fn user_totals(report: &Value, user: &str) -> (BTreeMap<String, (u64, u64)>, u64) {
    let mut out = BTreeMap::new();
    let mut total = 0;
    for it in report["items"].as_array().into_iter().flatten() {
        if it["user"] != user {
            continue;
        }
        let bytes = it["bytes"].as_u64().unwrap_or(0);
        let frames = it["frames"].as_u64().unwrap_or(0);
        let key = format!(
            "{} {}",
            it["resource"].as_str().unwrap_or_default(),
            it["verb"].as_str().unwrap_or_default()
        );
        let e = out.entry(key).or_insert((0, 0));
        e.0 += bytes;
        e.1 += frames;
        total += bytes;
    }
    (out, total)
}
