//! Pod attachments as the node knows them: which allocations a re-created
//! sandbox supersedes, and the endpoint records kept across restarts (the
//! kernel side of host veths is `crate::dataplane::veth`).
//!
//! The host veth is named after the pod (`cali` + hash of
//! `<namespace>.<pod>`), so every sandbox the runtime creates for a pod
//! uses the same name; the CNI plugin marks the veth with its owner
//! (IFLA_IFALIAS = the attachment's IPAM handle, see
//! `cni_plugin::wiring::owner_alias`). The kernel's mark is the truth the
//! agent reads:
//! - the attachment whose handle is on the veth owns the pod's slot; other
//!   attachments of that slot (older sandboxes) are superseded: their
//!   endpoints are forgotten and their addresses released;
//! - an attachment whose veth is gone while its sandbox's namespace still
//!   exists (and its pod still runs) is re-wired with the plugin's own
//!   wiring code.
//!
//! Endpoints are kept on disk ([`Records`]) so that a restarted agent knows
//! each attachment's namespace and interface.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use sha1::Digest as _;

use crate::endpoints::Endpoint;
use crate::k8s::ipam::view::LocalAllocation;

/// Endpoint records in a directory of the agent's state, one JSON file per
/// IPAM handle.
#[derive(Debug, Clone)]
pub struct Records {
    dir: PathBuf,
}

/// A records operation failed.
#[derive(Debug, thiserror::Error)]
#[error("endpoint record {path}: {what}: {source}")]
pub struct RecordError {
    path: PathBuf,
    what: &'static str,
    #[source]
    source: io::Error,
}

impl Records {
    /// Records under `dir` (created on first write).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Records { dir: dir.into() }
    }

    fn path(&self, handle: &str) -> PathBuf {
        self.dir.join(format!(
            "{}.json",
            hex::encode(sha1::Sha1::digest(handle.as_bytes()))
        ))
    }

    /// Writes (or rewrites) the record of `ep`.
    pub fn save(&self, ep: &Endpoint) -> Result<(), RecordError> {
        let err = |path: &Path, what| {
            let path = path.to_path_buf();
            move |source| RecordError { path, what, source }
        };
        fs::create_dir_all(&self.dir).map_err(err(&self.dir, "create directory"))?;
        let path = self.path(&ep.handle);
        let tmp = path.with_extension("tmp");
        let body = serde_json::to_vec(ep).map_err(|e| RecordError {
            path: path.clone(),
            what: "encode",
            source: io::Error::other(e),
        })?;
        fs::write(&tmp, body).map_err(err(&tmp, "write"))?;
        fs::rename(&tmp, &path).map_err(err(&path, "rename into place"))
    }

    /// Forgets the record of `handle` (absent is fine).
    pub fn remove(&self, handle: &str) -> Result<(), RecordError> {
        let path = self.path(handle);
        match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(RecordError {
                path,
                what: "remove",
                source,
            }),
        }
    }

    /// Every readable record; an unreadable one is logged and skipped.
    pub fn load(&self) -> Vec<Endpoint> {
        let Ok(rd) = fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for de in rd.flatten() {
            let p = de.path();
            if p.extension().and_then(|x| x.to_str()) != Some("json") {
                continue;
            }
            match fs::read(&p)
                .map_err(|e| e.to_string())
                .and_then(|b| serde_json::from_slice::<Endpoint>(&b).map_err(|e| e.to_string()))
            {
                Ok(ep) => out.push(ep),
                Err(e) => {
                    tracing::warn!(record = %p.display(), error = %e, "unreadable endpoint record ignored")
                }
            }
        }
        out
    }
}

/// The network name of an endpoint's handle (`<network>.<container>[.<ifname>]`),
/// when the handle has that shape.
fn network_of(ep: &Endpoint) -> Option<&str> {
    let tail = if ep.ifname.is_empty() || ep.ifname == "eth0" {
        format!(".{}", ep.container_id)
    } else {
        format!(".{}.{}", ep.container_id, ep.ifname)
    };
    ep.handle.strip_suffix(&tail)
}

/// The local allocations that `owner`'s sandbox supersedes: same pod, same
/// network and interface, another sandbox. A handle is
/// `<network>.<container>[.<ifname>]`; one counts as another sandbox's only
/// if the part in the container's place has no `.` (container IDs are hex
/// in containerd and CRI-O), so another interface of the pod
/// (`<network>.<container>.net1`) is never taken for an old sandbox.
pub fn superseded_allocations<'a>(
    owner: &Endpoint,
    local: &'a [LocalAllocation],
) -> Vec<&'a LocalAllocation> {
    let Some(net) = network_of(owner) else {
        return Vec::new();
    };
    if owner.standalone() {
        return Vec::new();
    }
    let suffix = if owner.ifname.is_empty() || owner.ifname == "eth0" {
        String::new()
    } else {
        format!(".{}", owner.ifname)
    };
    local
        .iter()
        .filter(|a| a.namespace == owner.namespace && a.pod == owner.pod)
        .filter(|a| a.handle != owner.handle)
        .filter(|a| {
            a.handle
                .strip_prefix(net)
                .and_then(|r| r.strip_prefix('.'))
                .and_then(|r| r.strip_suffix(suffix.as_str()))
                .is_some_and(|cid| !cid.is_empty() && !cid.contains('.'))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ep(cid: &str, handle: &str, ifname: &str) -> Endpoint {
        Endpoint {
            container_id: cid.into(),
            namespace: "default".into(),
            pod: "web-0".into(),
            host_if: "cali0d7763386da".into(),
            ips: vec!["198.19.0.9".parse().unwrap()],
            handle: handle.into(),
            netns: "/run/netns/x".into(),
            ifname: ifname.into(),
        }
    }

    fn alloc(handle: &str, pod: &str) -> LocalAllocation {
        LocalAllocation {
            ip: "198.19.0.1".parse().unwrap(),
            namespace: "default".into(),
            pod: pod.into(),
            handle: handle.into(),
            borrowed: false,
            host_if: String::new(),
        }
    }

    #[test]
    fn an_old_sandbox_is_superseded_other_interfaces_and_pods_are_not() {
        let local = vec![
            alloc("k8s.net.aaa", "web-0"),      // older sandbox, same slot
            alloc("k8s.net.bbb", "web-0"),      // the owner itself
            alloc("k8s.net.aaa.net1", "web-0"), // old sandbox, other interface
            alloc("k8s.net.bbb.net1", "web-0"), // this sandbox, other interface
            alloc("k8s.net.ccc", "web-1"),      // another pod
            alloc("other.ddd", "web-0"),        // another network
        ];
        let owner = ep("bbb", "k8s.net.bbb", "eth0");
        let got: Vec<&str> = superseded_allocations(&owner, &local)
            .iter()
            .map(|a| a.handle.as_str())
            .collect();
        assert_eq!(got, vec!["k8s.net.aaa"]);
        let owner1 = ep("bbb", "k8s.net.bbb.net1", "net1");
        let got: Vec<&str> = superseded_allocations(&owner1, &local)
            .iter()
            .map(|a| a.handle.as_str())
            .collect();
        assert_eq!(got, vec!["k8s.net.aaa.net1"]);
        // A handle not of the documented shape supersedes nothing.
        let odd = ep("bbb", "whatever", "eth0");
        assert!(superseded_allocations(&odd, &local).is_empty());
        // A standalone workload has no pod slot.
        let mut lone = ep("bbb", "k8s.net.bbb", "eth0");
        lone.namespace.clear();
        lone.pod.clear();
        assert!(superseded_allocations(&lone, &local).is_empty());
    }

    #[test]
    fn records_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let r = Records::new(dir.path().join("endpoints"));
        assert!(r.load().is_empty());
        let a = ep("aaa", "k8s.net.aaa", "eth0");
        let b = ep("bbb", "k8s.net.bbb", "eth0");
        r.save(&a).unwrap();
        r.save(&b).unwrap();
        r.save(&b).unwrap();
        let mut got = r.load();
        got.sort_by(|x, y| x.handle.cmp(&y.handle));
        assert_eq!(got, vec![a.clone(), b]);
        r.remove("k8s.net.bbb").unwrap();
        r.remove("k8s.net.bbb").unwrap();
        assert_eq!(r.load(), vec![a]);
    }
}
