//! The state file: every object with its resource, and the revision, written
//! atomically (temp file, fsync, rename, fsync of the directory) from
//! debounced snapshots; read back at start so a restart keeps objects,
//! uids and resourceVersions.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::{Value, json};
use tokio::sync::watch;
use tracing::{debug, error};

use super::error::ServerError;
use super::object::{Obj, keeps_parsed};
use super::resources::GroupResource;
use super::store::Snapshot;

const FORMAT: u64 = 1;

/// Reads a state file; `Ok(None)` if it does not exist.
pub fn load(path: &Path) -> Result<Option<Snapshot>, ServerError> {
    let raw = match std::fs::read(path) {
        Ok(r) => r,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(ServerError::ReadState {
                path: path.to_path_buf(),
                source,
            });
        }
    };
    let corrupt = |why: String| ServerError::CorruptState {
        path: path.to_path_buf(),
        why,
    };
    let doc: Value = serde_json::from_slice(&raw).map_err(|e| corrupt(e.to_string()))?;
    if doc.get("margayApiserverState").and_then(Value::as_u64) != Some(FORMAT) {
        return Err(corrupt(format!("not a format-{FORMAT} state file")));
    }
    let rv = doc
        .get("resourceVersion")
        .and_then(Value::as_str)
        .and_then(|s| s.parse::<u64>().ok())
        .ok_or_else(|| corrupt("resourceVersion missing".into()))?;
    let mut objects = Vec::new();
    for (i, o) in doc
        .get("objects")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
    {
        let group = o.get("group").and_then(Value::as_str);
        let plural = o.get("resource").and_then(Value::as_str);
        let obj = o.get("object").filter(|v| v.is_object());
        let (Some(group), Some(plural), Some(obj)) = (group, plural, obj) else {
            return Err(corrupt(format!("objects[{i}] is malformed")));
        };
        let gr = GroupResource {
            group: group.into(),
            plural: plural.into(),
        };
        let keep = keeps_parsed(&gr);
        // Field values are taken when the store knows the resources.
        objects.push((gr, Obj::new(Arc::new(obj.clone()), keep, &[])));
    }
    Ok(Some(Snapshot { rv, objects }))
}

/// Writes a snapshot atomically.
pub fn save(path: &Path, snap: &Snapshot) -> Result<(), ServerError> {
    let err = |source| ServerError::WriteState {
        path: path.to_path_buf(),
        source,
    };
    // Written by hand around each object's stored text (no tree of it all).
    let head = json!({"margayApiserverState": FORMAT, "resourceVersion": snap.rv.to_string()});
    let head = serde_json::to_vec(&head).map_err(|e| err(std::io::Error::other(e)))?;
    let mut bytes = Vec::with_capacity(
        64 + snap
            .objects
            .iter()
            .map(|(_, o)| o.json().len() + 64)
            .sum::<usize>(),
    );
    bytes.extend_from_slice(&head[..head.len().saturating_sub(1)]);
    bytes.extend_from_slice(b",\"objects\":[");
    for (i, (gr, o)) in snap.objects.iter().enumerate() {
        if i > 0 {
            bytes.push(b',');
        }
        let h = json!({"group": gr.group, "resource": gr.plural});
        let h = serde_json::to_vec(&h).map_err(|e| err(std::io::Error::other(e)))?;
        bytes.extend_from_slice(&h[..h.len().saturating_sub(1)]);
        bytes.extend_from_slice(b",\"object\":");
        bytes.extend_from_slice(o.json());
        bytes.push(b'}');
    }
    bytes.extend_from_slice(b"]}");
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "state".into());
    let tmp: PathBuf = dir.join(format!(".{file_name}.tmp{}", std::process::id()));
    let mut f = std::fs::File::create(&tmp).map_err(err)?;
    f.write_all(&bytes).map_err(err)?;
    f.sync_all().map_err(err)?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(err)?;
    if let Ok(d) = std::fs::File::open(dir) {
        // Best effort: some filesystems refuse fsync on directories.
        let _ = d.sync_all();
    }
    Ok(())
}

/// Writes every snapshot it is handed until the sender is dropped (after
/// writing the last one). Returns the last error, if any.
pub async fn run(
    path: PathBuf,
    mut rx: watch::Receiver<Option<Arc<Snapshot>>>,
) -> Result<(), ServerError> {
    let mut last = Ok(());
    loop {
        if rx.changed().await.is_err() {
            return last;
        }
        let snap = rx.borrow_and_update().clone();
        if let Some(snap) = snap {
            let p = path.clone();
            let rv = snap.rv;
            let r = tokio::task::spawn_blocking(move || save(&p, &snap))
                .await
                .unwrap_or_else(|e| {
                    Err(ServerError::WriteState {
                        path: path.clone(),
                        source: std::io::Error::other(e),
                    })
                });
            match &r {
                Ok(()) => debug!(rv, path = %path.display(), "state saved"),
                Err(e) => error!(error = %e, "cannot save state"),
            }
            last = r;
        }
    }
}
