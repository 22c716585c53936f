//! The object store: a sans-IO core owned by one task (see `actor.rs`).
//!
//! Objects are JSON values keyed by group/resource and `namespace/name`.
//! One global resourceVersion counts every change (like etcd's revision);
//! the last `history_limit` changes are kept so that watches can resume and
//! paginated lists can read a consistent snapshot at an older revision.
//! Changes are also queued in an outbox the owner drains into the watch
//! broadcast after each command.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;

use base64::Engine as _;
use serde_json::{Value, json};

use super::error::ApiError;
use super::meta::{meta_str, object_rv};
use super::object::{Obj, keeps_parsed};
use super::resources::{GroupResource, Registry, ResourceDef};
use super::select::{FieldSelector, LabelSelector};

/// Watch event type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    /// Created (or started matching a watch's selectors).
    Added,
    /// Changed.
    Modified,
    /// Deleted (or stopped matching).
    Deleted,
}

impl EventType {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Added => "ADDED",
            EventType::Modified => "MODIFIED",
            EventType::Deleted => "DELETED",
        }
    }
}

/// One change, as kept in history and broadcast to watchers.
#[derive(Debug)]
pub struct Event {
    /// Revision of the change.
    pub rv: u64,
    /// Which resource.
    pub gr: GroupResource,
    /// Storage key (`ns/name` or `name`).
    pub key: String,
    /// Namespace ("" if cluster-scoped).
    pub namespace: String,
    /// What happened.
    pub kind: EventType,
    /// Object after the change (for deletes: the last state with the deletion revision).
    pub object: Obj,
    /// Object before the change.
    pub prev: Option<Obj>,
    /// When the change was committed (watch delivery delays count from here).
    pub at: tokio::time::Instant,
    /// The JSON watch line of `object` per event type, encoded once and
    /// shared by every watcher that sends it as stored.
    pub lines: [std::sync::OnceLock<hyper::body::Bytes>; 3],
}

impl Event {
    /// The `{"type":..,"object":..}` line for `t`, encoded on first use.
    pub fn line(&self, t: EventType) -> hyper::body::Bytes {
        let i = match t {
            EventType::Added => 0,
            EventType::Modified => 1,
            EventType::Deleted => 2,
        };
        self.lines[i]
            .get_or_init(|| watch_line_raw(t.as_str(), self.object.json()))
            .clone()
    }
}

/// One newline-terminated watch event.
pub fn watch_line(kind: &str, object: &Value) -> hyper::body::Bytes {
    watch_line_raw(kind, &serde_json::to_vec(object).unwrap_or_default())
}

/// One newline-terminated watch event around an object's JSON text.
pub fn watch_line_raw(kind: &str, object: &[u8]) -> hyper::body::Bytes {
    let mut v = Vec::with_capacity(object.len() + kind.len() + 24);
    v.extend_from_slice(b"{\"type\":\"");
    v.extend_from_slice(kind.as_bytes());
    v.extend_from_slice(b"\",\"object\":");
    v.extend_from_slice(object);
    v.extend_from_slice(b"}\n");
    hyper::body::Bytes::from(v)
}

/// List options the store needs (already split out of the query).
#[derive(Debug, Clone, Default)]
pub struct ListOpts {
    /// `labelSelector`.
    pub label_selector: String,
    /// `fieldSelector`.
    pub field_selector: String,
    /// `limit` (0 = none).
    pub limit: u64,
    /// `continue`.
    pub continue_token: String,
    /// `resourceVersion`.
    pub resource_version: String,
    /// `resourceVersionMatch`.
    pub resource_version_match: String,
}

/// Watch options.
#[derive(Debug, Clone, Default)]
pub struct WatchOpts {
    /// Selectors and resourceVersion (limit/continue ignored).
    pub list: ListOpts,
    /// `sendInitialEvents`.
    pub send_initial_events: bool,
    /// `allowWatchBookmarks`.
    pub bookmarks: bool,
}

/// The result of a list.
#[derive(Debug)]
pub struct ListResult {
    /// Matching objects.
    pub items: Vec<Obj>,
    /// Revision the list reflects.
    pub rv: u64,
    /// Continue token if more items remain.
    pub continue_token: Option<String>,
    /// Remaining count (only without selectors).
    pub remaining: Option<u64>,
}

/// What a watcher gets before live events.
#[derive(Debug)]
pub enum Initial {
    /// An event to send as is.
    Event(EventType, Obj),
    /// The end of `sendInitialEvents`: a bookmark with the annotation.
    InitialEventsEnd(u64),
}

/// Filters the event stream for one watcher.
#[derive(Debug, Clone)]
pub struct WatchFilter {
    /// Resource watched.
    pub gr: GroupResource,
    /// Namespace, or all.
    pub namespace: Option<String>,
    /// Label selector.
    pub labels: LabelSelector,
    /// Field selector.
    pub fields: FieldSelector,
}

impl WatchFilter {
    fn matches(&self, obj: &Obj) -> bool {
        self.labels.matches_obj(obj) && self.fields.matches_obj(obj)
    }

    /// What this watcher sees of an event: an object entering the selection is
    /// ADDED, one leaving it is DELETED, as the real watch cache does.
    pub fn classify(&self, ev: &Event) -> Option<(EventType, Obj)> {
        if ev.gr != self.gr || self.namespace.as_ref().is_some_and(|n| *n != ev.namespace) {
            return None;
        }
        let now = self.matches(&ev.object);
        let before = ev.prev.as_ref().is_some_and(|p| self.matches(p));
        match ev.kind {
            EventType::Added => now.then(|| (EventType::Added, ev.object.clone())),
            EventType::Deleted => now.then(|| (EventType::Deleted, ev.object.clone())),
            EventType::Modified => match (before, now) {
                (true, true) => Some((EventType::Modified, ev.object.clone())),
                (false, true) => Some((EventType::Added, ev.object.clone())),
                (true, false) => Some((EventType::Deleted, ev.object.clone())),
                (false, false) => None,
            },
        }
    }
}

/// A started watch: what to send first, and from which revision live events count.
#[derive(Debug)]
pub struct WatchStart {
    /// Events before live ones.
    pub initial: Vec<Initial>,
    /// The filter for live events.
    pub filter: WatchFilter,
    /// Revision the watcher is at after `initial`.
    pub rv: u64,
    /// Set when the asked revision is compacted: send this as an ERROR event and stop.
    pub expired: Option<ApiError>,
}

/// A full copy of the store for persistence.
#[derive(Debug)]
pub struct Snapshot {
    /// Current revision.
    pub rv: u64,
    /// Every object with its resource.
    pub objects: Vec<(GroupResource, Obj)>,
}

/// The store.
#[derive(Debug)]
pub struct Store {
    pub(super) rv: u64,
    pub(super) objects: HashMap<GroupResource, BTreeMap<String, Obj>>,
    history: VecDeque<Arc<Event>>,
    history_limit: usize,
    compacted_rv: u64,
    pub(super) registry: Registry,
    outbox: Vec<Arc<Event>>,
    /// Bumped on every committed change (for persistence).
    pub(super) dirty: bool,
    /// The current write's `fieldValidation` (set by the actor per request).
    pub field_validation: super::schema::FieldValidation,
    /// The current write's field manager (set by the actor per request).
    pub field_manager: String,
}

/// Storage key of an object.
pub fn key_of(namespace: Option<&str>, name: &str) -> String {
    match namespace {
        Some(ns) => format!("{ns}/{name}"),
        None => name.to_string(),
    }
}

#[derive(serde::Serialize, serde::Deserialize)]
struct ContinueToken {
    v: String,
    rv: u64,
    start: String,
}

fn parse_rv(s: &str) -> Result<Option<u64>, ApiError> {
    if s.is_empty() {
        return Ok(None);
    }
    s.parse::<u64>().map(Some).map_err(|_| {
        ApiError::bad_request(format!("invalid resourceVersion {s:?}: must be a number"))
    })
}

impl Store {
    /// An empty store serving the built-ins, with the default namespaces.
    pub fn new(history_limit: usize) -> Self {
        let mut s = Store {
            rv: 0,
            objects: HashMap::new(),
            history: VecDeque::new(),
            history_limit: history_limit.max(1),
            compacted_rv: 0,
            registry: Registry::new(),
            outbox: Vec::new(),
            dirty: false,
            field_validation: Default::default(),
            field_manager: "kube-apiserver".into(),
        };
        for ns in ["default", "kube-system", "kube-public", "kube-node-lease"] {
            let body = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}});
            if let Some(def) = s.registry.lookup("", "v1", "namespaces") {
                // Cannot fail on an empty store with valid names.
                let _ = s.create(&def, None, body, false);
            }
        }
        s.outbox.clear();
        s
    }

    /// Rebuilds a store from a snapshot; history starts empty (older revisions give 410).
    pub fn from_snapshot(history_limit: usize, snap: Snapshot) -> Result<Self, String> {
        let mut s = Store {
            rv: snap.rv,
            objects: HashMap::new(),
            history: VecDeque::new(),
            history_limit: history_limit.max(1),
            compacted_rv: snap.rv,
            registry: Registry::new(),
            outbox: Vec::new(),
            dirty: false,
            field_validation: Default::default(),
            field_manager: String::new(),
        };
        let (crds, rest): (Vec<_>, Vec<_>) = snap.objects.into_iter().partition(|(gr, _)| {
            gr.group == "apiextensions.k8s.io" && gr.plural == "customresourcedefinitions"
        });
        for (gr, obj) in crds.into_iter().chain(rest) {
            let Some(def) = s.registry.any_version(&gr) else {
                return Err(format!(
                    "object of unknown resource {}.{}",
                    gr.plural, gr.group
                ));
            };
            let name = obj.name().to_string();
            if name.is_empty() {
                return Err("object without a name".into());
            }
            let ns = def.namespaced.then(|| obj.namespace().to_string());
            let value = obj.value();
            if object_rv(&value) > snap.rv {
                return Err(format!("object {name} is newer than the snapshot"));
            }
            if def.special == super::resources::Special::Crd {
                let mut crd = (*value).clone();
                let defs = super::crd::crd_resources(&mut crd).map_err(|e| e.message)?;
                s.registry.set_crd(&name, defs);
            }
            // With the values of its field labels at hand (see Obj::new).
            let obj = if def.field_labels.len() > 2 {
                Obj::new(value, keeps_parsed(&gr), &def.field_labels)
            } else {
                obj
            };
            s.objects
                .entry(gr)
                .or_default()
                .insert(key_of(ns.as_deref(), &name), obj);
        }
        Ok(s)
    }

    /// A copy for persistence (cheap: objects are shared).
    pub fn snapshot(&self) -> Snapshot {
        let mut objects = Vec::new();
        for (gr, m) in &self.objects {
            objects.extend(m.values().map(|o| (gr.clone(), o.clone())));
        }
        Snapshot {
            rv: self.rv,
            objects,
        }
    }

    /// Current revision.
    pub fn current_rv(&self) -> u64 {
        self.rv
    }

    /// Oldest revision a watch can resume from.
    pub fn compacted_rv(&self) -> u64 {
        self.compacted_rv
    }

    /// Drops all history: watches and continues from older revisions get 410.
    pub fn compact(&mut self) {
        self.history.clear();
        self.compacted_rv = self.rv;
    }

    /// Takes the events produced since the last call.
    pub fn drain_outbox(&mut self) -> Vec<Arc<Event>> {
        std::mem::take(&mut self.outbox)
    }

    /// Commits a change: bumps the revision, records history and the outbox.
    /// `obj` must already carry the new revision (see [`Store::next_rv`]);
    /// the object it replaces (or deletes) is the stored one.
    pub(super) fn commit(
        &mut self,
        def: &ResourceDef,
        kind: EventType,
        key: String,
        obj: Arc<Value>,
    ) {
        let namespace = if def.namespaced {
            meta_str(&obj, "namespace").unwrap_or_default().to_string()
        } else {
            String::new()
        };
        let gr = def.gr();
        let obj = Obj::new(obj, keeps_parsed(&gr), &def.field_labels);
        let map = self.objects.entry(gr.clone()).or_default();
        let prev = if kind == EventType::Deleted {
            map.remove(&key)
        } else {
            map.insert(key.clone(), obj.clone())
        };
        let ev = Arc::new(Event {
            rv: self.rv,
            gr,
            key,
            namespace,
            kind,
            object: obj,
            prev,
            at: tokio::time::Instant::now(),
            lines: Default::default(),
        });
        self.history.push_back(ev.clone());
        while self.history.len() > self.history_limit {
            if let Some(old) = self.history.pop_front() {
                self.compacted_rv = old.rv;
            }
        }
        self.outbox.push(ev);
        self.dirty = true;
    }

    /// Allocates the next revision.
    pub(super) fn next_rv(&mut self) -> u64 {
        self.rv += 1;
        self.rv
    }

    /// One object, parsed.
    pub fn get_obj(&self, def: &ResourceDef, ns: Option<&str>, name: &str) -> Option<Arc<Value>> {
        self.stored(def, ns, name).map(|o| o.value())
    }

    /// One object as stored.
    pub fn stored(&self, def: &ResourceDef, ns: Option<&str>, name: &str) -> Option<Obj> {
        self.objects.get(&def.gr())?.get(&key_of(ns, name)).cloned()
    }

    /// Whether an object exists.
    pub fn contains(&self, def: &ResourceDef, ns: Option<&str>, name: &str) -> bool {
        self.objects
            .get(&def.gr())
            .is_some_and(|m| m.contains_key(&key_of(ns, name)))
    }

    /// GET of one object (404 if absent).
    pub fn get(
        &self,
        def: &ResourceDef,
        ns: Option<&str>,
        name: &str,
    ) -> Result<Arc<Value>, ApiError> {
        self.get_obj(def, ns, name)
            .ok_or_else(|| ApiError::not_found(def.res(), name))
    }

    /// Does a namespace exist?
    pub fn namespace_exists(&self, ns: &str) -> bool {
        let gr = GroupResource {
            group: String::new(),
            plural: "namespaces".into(),
        };
        self.objects.get(&gr).is_some_and(|m| m.contains_key(ns))
    }

    fn selectors(
        def: &ResourceDef,
        o: &ListOpts,
    ) -> Result<(LabelSelector, FieldSelector), ApiError> {
        let labels = LabelSelector::parse(&o.label_selector).map_err(ApiError::bad_request)?;
        let fields = FieldSelector::parse(&o.field_selector, &def.field_labels)
            .map_err(ApiError::bad_request)?;
        Ok((labels, fields))
    }

    /// Visits the objects of `gr` under `prefix` in key order as they were
    /// at revision `at`, from key `start` on, until `f` returns false.
    fn visit_at(
        &self,
        gr: &GroupResource,
        at: u64,
        start: &str,
        prefix: &str,
        mut f: impl FnMut(&str, &Obj) -> bool,
    ) {
        let empty = BTreeMap::new();
        let current = self.objects.get(gr).unwrap_or(&empty);
        let lower = if start.as_bytes() > prefix.as_bytes() {
            start
        } else {
            prefix
        };
        let in_range = |k: &str| k >= lower && k.starts_with(prefix);
        // For every key changed after `at`, the first such change tells what it was at `at`.
        let mut overrides: BTreeMap<String, Option<Obj>> = BTreeMap::new();
        if at < self.rv {
            for ev in self
                .history
                .iter()
                .filter(|e| e.rv > at && e.gr == *gr && in_range(&e.key))
            {
                overrides
                    .entry(ev.key.clone())
                    .or_insert_with(|| ev.prev.clone());
            }
        }
        let mut cur = current
            .range::<str, _>((std::ops::Bound::Included(lower), std::ops::Bound::Unbounded))
            .take_while(|(k, _)| k.starts_with(prefix))
            .peekable();
        let mut ovr = overrides.into_iter().peekable();
        loop {
            let take_cur = match (cur.peek(), ovr.peek()) {
                (None, None) => break,
                (Some(_), None) => true,
                (None, Some(_)) => false,
                (Some((ck, _)), Some((ok, _))) => ck.as_str() < ok.as_str(),
            };
            if take_cur {
                if let Some((k, v)) = cur.next()
                    && !f(k, v)
                {
                    return;
                }
            } else if let Some((k, v)) = ovr.next() {
                if cur.peek().is_some_and(|(ck, _)| **ck == k) {
                    cur.next();
                }
                if let Some(v) = v
                    && !f(&k, &v)
                {
                    return;
                }
            }
        }
    }

    /// LIST with selectors, resourceVersion semantics and pagination.
    pub fn list(
        &self,
        def: &ResourceDef,
        ns: Option<&str>,
        o: &ListOpts,
    ) -> Result<ListResult, ApiError> {
        let (labels, fields) = Self::selectors(def, o)?;
        let asked = parse_rv(&o.resource_version)?;
        let (at, start) = if !o.continue_token.is_empty() {
            if asked.is_some_and(|r| r != 0) {
                return Err(ApiError::bad_request(
                    "specifying resource version is not allowed when using continue",
                ));
            }
            let tok = base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(&o.continue_token)
                .ok()
                .and_then(|b| serde_json::from_slice::<ContinueToken>(&b).ok())
                .filter(|t| t.v == "meta.k8s.io/v1")
                .ok_or_else(|| ApiError::bad_request("continue key is not valid"))?;
            if tok.rv < self.compacted_rv {
                return Err(ApiError::expired(
                    "The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter.",
                ));
            }
            if tok.rv > self.rv {
                return Err(ApiError::bad_request(
                    "continue key is not valid: resource version is in the future",
                ));
            }
            (tok.rv, tok.start)
        } else {
            match (o.resource_version_match.as_str(), asked) {
                ("Exact", Some(r)) if r > 0 => {
                    if r > self.rv {
                        return Err(ApiError::too_large_rv(r, self.rv));
                    }
                    if r < self.compacted_rv {
                        return Err(ApiError::too_old_rv(r, self.compacted_rv));
                    }
                    (r, String::new())
                }
                ("Exact", _) => {
                    return Err(ApiError::bad_request(
                        "resourceVersionMatch=Exact requires a non-zero resourceVersion",
                    ));
                }
                ("NotOlderThan", None) => {
                    return Err(ApiError::bad_request(
                        "resourceVersionMatch=NotOlderThan requires a resourceVersion",
                    ));
                }
                ("" | "NotOlderThan", Some(r)) if r > self.rv => {
                    return Err(ApiError::too_large_rv(r, self.rv));
                }
                ("" | "NotOlderThan", _) => (self.rv, String::new()),
                (other, _) => {
                    return Err(ApiError::bad_request(format!(
                        "unsupported resourceVersionMatch {other:?}"
                    )));
                }
            }
        };
        let prefix = ns.map(|n| format!("{n}/")).unwrap_or_default();
        let gr = def.gr();
        let selecting = !labels.is_empty() || !fields.is_empty();
        let limit = usize::try_from(o.limit).unwrap_or(usize::MAX);
        let mut items = Vec::new();
        let mut last_key = None;
        // Past the limit: whether anything else matches, and (without
        // selectors) how many objects remain.
        let (mut more, mut rest) = (false, 0u64);
        self.visit_at(&gr, at, &start, &prefix, |k, v| {
            let matching = labels.matches_obj(v) && fields.matches_obj(v);
            if last_key.is_some() {
                if selecting {
                    more = matching;
                    return !matching;
                }
                more = true;
                rest += 1;
                return true;
            }
            if matching {
                items.push(v.clone());
                if limit > 0 && items.len() >= limit {
                    last_key = Some(k.to_string());
                }
            }
            true
        });
        let mut continue_token = None;
        let mut remaining = None;
        if let (true, Some(k)) = (more, last_key) {
            let tok = ContinueToken {
                v: "meta.k8s.io/v1".into(),
                rv: at,
                start: format!("{k}\u{0}"),
            };
            let raw = serde_json::to_vec(&tok).unwrap_or_default();
            continue_token = Some(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw));
            remaining = (!selecting).then_some(rest);
        }
        Ok(ListResult {
            items,
            rv: at,
            continue_token,
            remaining,
        })
    }

    /// Starts a watch: validates options and computes the initial events.
    /// The caller subscribes to the broadcast before handling the next command.
    pub fn watch(
        &self,
        def: &ResourceDef,
        ns: Option<&str>,
        o: &WatchOpts,
    ) -> Result<WatchStart, ApiError> {
        let (labels, fields) = Self::selectors(def, &o.list)?;
        let filter = WatchFilter {
            gr: def.gr(),
            namespace: ns.map(str::to_string),
            labels,
            fields,
        };
        let asked = parse_rv(&o.list.resource_version)?;
        if o.send_initial_events {
            if o.list.resource_version_match != "NotOlderThan" {
                return Err(ApiError::invalid_field(
                    "meta.k8s.io",
                    "ListOptions",
                    "",
                    "resourceVersionMatch",
                    &o.list.resource_version_match,
                    "sendInitialEvents requires setting resourceVersionMatch to NotOlderThan",
                ));
            }
            if !o.bookmarks {
                return Err(ApiError::invalid_field(
                    "meta.k8s.io",
                    "ListOptions",
                    "",
                    "allowWatchBookmarks",
                    "false",
                    "sendInitialEvents requires setting allowWatchBookmarks to true",
                ));
            }
        } else if !o.list.resource_version_match.is_empty() {
            return Err(ApiError::bad_request(
                "resourceVersionMatch is forbidden for watch unless sendInitialEvents is provided",
            ));
        }
        let prefix = ns.map(|n| format!("{n}/")).unwrap_or_default();
        let current_state = |initial: &mut Vec<Initial>| {
            self.visit_at(&filter.gr, self.rv, "", &prefix, |_, v| {
                if filter.matches(v) {
                    initial.push(Initial::Event(EventType::Added, v.clone()));
                }
                true
            });
        };
        let mut initial = Vec::new();
        match asked {
            _ if o.send_initial_events => {
                if let Some(r) = asked
                    && r > self.rv
                {
                    return Err(ApiError::too_large_rv(r, self.rv));
                }
                current_state(&mut initial);
                initial.push(Initial::InitialEventsEnd(self.rv));
            }
            None | Some(0) => current_state(&mut initial),
            Some(r) if r < self.compacted_rv => {
                return Ok(WatchStart {
                    initial,
                    filter,
                    rv: r,
                    expired: Some(ApiError::too_old_rv(r, self.compacted_rv)),
                });
            }
            Some(r) => {
                for ev in self.history.iter().filter(|e| e.rv > r) {
                    if let Some((t, obj)) = filter.classify(ev) {
                        initial.push(Initial::Event(t, obj));
                    }
                }
            }
        }
        let rv = asked.map_or(self.rv, |r| r.max(self.rv));
        Ok(WatchStart {
            initial,
            filter,
            rv,
            expired: None,
        })
    }
}

#[cfg(test)]
#[path = "store_tests.rs"]
mod tests;
