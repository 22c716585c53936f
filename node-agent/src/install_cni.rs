//! `margay-node install-cni`: what the DaemonSet's init container does —
//! put every plugin the conflist chains (`margay`, `portmap`, ...) from the
//! image's plugin directory into the host's CNI bin directory and write the
//! conflist, all atomically (a runtime never sees half a file), and only
//! when they differ from what is there. A chained plugin the image does not
//! ship must already be on the host, or nothing is installed.

use std::io::Write as _;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};

use crate::config::InstallCniArgs;

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
    let mut types: Vec<&str> = plugins
        .iter()
        .filter_map(|p| p.get("type").and_then(|t| t.as_str()))
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
    let mut pretty =
        serde_json::to_vec_pretty(&conf).map_err(|e| InstallError::BadConfig(e.to_string()))?;
    pretty.push(b'\n');
    Ok(Installed {
        binaries,
        config: write_if_changed(&args.conf_dir.join(&args.conf_name), &pretty, 0o644)?,
    })
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

    fn args(dir: &Path, conf: &str) -> InstallCniArgs {
        let shipped = dir.join("image/opt/margay/cni");
        std::fs::create_dir_all(&shipped).expect("mkdir");
        for p in ["margay", "portmap"] {
            std::fs::write(shipped.join(p), format!("\x7fELF {p}")).expect("write plugin");
        }
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
        std::fs::write(a.plugins_dir.join("margay"), b"\x7fELF newer").expect("update");
        assert_eq!(
            install(&a).expect("upgrade"),
            Installed {
                binaries: vec!["margay".into()],
                config: false
            }
        );
        assert_eq!(
            std::fs::read(a.bin_dir.join("portmap")).expect("portmap installed"),
            b"\x7fELF portmap"
        );
        let leftovers: Vec<_> = std::fs::read_dir(&a.bin_dir)
            .expect("ls")
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().contains("margay-tmp"))
            .collect();
        assert!(leftovers.is_empty());
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
        std::fs::write(a.bin_dir.join("bandwidth"), b"host's").expect("host plugin");
        install(&a).expect("host provides bandwidth");
        assert_eq!(
            std::fs::read(a.bin_dir.join("bandwidth")).expect("kept"),
            b"host's"
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
