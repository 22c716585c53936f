//! A long-lived `nft -j -i` process: one JSON batch per line, each its own
//! transaction, on one netlink socket that stays open.
//!
//! Why: measured here (nft 1.0.6, kernel 6.18), a one-shot `nft` whose
//! transaction deletes anything (set elements, rules, chains) spends ~13 ms
//! in `close()` of its netlink socket after the commit, on top of ~2 ms of
//! process start-up. A persistent session commits the same batch in ~0.3 ms;
//! the kernel then frees the deleted objects in the background.
//!
//! Protocol: after each batch line we send a sentinel line (`add table inet
//! margay_sync` + `list table inet margay_sync`, which always succeeds and
//! prints one line). When that line arrives the batch has been processed;
//! anything nft wrote to stderr meanwhile is the batch's error. The sentinel
//! table is empty (no chains: no packet ever sees it). The session restarts
//! after a bounded number of batches (nft keeps its input history in memory)
//! and whenever nft dies or stops answering. `HOME=/dev/null` keeps nft from
//! writing that history to disk.

use std::ffi::OsString;
use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::os::fd::AsFd as _;
use std::process::{Child, ChildStderr, ChildStdin, Command, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::time::Duration;

use policy::Batch;
use policy::NftSink;

use super::NftError;

const SYNC_TABLE: &str = "margay_sync";
/// Restart after this many batches or bytes (bounds nft's history memory).
const MAX_BATCHES: u64 = 2_000;
const MAX_BYTES: u64 = 64 << 20;

struct Running {
    child: Child,
    stdin: ChildStdin,
    lines: Receiver<std::io::Result<String>>,
    stderr: ChildStderr,
    batches: u64,
    bytes: u64,
}

/// A persistent `nft -j -i` in the network namespace of the thread that
/// first uses it (or of a wrapper such as `ip netns exec`).
pub struct NftSession {
    program: OsString,
    prefix_args: Vec<OsString>,
    timeout: Duration,
    running: Option<Running>,
    sentinel: String,
    /// Batches applied (for metrics).
    pub applied: u64,
    /// Times the nft process was (re)started.
    pub spawns: u64,
}

impl std::fmt::Debug for NftSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NftSession")
            .field("program", &self.program)
            .field("running", &self.running.is_some())
            .field("applied", &self.applied)
            .field("spawns", &self.spawns)
            .finish()
    }
}

impl Default for NftSession {
    fn default() -> Self {
        NftSession::new()
    }
}

impl NftSession {
    /// `nft` from `PATH`.
    pub fn new() -> NftSession {
        NftSession::with_program("nft", Vec::<OsString>::new())
    }

    /// A custom program with arguments before nft's own.
    pub fn with_program<I, S>(program: impl Into<OsString>, prefix_args: I) -> NftSession
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        let sentinel = serde_json::json!({"nftables": [
            {"add": {"table": {"family": "inet", "name": SYNC_TABLE}}},
            {"list": {"table": {"family": "inet", "name": SYNC_TABLE}}},
        ]})
        .to_string();
        NftSession {
            program: program.into(),
            prefix_args: prefix_args.into_iter().map(Into::into).collect(),
            timeout: Duration::from_secs(60),
            running: None,
            sentinel,
            applied: 0,
            spawns: 0,
        }
    }

    fn spawn(&mut self) -> Result<Running, NftError> {
        let spawn_err = |source| NftError::Spawn {
            program: self.program.clone(),
            source,
        };
        let mut child = Command::new(&self.program)
            .args(&self.prefix_args)
            .args(["-j", "-i"])
            .env("HOME", "/dev/null")
            // nft -i starts editline, which wants a terminal description.
            .env("TERM", "dumb")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(spawn_err)?;
        let missing = || std::io::Error::other("child pipe missing");
        let stdin = child.stdin.take().ok_or_else(missing).map_err(spawn_err)?;
        let stdout = child.stdout.take().ok_or_else(missing).map_err(spawn_err)?;
        let stderr = child.stderr.take().ok_or_else(missing).map_err(spawn_err)?;
        // Errors are read without blocking once the sentinel has answered.
        let flags = nix::fcntl::fcntl(stderr.as_fd(), nix::fcntl::FcntlArg::F_GETFL)
            .map_err(|e| spawn_err(e.into()))?;
        let flags = nix::fcntl::OFlag::from_bits_truncate(flags) | nix::fcntl::OFlag::O_NONBLOCK;
        nix::fcntl::fcntl(stderr.as_fd(), nix::fcntl::FcntlArg::F_SETFL(flags))
            .map_err(|e| spawn_err(e.into()))?;
        let (tx, lines) = channel();
        std::thread::Builder::new()
            .name("nft-session-stdout".into())
            .spawn(move || {
                let mut r = BufReader::new(stdout);
                loop {
                    let mut line = String::new();
                    match r.read_line(&mut line) {
                        Ok(0) => break,
                        Ok(_) => {
                            if tx.send(Ok(line)).is_err() {
                                break;
                            }
                        }
                        Err(e) => {
                            let _ = tx.send(Err(e));
                            break;
                        }
                    }
                }
            })
            .map_err(spawn_err)?;
        self.spawns += 1;
        Ok(Running {
            child,
            stdin,
            lines,
            stderr,
            batches: 0,
            bytes: 0,
        })
    }

    fn stop(&mut self) {
        if let Some(mut r) = self.running.take() {
            drop(r.stdin);
            let _ = r.child.kill();
            let _ = r.child.wait();
        }
    }

    /// Applies one JSON document (must not contain a raw newline, which
    /// `serde_json::to_string` never produces) as one transaction.
    pub fn run_json(&mut self, payload: &str) -> Result<(), NftError> {
        if payload.contains('\n') {
            return Err(NftError::BatchRejected {
                stderr: "batch contains a raw newline".into(),
            });
        }
        let needs_restart = self
            .running
            .as_ref()
            .is_some_and(|r| r.batches >= MAX_BATCHES || r.bytes >= MAX_BYTES);
        if needs_restart {
            self.stop();
        }
        let mut r = match self.running.take() {
            Some(r) => r,
            None => self.spawn()?,
        };
        let result = self.exchange(&mut r, payload);
        match &result {
            // nft answered: keep the session even if the batch was rejected.
            Ok(()) | Err(NftError::BatchRejected { .. }) => {
                r.batches += 1;
                r.bytes += payload.len() as u64;
                self.running = Some(r);
            }
            Err(_) => {
                let _ = r.child.kill();
                let _ = r.child.wait();
            }
        }
        result
    }

    fn exchange(&self, r: &mut Running, payload: &str) -> Result<(), NftError> {
        let io_err = |source| NftError::Spawn {
            program: self.program.clone(),
            source,
        };
        // Whatever a previous batch left on stderr is not ours.
        let stale = drain(&mut r.stderr);
        if !stale.is_empty() {
            tracing::debug!(stderr = %stale, "nft session: stray stderr");
        }
        // Written as it is, then the sentinel: no copy of the payload (the
        // first full ruleset at 150k pods is ~8 MB of JSON; docs/scale.md).
        r.stdin.write_all(payload.as_bytes()).map_err(io_err)?;
        let tail = format!("\n{}\n", self.sentinel);
        r.stdin.write_all(tail.as_bytes()).map_err(io_err)?;
        r.stdin.flush().map_err(io_err)?;
        // The sentinel's answer on stdout ends the batch. An nft that cannot
        // work at all (no CAP_NET_ADMIN: "cache initialization failed")
        // only complains on stderr and never answers: when stderr has
        // spoken and stdout stays silent for a second, that is the answer.
        let started = std::time::Instant::now();
        let mut complaint = String::new();
        let mut complained_at: Option<std::time::Instant> = None;
        loop {
            match r.lines.recv_timeout(Duration::from_millis(100)) {
                Ok(Ok(_line)) => break,
                Ok(Err(e)) => return Err(io_err(e)),
                Err(RecvTimeoutError::Timeout) => {
                    let more = drain(&mut r.stderr);
                    if !more.is_empty() {
                        complaint.push_str(&more);
                        complained_at.get_or_insert_with(std::time::Instant::now);
                    }
                    if complained_at.is_some_and(|t| t.elapsed() >= Duration::from_secs(1)) {
                        return Err(io_err(std::io::Error::other(format!(
                            "nft answers only with errors: {}",
                            complaint.trim()
                        ))));
                    }
                    if started.elapsed() >= self.timeout {
                        return Err(io_err(std::io::Error::new(
                            std::io::ErrorKind::TimedOut,
                            "nft session did not answer",
                        )));
                    }
                }
                Err(RecvTimeoutError::Disconnected) => {
                    return Err(io_err(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        format!("nft session exited: {}", complaint.trim()),
                    )));
                }
            }
        }
        let mut err = complaint;
        err.push_str(&drain(&mut r.stderr));
        if err.trim().is_empty() {
            Ok(())
        } else {
            Err(NftError::BatchRejected {
                stderr: err.trim().to_string(),
            })
        }
    }
}

/// What editline prints when it finds no terminal description (an image
/// without terminfo): not an answer to any batch.
const EDITLINE_NOISE: [&str; 2] = [
    "Cannot read termcap database;",
    "using dumb terminal settings.",
];

/// Everything currently readable from a non-blocking pipe, without
/// editline's start-up noise.
fn drain(r: &mut ChildStderr) -> String {
    drain_raw(r)
        .lines()
        .filter(|l| !EDITLINE_NOISE.contains(&l.trim()))
        .map(|l| format!("{l}\n"))
        .collect()
}

fn drain_raw(r: &mut ChildStderr) -> String {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match r.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => break, // WouldBlock: nothing more for now
        }
        if out.len() > 1 << 20 {
            break;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

impl Drop for NftSession {
    fn drop(&mut self) {
        self.stop();
    }
}

impl NftSink for NftSession {
    type Error = NftError;

    fn apply(&mut self, batch: &Batch) -> Result<(), NftError> {
        let payload = batch.to_json().map_err(NftError::Encode)?;
        let span = tracing::debug_span!("nft_session_apply", bytes = payload.len());
        let _g = span.enter();
        self.run_json(&payload)?;
        self.applied += 1;
        Ok(())
    }

    fn apply_full(&mut self, rs: &policy::Ruleset) -> Result<(), NftError> {
        let payload = policy::nft::full_json(rs).map_err(NftError::Encode)?;
        let span = tracing::debug_span!("nft_session_apply_full", bytes = payload.len());
        let _g = span.enter();
        self.run_json(&payload)?;
        self.applied += 1;
        Ok(())
    }
}
