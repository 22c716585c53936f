//! The hook behind `/policy/trace` on the loopback listener: set once the
//! dataplane controller runs (`crate::endpoints::trace`), called with the
//! request's query, answering an HTTP status and a JSON body.

use std::fmt::Write as _;

use futures::future::BoxFuture;

/// A query string that does not decode.
#[derive(Debug, thiserror::Error)]
#[error("query: {0}")]
pub struct QueryError(String);

/// Answers a `/policy/trace` query: (HTTP status, JSON body).
pub type TraceFn =
    dyn Fn(Vec<(String, String)>) -> BoxFuture<'static, (u16, serde_json::Value)> + Send + Sync;

/// The installed hook.
pub struct Tracer(Box<TraceFn>);

impl Tracer {
    /// Wraps `f`.
    pub fn new(
        f: impl Fn(Vec<(String, String)>) -> BoxFuture<'static, (u16, serde_json::Value)>
        + Send
        + Sync
        + 'static,
    ) -> Tracer {
        Tracer(Box::new(f))
    }

    /// Runs one trace.
    pub fn call(
        &self,
        query: Vec<(String, String)>,
    ) -> BoxFuture<'static, (u16, serde_json::Value)> {
        (self.0)(query)
    }
}

impl std::fmt::Debug for Tracer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Tracer")
    }
}

/// Percent-encodes a query value (everything but unreserved characters).
pub fn encode_query_value(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// Reads `a=b&c=d` with percent-escapes (and `+` as space).
pub fn decode_query(q: &str) -> Result<Vec<(String, String)>, QueryError> {
    let unescape = |s: &str| -> Result<String, QueryError> {
        let b = s.as_bytes();
        let mut out = Vec::with_capacity(b.len());
        let mut i = 0;
        while i < b.len() {
            match b[i] {
                b'%' => {
                    let hex = b
                        .get(i + 1..i + 3)
                        .and_then(|h| std::str::from_utf8(h).ok())
                        .and_then(|h| u8::from_str_radix(h, 16).ok())
                        .ok_or_else(|| QueryError(format!("bad escape in {s:?}")))?;
                    out.push(hex);
                    i += 3;
                }
                b'+' => {
                    out.push(b' ');
                    i += 1;
                }
                c => {
                    out.push(c);
                    i += 1;
                }
            }
        }
        String::from_utf8(out).map_err(|_| QueryError(format!("{s:?} is not UTF-8")))
    };
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            Ok((unescape(k)?, unescape(v)?))
        })
        .collect()
}
