//! The on-node release journal: what a DEL could not tell the agent.
//!
//! The CNI spec asks DEL to succeed wherever it can; a runtime whose DEL
//! fails marks the sandbox unknown and retries it forever. So when the
//! agent is unreachable (down, restarting, its socket gone), DEL tears down
//! what it can locally, writes one entry here and succeeds; the agent
//! replays the journal when it starts (and periodically), taking the
//! endpoint down and releasing the handle's addresses, then removes the
//! entry. Release is by handle, which names one attachment for ever (a
//! container ID is never reused), so a replayed entry cannot free an
//! address someone else holds now, and replaying it twice is harmless.
//!
//! ```text
//!  margay DEL ──agent unreachable──► <dir>/<sha1(handle)>.json (write tmp, fsync, rename)
//!  margay-node start / every period ──► read entries ──► EndpointDown + Release ──► remove entry
//! ```
//!
//! The directory is on the host's persistent disk (`/var/lib/margay`), so
//! an entry survives a reboot between the DEL and the agent's start.

use std::fs;
use std::io::{self, Write as _};
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha1::{Digest as _, Sha1};

/// Where the plugin writes and the agent reads, unless configured.
pub const DEFAULT_DIR: &str = "/var/lib/margay/cni-journal";

/// One DEL the agent has not seen.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// The IPAM handle to release.
    pub handle: String,
    /// CNI_CONTAINERID of the DEL.
    pub container_id: String,
    /// CNI_IFNAME of the DEL.
    pub ifname: String,
    /// The pod, if the runtime named it (for the agent's log).
    #[serde(default)]
    pub pod_namespace: String,
    /// The pod's name.
    #[serde(default)]
    pub pod_name: String,
    /// The host veth name the DEL worked on.
    #[serde(default)]
    pub host_if: String,
    /// Why the agent was not told directly.
    #[serde(default)]
    pub reason: String,
    /// When the DEL ran (seconds since the epoch).
    #[serde(default)]
    pub recorded_at: u64,
}

/// Why the journal could not be used.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    /// A file-system operation failed.
    #[error("release journal {path}: {what}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// What was being done.
        what: &'static str,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// An entry could not be encoded or decoded.
    #[error("release journal entry {path}: {source}")]
    Format {
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: serde_json::Error,
    },
}

fn io_err(path: &Path, what: &'static str) -> impl FnOnce(io::Error) -> JournalError {
    let path = path.to_path_buf();
    move |source| JournalError::Io { path, what, source }
}

/// The entry file of `handle` in `dir` (one per handle: a repeated DEL
/// rewrites the same entry).
pub fn entry_path(dir: &Path, handle: &str) -> PathBuf {
    dir.join(format!(
        "{}.json",
        hex::encode(Sha1::digest(handle.as_bytes()))
    ))
}

/// Records `e` durably (temporary file, fsync, rename, fsync of the
/// directory), creating `dir` (0700) if needed. Returns the entry's path.
pub fn record(dir: &Path, e: &Entry) -> Result<PathBuf, JournalError> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(io_err(dir, "create directory"))?;
    let path = entry_path(dir, &e.handle);
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let body = serde_json::to_vec_pretty(e).map_err(|source| JournalError::Format {
        path: path.clone(),
        source,
    })?;
    let write = || -> io::Result<()> {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(&body)?;
        f.sync_all()
    };
    if let Err(source) = write() {
        let _ = fs::remove_file(&tmp);
        return Err(JournalError::Io {
            path: tmp,
            what: "write",
            source,
        });
    }
    fs::rename(&tmp, &path).map_err(io_err(&path, "rename into place"))?;
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir, "sync directory"))?;
    Ok(path)
}

/// An entry file and what it holds (or why it could not be read).
pub type Listed = (PathBuf, Result<Entry, JournalError>);

/// Every entry in `dir` (none if it does not exist), oldest first. An
/// unreadable or undecodable file is returned as an error in its place, so
/// the caller can log it and move it aside; leftovers of an interrupted
/// write (`*.tmp*`) are skipped.
pub fn entries(dir: &Path) -> Result<Vec<Listed>, JournalError> {
    let rd = match fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_err(dir, "read directory")(e)),
    };
    let mut out = Vec::new();
    for de in rd {
        let de = de.map_err(io_err(dir, "read directory"))?;
        let path = de.path();
        if path.extension().and_then(|x| x.to_str()) != Some("json") {
            continue;
        }
        let entry = fs::read(&path)
            .map_err(io_err(&path, "read"))
            .and_then(|b| {
                serde_json::from_slice::<Entry>(&b).map_err(|source| JournalError::Format {
                    path: path.clone(),
                    source,
                })
            });
        out.push((path, entry));
    }
    out.sort_by_key(|(p, e)| (e.as_ref().map(|e| e.recorded_at).unwrap_or(0), p.clone()));
    Ok(out)
}

/// Removes an entry once the agent has acted on it (a missing file is fine).
pub fn remove(path: &Path) -> Result<(), JournalError> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_err(path, "remove")(e)),
    }
}

/// Seconds since the epoch, now.
pub fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(handle: &str, at: u64) -> Entry {
        Entry {
            handle: handle.into(),
            container_id: "c".into(),
            ifname: "eth0".into(),
            pod_namespace: "ns".into(),
            pod_name: "p".into(),
            host_if: "cali0123456789a".into(),
            reason: "agent unreachable".into(),
            recorded_at: at,
        }
    }

    #[test]
    fn entries_round_trip_one_per_handle_oldest_first() {
        let dir = tempfile::tempdir().unwrap();
        let j = dir.path().join("journal");
        assert!(entries(&j).unwrap().is_empty(), "absent directory: empty");
        record(&j, &entry("net.b", 20)).unwrap();
        let a = record(&j, &entry("net.a", 10)).unwrap();
        // A repeated DEL of one handle rewrites its entry.
        assert_eq!(record(&j, &entry("net.a", 30)).unwrap(), a);
        let got: Vec<Entry> = entries(&j)
            .unwrap()
            .into_iter()
            .map(|(_, e)| e.unwrap())
            .collect();
        assert_eq!(got, vec![entry("net.b", 20), entry("net.a", 30)]);
        use std::os::unix::fs::PermissionsExt as _;
        assert_eq!(
            fs::metadata(&j).unwrap().permissions().mode() & 0o777,
            0o700
        );
        assert_eq!(
            fs::metadata(&a).unwrap().permissions().mode() & 0o777,
            0o600
        );
        remove(&a).unwrap();
        remove(&a).unwrap();
        assert_eq!(entries(&j).unwrap().len(), 1);
    }

    #[test]
    fn a_damaged_entry_is_reported_not_fatal() {
        let dir = tempfile::tempdir().unwrap();
        record(dir.path(), &entry("net.a", 1)).unwrap();
        fs::write(dir.path().join("junk.json"), b"{not json").unwrap();
        fs::write(dir.path().join("x.tmp123"), b"half").unwrap();
        let got = entries(dir.path()).unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!(got.iter().filter(|(_, e)| e.is_err()).count(), 1);
        let err = got.iter().find_map(|(_, e)| e.as_ref().err()).unwrap();
        assert!(err.to_string().contains("junk.json"), "{err}");
    }
}
