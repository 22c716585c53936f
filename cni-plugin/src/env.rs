//! The `CNI_*` environment: which verb, which container, which interface.

use crate::error::CniError;

/// Longest accepted `CNI_CONTAINERID` (runtimes use 64 hex digits).
const MAX_CONTAINER_ID: usize = 1024;
/// Longest accepted value of a `CNI_ARGS` key we use (Kubernetes names are
/// at most 253 bytes).
const MAX_ARG_VALUE: usize = 512;
/// Longest accepted `CNI_ARGS` as a whole.
const MAX_ARGS: usize = 64 * 1024;

/// The CNI verb.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// Attach a container.
    Add,
    /// Detach a container.
    Del,
    /// Verify an attachment.
    Check,
    /// Release attachments not in the valid list (1.1.0).
    Gc,
    /// Report readiness (1.1.0).
    Status,
    /// Report supported versions.
    Version,
}

impl Command {
    /// Parses `CNI_COMMAND`.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "ADD" => Command::Add,
            "DEL" => Command::Del,
            "CHECK" => Command::Check,
            "GC" => Command::Gc,
            "STATUS" => Command::Status,
            "VERSION" => Command::Version,
            _ => return None,
        })
    }

    /// The wire spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Command::Add => "ADD",
            Command::Del => "DEL",
            Command::Check => "CHECK",
            Command::Gc => "GC",
            Command::Status => "STATUS",
            Command::Version => "VERSION",
        }
    }
}

/// The raw variables as the runtime set them (absent and empty are the same
/// thing to CNI).
#[derive(Debug, Clone, Default)]
pub struct RawEnv {
    /// CNI_COMMAND
    pub command: Option<String>,
    /// CNI_CONTAINERID
    pub container_id: Option<String>,
    /// CNI_NETNS
    pub netns: Option<String>,
    /// CNI_IFNAME
    pub ifname: Option<String>,
    /// CNI_ARGS
    pub args: Option<String>,
    /// CNI_PATH
    pub path: Option<String>,
}

impl RawEnv {
    /// Reads the process environment. Non-UTF-8 values are reported later
    /// as invalid by [`Attachment::from_env`].
    pub fn from_process() -> Self {
        fn get(name: &str) -> Option<String> {
            std::env::var_os(name)
                .map(|v| v.into_string().unwrap_or_else(|_| "\u{fffd}".into()))
                .filter(|v| !v.is_empty())
        }
        RawEnv {
            command: get("CNI_COMMAND"),
            container_id: get("CNI_CONTAINERID"),
            netns: get("CNI_NETNS"),
            ifname: get("CNI_IFNAME"),
            args: get("CNI_ARGS"),
            path: get("CNI_PATH"),
        }
    }

    /// Parses `CNI_COMMAND`.
    pub fn command(&self) -> Result<Command, CniError> {
        let raw = self.command.as_deref().ok_or(CniError::InvalidEnv {
            var: "CNI_COMMAND",
            reason: "not set".into(),
        })?;
        Command::parse(raw).ok_or_else(|| CniError::InvalidEnv {
            var: "CNI_COMMAND",
            reason: format!("unknown command {:?}", truncate(raw, 32)),
        })
    }
}

/// The validated parameters of one attachment (ADD, DEL, CHECK).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attachment {
    /// CNI_CONTAINERID
    pub container_id: String,
    /// CNI_NETNS; `None` is allowed only for DEL.
    pub netns: Option<String>,
    /// CNI_IFNAME
    pub ifname: String,
    /// Parsed CNI_ARGS.
    pub args: CniArgs,
}

impl Attachment {
    /// Validates the variables `cmd` requires. Every invalid variable is
    /// named in the error.
    pub fn from_env(env: &RawEnv, cmd: Command) -> Result<Self, CniError> {
        let need_netns = matches!(cmd, Command::Add | Command::Check);
        let mut bad: Vec<(&'static str, String)> = Vec::new();

        let container_id = match env.container_id.as_deref() {
            None => {
                bad.push(("CNI_CONTAINERID", "not set".into()));
                String::new()
            }
            Some(id) => {
                if let Err(r) = validate_container_id(id) {
                    bad.push(("CNI_CONTAINERID", r));
                }
                id.to_string()
            }
        };
        let ifname = match env.ifname.as_deref() {
            None => {
                bad.push(("CNI_IFNAME", "not set".into()));
                String::new()
            }
            Some(n) => {
                if let Err(r) = validate_ifname(n) {
                    bad.push(("CNI_IFNAME", r));
                }
                n.to_string()
            }
        };
        let netns = env.netns.clone();
        if need_netns && netns.is_none() {
            bad.push(("CNI_NETNS", "not set".into()));
        }
        if let Some(ns) = &netns
            && (ns.len() > 4096 || ns.contains('\0') || ns.contains('\u{fffd}'))
        {
            bad.push(("CNI_NETNS", "not a usable path".into()));
        }
        let args = match env.args.as_deref() {
            None => CniArgs::default(),
            Some(a) => match CniArgs::parse(a) {
                Ok(a) => a,
                Err(r) => {
                    bad.push(("CNI_ARGS", r));
                    CniArgs::default()
                }
            },
        };

        if let Some((var, _)) = bad.first() {
            let var = *var;
            let reason = bad
                .iter()
                .map(|(v, r)| format!("{v}: {r}"))
                .collect::<Vec<_>>()
                .join("; ");
            return Err(CniError::InvalidEnv { var, reason });
        }
        Ok(Attachment {
            container_id,
            netns,
            ifname,
            args,
        })
    }
}

/// The `CNI_ARGS` keys Margay uses. Unknown keys are ignored (as if
/// `IgnoreUnknown=1` were always set, which every Kubernetes runtime sets).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CniArgs {
    /// K8S_POD_NAMESPACE
    pub pod_namespace: Option<String>,
    /// K8S_POD_NAME
    pub pod_name: Option<String>,
    /// K8S_POD_INFRA_CONTAINER_ID
    pub infra_container_id: Option<String>,
    /// K8S_POD_UID
    pub pod_uid: Option<String>,
    /// IP: requested addresses, comma separated (the convention of
    /// `host-local` and `static`).
    pub ips: Vec<String>,
    /// IgnoreUnknown was given and true.
    pub ignore_unknown: bool,
}

impl CniArgs {
    /// Parses `K=V;K=V`. Empty segments are skipped; a segment without `=`
    /// is an error; a value may contain `=`.
    pub fn parse(s: &str) -> Result<Self, String> {
        if s.len() > MAX_ARGS {
            return Err(format!("longer than {MAX_ARGS} bytes"));
        }
        let mut out = CniArgs::default();
        for seg in s.split(';') {
            let seg = seg.trim();
            if seg.is_empty() {
                continue;
            }
            let Some((k, v)) = seg.split_once('=') else {
                return Err(format!(
                    "invalid pair {:?} (expected KEY=VALUE)",
                    truncate(seg, 64)
                ));
            };
            let known = |v: &str| -> Result<Option<String>, String> {
                if v.len() > MAX_ARG_VALUE {
                    return Err(format!("value of {k} longer than {MAX_ARG_VALUE} bytes"));
                }
                Ok(if v.is_empty() {
                    None
                } else {
                    Some(v.to_string())
                })
            };
            match k {
                "K8S_POD_NAMESPACE" => out.pod_namespace = known(v)?,
                "K8S_POD_NAME" => out.pod_name = known(v)?,
                "K8S_POD_INFRA_CONTAINER_ID" => out.infra_container_id = known(v)?,
                "K8S_POD_UID" => out.pod_uid = known(v)?,
                "IgnoreUnknown" => {
                    out.ignore_unknown = matches!(v.to_ascii_lowercase().as_str(), "1" | "true")
                }
                "IP" => {
                    out.ips = known(v)?
                        .map(|v| v.split(',').map(|s| s.trim().to_string()).collect())
                        .unwrap_or_default()
                }
                _ => {}
            }
        }
        Ok(out)
    }

    /// The Kubernetes pod `(namespace, name)` when both are given (kubelet
    /// always sends both); otherwise `("", "")`: a container without a pod
    /// identity (podman sends only `K8S_POD_NAME`, the container name).
    pub fn k8s_pod(&self) -> (String, String) {
        match (&self.pod_namespace, &self.pod_name) {
            (Some(ns), Some(p)) => (ns.clone(), p.clone()),
            _ => (String::new(), String::new()),
        }
    }

    /// `<namespace>.<pod>` when both are known.
    pub fn pod_key(&self) -> Option<String> {
        match (&self.pod_namespace, &self.pod_name) {
            (Some(ns), Some(p)) => Some(format!("{ns}.{p}")),
            _ => None,
        }
    }
}

/// CNI spec: not empty, starts with an alphanumeric character, then
/// alphanumerics, `_`, `.` or `-`.
pub fn validate_container_id(id: &str) -> Result<(), String> {
    if id.len() > MAX_CONTAINER_ID {
        return Err(format!("longer than {MAX_CONTAINER_ID} bytes"));
    }
    let mut chars = id.chars();
    match chars.next() {
        None => return Err("empty".into()),
        Some(c) if !c.is_ascii_alphanumeric() => {
            return Err("must start with an alphanumeric character".into());
        }
        _ => {}
    }
    if chars.any(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))) {
        return Err("may contain only alphanumerics, '_', '.' and '-'".into());
    }
    Ok(())
}

/// CNI spec / Linux: not empty, not `.` or `..`, under 16 bytes, no `/`,
/// `:` or whitespace.
pub fn validate_ifname(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("empty".into());
    }
    if name == "." || name == ".." {
        return Err("must not be '.' or '..'".into());
    }
    if name.len() > 15 {
        return Err("longer than 15 bytes".into());
    }
    if name
        .chars()
        .any(|c| c == '/' || c == ':' || c.is_whitespace() || c == '\0' || c == '\u{fffd}')
    {
        return Err("must not contain '/', ':' or whitespace".into());
    }
    Ok(())
}

fn truncate(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(cmd: &str) -> RawEnv {
        RawEnv {
            command: Some(cmd.into()),
            container_id: Some("abc123".into()),
            netns: Some("/run/netns/x".into()),
            ifname: Some("eth0".into()),
            args: None,
            path: None,
        }
    }

    #[test]
    fn a_pod_identity_needs_both_namespace_and_name() {
        let kubelet =
            CniArgs::parse("IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-0").unwrap();
        assert_eq!(kubelet.k8s_pod(), ("default".into(), "web-0".into()));
        // podman: the container name as K8S_POD_NAME, no namespace.
        let podman = CniArgs::parse("IgnoreUnknown=1;K8S_POD_NAME=mgc1").unwrap();
        assert_eq!(podman.k8s_pod(), (String::new(), String::new()));
        assert_eq!(CniArgs::default().k8s_pod(), (String::new(), String::new()));
    }

    #[test]
    fn args_any_order_unknown_ignored() {
        let a = CniArgs::parse(
            "K8S_POD_UID=u-1;IgnoreUnknown=1;FOO=bar;K8S_POD_NAME=web-0;K8S_POD_INFRA_CONTAINER_ID=c1;K8S_POD_NAMESPACE=default;",
        )
        .unwrap();
        assert_eq!(a.pod_namespace.as_deref(), Some("default"));
        assert_eq!(a.pod_name.as_deref(), Some("web-0"));
        assert_eq!(a.infra_container_id.as_deref(), Some("c1"));
        assert_eq!(a.pod_uid.as_deref(), Some("u-1"));
        assert!(a.ignore_unknown);
        assert_eq!(a.pod_key().as_deref(), Some("default.web-0"));
    }

    #[test]
    fn args_errors() {
        assert!(CniArgs::parse("K8S_POD_NAME").is_err());
        assert!(CniArgs::parse(&"A=b;".repeat(20_000)).is_err());
        let long = format!("K8S_POD_NAME={}", "x".repeat(600));
        assert!(CniArgs::parse(&long).is_err());
        let a = CniArgs::parse("IP=198.19.0.9,2001:db8::9;X=a=b").unwrap();
        assert_eq!(a.ips, vec!["198.19.0.9", "2001:db8::9"]);
        assert_eq!(CniArgs::parse("").unwrap(), CniArgs::default());
    }

    #[test]
    fn container_id_rules() {
        assert!(validate_container_id("a").is_ok());
        assert!(validate_container_id("a1_b.c-d").is_ok());
        assert!(validate_container_id("").is_err());
        assert!(validate_container_id("-a").is_err());
        assert!(validate_container_id("a/b").is_err());
        assert!(validate_container_id("a b").is_err());
    }

    #[test]
    fn ifname_rules() {
        assert!(validate_ifname("eth0").is_ok());
        assert!(validate_ifname("abcdefghijklmno").is_ok());
        assert!(validate_ifname("abcdefghijklmnop").is_err());
        for bad in ["", ".", "..", "a/b", "a:b", "a b", "a\tb"] {
            assert!(validate_ifname(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn required_per_verb() {
        let mut e = env("DEL");
        e.netns = None;
        assert!(Attachment::from_env(&e, Command::Del).is_ok());
        let err = Attachment::from_env(&e, Command::Add).unwrap_err();
        assert_eq!(err.code(), 4);
        assert!(err.to_string().contains("CNI_NETNS"));
        e.container_id = None;
        e.ifname = Some("a/b".into());
        let err = Attachment::from_env(&e, Command::Check).unwrap_err();
        let s = err.to_string();
        assert!(
            s.contains("CNI_CONTAINERID") && s.contains("CNI_IFNAME") && s.contains("CNI_NETNS")
        );
    }

    #[test]
    fn command_parse() {
        assert_eq!(env("GC").command().unwrap(), Command::Gc);
        assert_eq!(RawEnv::default().command().unwrap_err().code(), 4);
        assert_eq!(env("FOO").command().unwrap_err().code(), 4);
    }
}
