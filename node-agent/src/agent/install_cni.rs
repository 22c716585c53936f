//! `margay-node install-cni`: what the DaemonSet's init container does —
//! put every plugin the conflist chains (`margay`, `portmap`, ...) from the
//! image's plugin directory into the host's CNI bin directory and write the
//! conflist, all atomically (a runtime never sees half a file), and only
//! when they differ from what is there. A chained plugin the image does not
//! ship must already be on the host, or nothing is installed.

use std::io::Write as _;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};

use crate::agent::config::InstallCniArgs;

/// What install-cni can fail on.
#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    /// The network configuration is not valid JSON or lacks `plugins`.
    #[error("CNI_NETWORK_CONFIG is not a usable conflist: {0}")]
    BadConfig(String),
    /// The conflist chains a plugin that neither the image nor the host has.
    #[error("the conflist chains {plugin:?}, but neither {shipped} nor {host} has it")]
    MissingPlugin {
        /// The plugin type.
        plugin: String,
        /// The image's plugin directory.
        shipped: String,
        /// The host's CNI bin directory.
        host: String,
    },
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> InstallError + '_ {
    move |source| InstallError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// What changed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Installed {
    /// The plugins (re)written.
    pub binaries: Vec<String>,
    /// The conflist was (re)written.
    pub config: bool,
}

/// Installs the chained plugins and the conflist as `args` say.
pub fn install(args: &InstallCniArgs) -> Result<Installed, InstallError> {
    let conf: serde_json::Value = serde_json::from_str(&args.network_config)
        .map_err(|e| InstallError::BadConfig(e.to_string()))?;
    let plugins = conf
        .get("plugins")
        .and_then(|p| p.as_array())
        .ok_or_else(|| InstallError::BadConfig("no \"plugins\" list".into()))?;
    if !plugins
        .iter()
        .any(|p| p.get("type") == Some(&"margay".into()))
    {
        return Err(InstallError::BadConfig(
            "no plugin of type \"margay\"".into(),
        ));
    }
    if conf.get("name").and_then(|n| n.as_str()).is_none() {
        return Err(InstallError::BadConfig("no \"name\"".into()));
    }
    let mut types: Vec<String> = plugins
        .iter()
        .filter_map(|p| p.get("type").and_then(|t| t.as_str()))
        .map(str::to_string)
        .collect();
    types.sort_unstable();
    types.dedup();
    // Every plugin is found (in the image, or already on the host) before
    // anything is written; then the plugins, then the conflist, so a
    // runtime never reads a conflist naming a plugin it cannot find.
    let mut shipped: Vec<(&str, Vec<u8>)> = Vec::new();
    for t in &types {
        if t.contains('/') || t.is_empty() {
            return Err(InstallError::BadConfig(format!("plugin type {t:?}")));
        }
        let src = args.plugins_dir.join(t);
        match std::fs::read(&src) {
            Ok(bin) => shipped.push((t, bin)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && args.bin_dir.join(t).exists() => {
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(InstallError::MissingPlugin {
                    plugin: t.to_string(),
                    shipped: args.plugins_dir.display().to_string(),
                    host: args.bin_dir.display().to_string(),
                });
            }
            Err(e) => return Err(io(&src)(e)),
        }
    }
    let mut binaries = Vec::new();
    for (t, bin) in shipped {
        if write_if_changed(&args.bin_dir.join(t), &bin, 0o755)? {
            binaries.push(t.to_string());
        }
    }
    // Every plugin of the chain must speak the conflist's version: a newer
    // one than a chained plugin supports makes every ADD fail (Debian's
    // portmap stops at 1.0.0). Write the highest version they all speak.
    let mut conf = conf;
    if let Some(want) = conf
        .get("cniVersion")
        .and_then(|v| v.as_str())
        .map(str::to_string)
    {
        let paths: Vec<(String, PathBuf)> = types
            .iter()
            .map(|t| (t.to_string(), args.bin_dir.join(t)))
            .collect();
        let got = negotiate_version(&want, &paths)?;
        if got != want {
            tracing::warn!(
                wanted = %want,
                written = %got,
                "a chained CNI plugin does not speak the conflist's version: writing the highest every plugin supports (GC and STATUS need 1.1.0)"
            );
            conf["cniVersion"] = serde_json::Value::String(got);
        }
    }
    let mut pretty =
        serde_json::to_vec_pretty(&conf).map_err(|e| InstallError::BadConfig(e.to_string()))?;
    pretty.push(b'\n');
    Ok(Installed {
        binaries,
        config: write_if_changed(&args.conf_dir.join(&args.conf_name), &pretty, 0o644)?,
    })
}

/// `1.0.0` → (1, 0, 0); unparsable parts count as 0.
fn version_key(v: &str) -> (u32, u32, u32) {
    let mut it = v.split('.').map(|p| p.parse().unwrap_or(0));
    (
        it.next().unwrap_or(0),
        it.next().unwrap_or(0),
        it.next().unwrap_or(0),
    )
}

/// The highest version, not above `want`, that every plugin lists in its
/// `VERSION` answer.
pub fn negotiate_version(
    want: &str,
    plugins: &[(String, PathBuf)],
) -> Result<String, InstallError> {
    let mut common: Option<Vec<String>> = None;
    for (t, path) in plugins {
        let supported = plugin_versions(path).map_err(|why| {
            InstallError::BadConfig(format!("chained plugin {t:?} ({}): {why}", path.display()))
        })?;
        common = Some(match common {
            None => supported,
            Some(c) => c.into_iter().filter(|v| supported.contains(v)).collect(),
        });
    }
    let Some(common) = common else {
        return Ok(want.to_string());
    };
    common
        .into_iter()
        .filter(|v| version_key(v) <= version_key(want))
        .max_by_key(|v| version_key(v))
        .ok_or_else(|| {
            InstallError::BadConfig(format!(
                "the chained plugins share no CNI version at or below {want}"
            ))
        })
}

/// A plugin's `supportedVersions` (CNI_COMMAND=VERSION).
fn plugin_versions(path: &Path) -> Result<Vec<String>, String> {
    use std::io::Write as _;
    let spawn = || {
        std::process::Command::new(path)
            .env_clear()
            .env("CNI_COMMAND", "VERSION")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
    };
    // A binary written a moment ago may still be open for writing in a child
    // another thread forked meanwhile (it holds the descriptor until its own
    // exec): exec then fails with ETXTBSY, for a few milliseconds at most.
    let mut tries = 0;
    let mut child = loop {
        match spawn() {
            Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) && tries < 50 => {
                tries += 1;
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            r => break r.map_err(|e| format!("cannot run it: {e}"))?,
        }
    };
    if let Some(mut i) = child.stdin.take() {
        let _ = i.write_all(br#"{"cniVersion":"0.4.0"}"#);
    }
    let out = child
        .wait_with_output()
        .map_err(|e| format!("cannot run it: {e}"))?;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .map_err(|e| format!("VERSION answered no JSON ({e})"))?;
    Ok(v["supportedVersions"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|x| x.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default())
}

/// Writes `content` to `path` through a temporary file and a rename, unless
/// it is already there; returns whether it wrote.
fn write_if_changed(path: &Path, content: &[u8], mode: u32) -> Result<bool, InstallError> {
    if std::fs::read(path).is_ok_and(|have| have == content) {
        return Ok(false);
    }
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.margay-tmp"));
    let mut f = std::fs::File::create(&tmp).map_err(io(&tmp))?;
    f.write_all(content).map_err(io(&tmp))?;
    f.sync_all().map_err(io(&tmp))?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode)).map_err(io(&tmp))?;
    // rename(2) replaces atomically, also a binary that is being executed.
    std::fs::rename(&tmp, path).map_err(io(path))?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stand-in plugin that answers VERSION with these versions.
    fn plugin(path: &Path, name: &str, versions: &str) {
        std::fs::write(
            path,
            format!(
                "#!/bin/sh\n# {name}\necho '{{\"cniVersion\":\"1.0.0\",\"supportedVersions\":[{versions}]}}'\n"
            ),
        )
        .expect("write plugin");
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    }

    fn args(dir: &Path, conf: &str) -> InstallCniArgs {
        let shipped = dir.join("image/opt/margay/cni");
        std::fs::create_dir_all(&shipped).expect("mkdir");
        plugin(
            &shipped.join("margay"),
            "margay",
            r#""0.4.0","1.0.0","1.1.0""#,
        );
        // Debian bookworm's portmap stops at 1.0.0.
        plugin(&shipped.join("portmap"), "portmap", r#""0.4.0","1.0.0""#);
        InstallCniArgs {
            plugins_dir: shipped,
            bin_dir: dir.join("opt/cni/bin"),
            conf_dir: dir.join("etc/cni/net.d"),
            conf_name: "10-margay.conflist".into(),
            network_config: conf.into(),
        }
    }

    const CONF: &str = r#"{"name":"k8s-pod-network","cniVersion":"1.0.0","plugins":[{"type":"margay"},{"type":"portmap"}]}"#;

    #[test]
    fn installs_once_then_leaves_identical_files_alone() {
        let dir = tempfile::tempdir().expect("tempdir");
        let a = args(dir.path(), CONF);
        assert_eq!(
            install(&a).expect("install"),
            Installed {
                binaries: vec!["margay".into(), "portmap".into()],
                config: true
            }
        );
        let bin = a.bin_dir.join("margay");
        let mode = std::fs::metadata(&bin).expect("stat").permissions().mode();
        assert_eq!(mode & 0o777, 0o755);
        let written: serde_json::Value = serde_json::from_slice(
            &std::fs::read(a.conf_dir.join("10-margay.conflist")).expect("read conf"),
        )
        .expect("json");
        assert_eq!(written["plugins"][0]["type"], "margay");
        assert_eq!(install(&a).expect("again"), Installed::default());
        plugin(
            &a.plugins_dir.join("margay"),
            "margay newer",
            r#""1.0.0","1.1.0""#,
        );
        assert_eq!(
            install(&a).expect("upgrade"),
            Installed {
                binaries: vec!["margay".into()],
                config: false
            }
        );
        assert!(
            std::fs::read_to_string(a.bin_dir.join("portmap"))
                .expect("portmap installed")
                .contains("# portmap")
        );
        let leftovers: Vec<_> = std::fs::read_dir(&a.bin_dir)
            .expect("ls")
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().contains("margay-tmp"))
            .collect();
        assert!(leftovers.is_empty());
    }

    /// A conflist at 1.1.0 chaining a plugin that stops at 1.0.0 would fail
    /// every ADD: it is written at the highest version all speak.
    #[test]
    fn the_conflist_version_is_one_every_chained_plugin_speaks() {
        let dir = tempfile::tempdir().expect("tempdir");
        let a = args(
            dir.path(),
            r#"{"name":"n","cniVersion":"1.1.0","plugins":[{"type":"margay"},{"type":"portmap"}]}"#,
        );
        install(&a).expect("install");
        let written: serde_json::Value = serde_json::from_slice(
            &std::fs::read(a.conf_dir.join("10-margay.conflist")).expect("conf"),
        )
        .expect("json");
        assert_eq!(written["cniVersion"], "1.0.0");
        // With margay alone the version stays.
        let b = args(
            &dir.path().join("b"),
            r#"{"name":"n","cniVersion":"1.1.0","plugins":[{"type":"margay"}]}"#,
        );
        install(&b).expect("install");
        let written: serde_json::Value = serde_json::from_slice(
            &std::fs::read(b.conf_dir.join("10-margay.conflist")).expect("conf"),
        )
        .expect("json");
        assert_eq!(written["cniVersion"], "1.1.0");
    }

    #[test]
    fn a_chained_plugin_nobody_ships_installs_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let a = args(
            dir.path(),
            r#"{"name":"n","plugins":[{"type":"margay"},{"type":"bandwidth"}]}"#,
        );
        let e = install(&a).expect_err("bandwidth is nowhere");
        assert!(e.to_string().contains("\"bandwidth\""), "{e}");
        assert!(!a.conf_dir.join("10-margay.conflist").exists());
        assert!(!a.bin_dir.join("margay").exists(), "nothing written");
        // One the host has already is fine.
        std::fs::create_dir_all(&a.bin_dir).expect("mkdir");
        plugin(&a.bin_dir.join("bandwidth"), "host's", r#""1.0.0""#);
        install(&a).expect("host provides bandwidth");
        assert!(
            std::fs::read_to_string(a.bin_dir.join("bandwidth"))
                .expect("kept")
                .contains("# host's")
        );
    }

    #[test]
    fn rejects_configs_without_margay_and_writes_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        for bad in [
            "not json",
            r#"{"name":"x","plugins":[{"type":"bridge"}]}"#,
            r#"{"name":"x"}"#,
            r#"{"plugins":[{"type":"margay"}]}"#,
        ] {
            let a = args(dir.path(), bad);
            assert!(
                matches!(install(&a), Err(InstallError::BadConfig(_))),
                "{bad}"
            );
            assert!(!a.bin_dir.join("margay").exists());
        }
    }
}
