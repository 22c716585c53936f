//! Errors: [`ApiError`] is what a client sees (a Kubernetes `Status`),
//! [`ServerError`] is what starting/stopping the server can fail with.

use std::path::PathBuf;

use serde_json::{Value, json};

/// One entry of `Status.details.causes`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cause {
    /// `FieldValueInvalid`, `FieldValueRequired`, ...
    pub reason: &'static str,
    /// Human-readable message.
    pub message: String,
    /// JSON path of the field (`metadata.name`).
    pub field: String,
}

/// `Status.details`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Details {
    /// `Status.details.name`.
    pub name: Option<String>,
    /// `Status.details.group`.
    pub group: Option<String>,
    /// `Status.details.kind` (the resource plural for most errors, the Kind for `Invalid`).
    pub kind: Option<String>,
    /// `Status.details.causes`.
    pub causes: Vec<Cause>,
}

/// A failed API request, rendered as a Kubernetes `Status` object.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code} {reason}: {message}")]
pub struct ApiError {
    /// HTTP status code (also `Status.code`).
    pub code: u16,
    /// `Status.reason` (`NotFound`, `Conflict`, ...).
    pub reason: &'static str,
    /// `Status.message`.
    pub message: String,
    /// `Status.details`.
    pub details: Option<Box<Details>>,
}

/// What a resource is called in error messages: `pods`, `widgets.example.com`.
#[derive(Debug, Clone, Copy)]
pub struct Res<'a> {
    /// API group ("" for core).
    pub group: &'a str,
    /// Plural resource name.
    pub plural: &'a str,
}

impl Res<'_> {
    fn qualified(&self) -> String {
        if self.group.is_empty() {
            self.plural.to_string()
        } else {
            format!("{}.{}", self.plural, self.group)
        }
    }
    fn group_opt(&self) -> Option<String> {
        (!self.group.is_empty()).then(|| self.group.to_string())
    }
}

impl ApiError {
    fn plain(code: u16, reason: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            code,
            reason,
            message: message.into(),
            details: None,
        }
    }

    fn with(mut self, details: Details) -> Self {
        self.details = Some(Box::new(details));
        self
    }

    /// 422 for a patch that does not apply.
    pub fn patch_not_applicable(group: &str, kind: &str, name: &str, why: &str) -> Self {
        Self::plain(
            422,
            "Invalid",
            format!("the server rejected our request due to an error in our request: {why}"),
        )
        .with(Details {
            name: Some(name.to_string()),
            group: (!group.is_empty()).then(|| group.to_string()),
            kind: Some(kind.to_string()),
            causes: Vec::new(),
        })
    }

    /// 404 for an object.
    pub fn not_found(res: Res<'_>, name: &str) -> Self {
        Self::plain(
            404,
            "NotFound",
            format!("{} \"{}\" not found", res.qualified(), name),
        )
        .with(Details {
            name: Some(name.to_string()),
            group: res.group_opt(),
            kind: Some(res.plural.to_string()),
            ..Default::default()
        })
    }

    /// 404 for a path that serves nothing.
    pub fn path_not_found() -> Self {
        Self::plain(
            404,
            "NotFound",
            "the server could not find the requested resource",
        )
    }

    /// 409 on create of an existing name.
    pub fn already_exists(res: Res<'_>, name: &str) -> Self {
        Self::plain(
            409,
            "AlreadyExists",
            format!("{} \"{}\" already exists", res.qualified(), name),
        )
        .with(Details {
            name: Some(name.to_string()),
            group: res.group_opt(),
            kind: Some(res.plural.to_string()),
            ..Default::default()
        })
    }

    /// 409 on a stale resourceVersion / failed precondition.
    pub fn conflict(res: Res<'_>, name: &str, why: &str) -> Self {
        Self::plain(
            409,
            "Conflict",
            format!(
                "Operation cannot be fulfilled on {} \"{}\": {}",
                res.qualified(),
                name,
                why
            ),
        )
        .with(Details {
            name: Some(name.to_string()),
            group: res.group_opt(),
            kind: Some(res.plural.to_string()),
            ..Default::default()
        })
    }

    /// The message the real server gives for a stale resourceVersion.
    pub const STALE: &'static str = "the object has been modified; please apply your changes to the latest version and try again";

    /// 422 with field causes.
    pub fn invalid(group: &str, kind: &str, name: &str, causes: Vec<Cause>) -> Self {
        let list: Vec<String> = causes
            .iter()
            .map(|c| format!("{}: {}", c.field, c.message))
            .collect();
        let joined = if list.len() == 1 {
            list[0].clone()
        } else {
            format!("[{}]", list.join(", "))
        };
        Self::plain(
            422,
            "Invalid",
            format!("{kind} \"{name}\" is invalid: {joined}"),
        )
        .with(Details {
            name: Some(name.to_string()),
            group: (!group.is_empty()).then(|| group.to_string()),
            kind: Some(kind.to_string()),
            causes,
        })
    }

    /// 422 with a single invalid-value cause.
    pub fn invalid_field(
        group: &str,
        kind: &str,
        name: &str,
        field: &str,
        value: &str,
        why: &str,
    ) -> Self {
        Self::invalid(
            group,
            kind,
            name,
            vec![Cause {
                reason: "FieldValueInvalid",
                message: format!("Invalid value: \"{value}\": {why}"),
                field: field.to_string(),
            }],
        )
    }

    /// 400.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::plain(400, "BadRequest", message)
    }

    /// 410 for a resourceVersion older than the kept history (watch and list).
    pub fn expired(message: impl Into<String>) -> Self {
        Self::plain(410, "Expired", message)
    }

    /// 410 Gone for a compacted watch resourceVersion.
    pub fn too_old_rv(asked: u64, oldest: u64) -> Self {
        Self::expired(format!("too old resource version: {asked} ({oldest})"))
    }

    /// 405.
    pub fn method_not_allowed(method: &str) -> Self {
        Self::plain(
            405,
            "MethodNotAllowed",
            format!("the server does not allow this method on the requested resource ({method})"),
        )
    }

    /// 415.
    pub fn unsupported_media_type(content_type: &str) -> Self {
        Self::plain(
            415,
            "UnsupportedMediaType",
            format!(
                "the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/strategic-merge-patch+json (got {content_type:?})"
            ),
        )
    }

    /// 406.
    pub fn not_acceptable(accept: &str) -> Self {
        Self::plain(
            406,
            "NotAcceptable",
            format!(
                "only the following media types are accepted: application/json, application/yaml (asked for {accept:?})"
            ),
        )
    }

    /// 413.
    pub fn too_large(limit: usize) -> Self {
        Self::plain(
            413,
            "RequestEntityTooLarge",
            format!("the request body is larger than {limit} bytes"),
        )
    }

    /// 403 (e.g. creating in a namespace that is being deleted).
    pub fn forbidden(res: Res<'_>, name: &str, why: &str) -> Self {
        Self::plain(
            403,
            "Forbidden",
            format!("{} \"{}\" is forbidden: {}", res.qualified(), name, why),
        )
        .with(Details {
            name: Some(name.to_string()),
            group: res.group_opt(),
            kind: Some(res.plural.to_string()),
            ..Default::default()
        })
    }

    /// 401: no credentials, or ones the server does not know.
    pub fn unauthorized() -> Self {
        Self::plain(401, "Unauthorized", "Unauthorized")
    }

    /// 403 from the RBAC authorizer, with its message.
    pub fn rbac_forbidden(plural: &str, group: &str, name: Option<&str>, message: String) -> Self {
        Self::plain(403, "Forbidden", message).with(Details {
            name: name.map(str::to_string),
            group: (!group.is_empty()).then(|| group.to_string()),
            kind: Some(plural.to_string()),
            ..Default::default()
        })
    }

    /// 504 for a list/get at a resourceVersion the server has not reached.
    pub fn too_large_rv(asked: u64, current: u64) -> Self {
        Self::plain(
            504,
            "Timeout",
            format!("Timeout: Too large resource version: {asked}, current: {current}"),
        )
        .with(Details {
            causes: vec![Cause {
                reason: "ResourceVersionTooLarge",
                message: "Too large resource version".to_string(),
                field: String::new(),
            }],
            ..Default::default()
        })
    }

    /// 500 for a server-side bug or shutdown.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::plain(500, "InternalError", message)
    }

    /// 503 while the server stops.
    pub fn unavailable() -> Self {
        Self::plain(503, "ServiceUnavailable", "the server is shutting down")
    }

    /// The `Status` object.
    pub fn to_status(&self) -> Value {
        let mut status = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        });
        let mut details = serde_json::Map::new();
        let d = self.details.as_deref().cloned().unwrap_or_default();
        if let Some(n) = &d.name {
            details.insert("name".into(), json!(n));
        }
        if let Some(g) = &d.group {
            details.insert("group".into(), json!(g));
        }
        if let Some(k) = &d.kind {
            details.insert("kind".into(), json!(k));
        }
        if !d.causes.is_empty() {
            let causes: Vec<Value> = d
                .causes
                .iter()
                .map(|c| {
                    let mut o = json!({"reason": c.reason, "message": c.message});
                    if !c.field.is_empty() {
                        o["field"] = json!(c.field);
                    }
                    o
                })
                .collect();
            details.insert("causes".into(), Value::Array(causes));
        }
        if !details.is_empty() {
            status["details"] = Value::Object(details);
        }
        status
    }
}

/// Starting, loading or stopping the server failed.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// Could not bind the listen address.
    #[error("cannot listen on {addr}")]
    Bind {
        /// The address asked for.
        addr: std::net::SocketAddr,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The TLS certificates could not be made or loaded.
    #[error("TLS: {0}")]
    Tls(String),
    /// The state file could not be read.
    #[error("cannot read state file {path}")]
    ReadState {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The state file is not what we write.
    #[error("state file {path} is corrupt: {why}")]
    CorruptState {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
    /// The state file could not be written.
    #[error("cannot write state file {path}")]
    WriteState {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The store task ended unexpectedly.
    #[error("the store task is gone")]
    StoreGone,
}
