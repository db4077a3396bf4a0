//! The object store: every Job, Pod and Event, one resourceVersion counter
//! for all of them (as etcd's revision), the change log watches replay from,
//! its compaction, and persistence to `state.json` so a restarted server
//! process serves the same objects and the same resourceVersions.

use std::collections::{BTreeMap, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::{broadcast, Notify};

use crate::meta::{self, ApiError, Resource};

/// A watch event's type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Change {
    Added,
    Modified,
    Deleted,
}

/// One entry of the change log.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Entry {
    pub rv: u64,
    pub resource: Resource,
    pub change: Change,
    /// The object after the change (for Deleted: its last state, with the
    /// deletion's resourceVersion).
    pub object: Value,
    /// The object before (Modified, Deleted), so a filtered watch can tell
    /// an object leaving its selector.
    pub old: Option<Value>,
}

type Key = (Resource, String, String);

#[derive(Default, Serialize, Deserialize)]
struct Persisted {
    rv: u64,
    compacted: u64,
    objects: Vec<(Resource, String, String, Value)>,
    log: Vec<Entry>,
}

/// The store's data (behind [`Shared::store`]'s lock).
pub struct Store {
    rv: u64,
    /// Watches from a resourceVersion below this get 410 Gone.
    compacted: u64,
    objects: BTreeMap<Key, Value>,
    log: VecDeque<Entry>,
    window: usize,
    pending: Vec<Arc<Entry>>,
    violations: Vec<String>,
}

/// Everything the server's tasks share.
pub struct Shared {
    pub store: Mutex<Store>,
    pub events: broadcast::Sender<Arc<Entry>>,
    /// Woken on every change (the Job controller and the kubelet wait on it).
    pub changed: Notify,
    /// Bumped to end every open watch (admin hook).
    pub close_watches: tokio::sync::watch::Sender<u64>,
    state_file: PathBuf,
    pub config: crate::Config,
}

impl Store {
    pub fn rv(&self) -> u64 {
        self.rv
    }
    pub fn compacted(&self) -> u64 {
        self.compacted
    }

    pub fn get(&self, resource: Resource, ns: &str, name: &str) -> Option<&Value> {
        self.objects
            .get(&(resource, ns.to_string(), name.to_string()))
    }

    /// Objects of a resource, in one namespace or all, by name.
    pub fn list(&self, resource: Resource, ns: Option<&str>) -> Vec<Value> {
        self.objects
            .iter()
            .filter(|((r, n, _), _)| *r == resource && ns.is_none_or(|ns| ns == n))
            .map(|(_, v)| v.clone())
            .collect()
    }

    /// Log entries after `rv`, or None when `rv` is compacted away.
    pub fn since(&self, rv: u64) -> Option<Vec<Arc<Entry>>> {
        if rv < self.compacted {
            return None;
        }
        Some(
            self.log
                .iter()
                .filter(|e| e.rv > rv)
                .map(|e| Arc::new(e.clone()))
                .collect(),
        )
    }

    fn next_rv(&mut self) -> u64 {
        self.rv += 1;
        self.rv
    }

    /// Schema violations in objects this server itself stored (controllers,
    /// kubelet, defaults): a bug here, reported by `GET /admin/self-check`.
    pub fn self_check(&self) -> &[String] {
        &self.violations
    }

    fn record(&mut self, entry: Entry) {
        if let Err(e) = crate::schema::Schemas::global().validate_as(
            entry.resource.api_version(),
            entry.resource.kind(),
            &entry.object,
        ) {
            let msg = format!(
                "{} {}: {e}",
                entry.resource.kind(),
                entry.object["metadata"]["name"]
            );
            eprintln!("oz-test-apiserver: stored an object its schema refuses: {msg}");
            self.violations.push(msg);
        }
        self.log.push_back(entry.clone());
        while self.log.len() > self.window {
            if let Some(e) = self.log.pop_front() {
                self.compacted = e.rv;
            }
        }
        self.pending.push(Arc::new(entry));
    }

    /// Drops the whole change log: a watch from any resourceVersion before
    /// now gets 410 Gone.
    pub fn compact(&mut self) {
        self.log.clear();
        self.compacted = self.rv;
    }

    /// Stores a new object, filling the fields the API server owns (uid,
    /// creationTimestamp, resourceVersion, generation, namespace); a
    /// `generateName` gets its suffix here.
    pub fn create(
        &mut self,
        resource: Resource,
        ns: &str,
        mut object: Value,
    ) -> Result<Value, ApiError> {
        let meta = object["metadata"]
            .as_object_mut()
            .expect("validated metadata");
        let name = match meta.get("name").and_then(Value::as_str) {
            Some(n) => n.to_string(),
            None => {
                let prefix = meta
                    .get("generateName")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string();
                let mut name;
                loop {
                    name = format!("{prefix}{}", meta::name_suffix());
                    if !self
                        .objects
                        .contains_key(&(resource, ns.to_string(), name.clone()))
                    {
                        break;
                    }
                }
                name
            }
        };
        if self
            .objects
            .contains_key(&(resource, ns.to_string(), name.clone()))
        {
            return Err(ApiError::already_exists(resource, &name));
        }
        let rv = self.next_rv();
        let meta = object["metadata"].as_object_mut().unwrap();
        meta.insert("name".into(), Value::String(name.clone()));
        meta.insert("namespace".into(), Value::String(ns.to_string()));
        // The create handler sets the uid first (the Job's selector names
        // it); objects made by controllers get theirs here.
        if !meta.get("uid").is_some_and(Value::is_string) {
            meta.insert("uid".into(), Value::String(meta::uid()));
        }
        meta.insert("resourceVersion".into(), Value::String(rv.to_string()));
        meta.insert("creationTimestamp".into(), Value::String(meta::now()));
        if resource == Resource::Jobs {
            meta.insert("generation".into(), Value::from(1));
        }
        meta.remove("deletionTimestamp");
        meta.remove("deletionGracePeriodSeconds");
        meta.remove("managedFields");
        object["apiVersion"] = Value::String(resource.api_version().into());
        object["kind"] = Value::String(resource.kind().into());
        self.objects
            .insert((resource, ns.to_string(), name), object.clone());
        self.record(Entry {
            rv,
            resource,
            change: Change::Added,
            object: object.clone(),
            old: None,
        });
        Ok(object)
    }

    /// Replaces an object. With `expected_rv`, a different current
    /// resourceVersion is a 409 Conflict (optimistic concurrency).
    pub fn replace(
        &mut self,
        resource: Resource,
        ns: &str,
        name: &str,
        mut object: Value,
        expected_rv: Option<&str>,
    ) -> Result<Value, ApiError> {
        let key = (resource, ns.to_string(), name.to_string());
        let Some(old) = self.objects.get(&key).cloned() else {
            return Err(ApiError::not_found(resource, name));
        };
        if let Some(expected) = expected_rv {
            if old["metadata"]["resourceVersion"].as_str() != Some(expected) {
                return Err(ApiError::conflict(resource, name));
            }
        }
        if object == old {
            return Ok(old);
        }
        let rv = self.next_rv();
        object["metadata"]["resourceVersion"] = Value::String(rv.to_string());
        // Deleting with finalizers pending: the last finalizer's removal deletes.
        if object["metadata"]["deletionTimestamp"].is_string()
            && object["metadata"]["finalizers"]
                .as_array()
                .is_none_or(Vec::is_empty)
            && removable(resource, &object)
        {
            self.objects.remove(&key);
            self.record(Entry {
                rv,
                resource,
                change: Change::Deleted,
                object: object.clone(),
                old: Some(old),
            });
            return Ok(object);
        }
        self.objects.insert(key, object.clone());
        self.record(Entry {
            rv,
            resource,
            change: Change::Modified,
            object: object.clone(),
            old: Some(old),
        });
        Ok(object)
    }

    /// Changes an object in place (controllers, kubelet); no-op when `f`
    /// leaves it equal. Returns the new object, or None when it is gone.
    pub fn update(
        &mut self,
        resource: Resource,
        ns: &str,
        name: &str,
        f: impl FnOnce(&mut Value),
    ) -> Option<Value> {
        let mut object = self.get(resource, ns, name)?.clone();
        f(&mut object);
        self.replace(resource, ns, name, object, None).ok()
    }

    /// Removes an object now.
    pub fn remove(&mut self, resource: Resource, ns: &str, name: &str) -> Option<Value> {
        let key = (resource, ns.to_string(), name.to_string());
        let old = self.objects.remove(&key)?;
        let rv = self.next_rv();
        let mut object = old.clone();
        object["metadata"]["resourceVersion"] = Value::String(rv.to_string());
        self.record(Entry {
            rv,
            resource,
            change: Change::Deleted,
            object: object.clone(),
            old: Some(old),
        });
        Some(object)
    }

    fn persisted(&self) -> Persisted {
        Persisted {
            rv: self.rv,
            compacted: self.compacted,
            objects: self
                .objects
                .iter()
                .map(|((r, n, m), v)| (*r, n.clone(), m.clone(), v.clone()))
                .collect(),
            log: self.log.iter().cloned().collect(),
        }
    }
}

/// Whether an object marked for deletion with no finalizers left may go:
/// a Pod only once the kubelet has stopped its containers (phase terminal,
/// or never scheduled).
fn removable(resource: Resource, object: &Value) -> bool {
    if resource != Resource::Pods {
        return true;
    }
    let phase = object["status"]["phase"].as_str().unwrap_or("Pending");
    matches!(phase, "Succeeded" | "Failed") || object["spec"]["nodeName"].is_null()
}

impl Shared {
    /// Loads `state.json` from the state dir when there is one.
    pub fn open(config: crate::Config) -> std::io::Result<Arc<Shared>> {
        let state_file = config.state_dir.join("state.json");
        let persisted: Persisted = match std::fs::read(&state_file) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(std::io::Error::other)?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Persisted::default(),
            Err(e) => return Err(e),
        };
        let store = Store {
            rv: persisted.rv,
            compacted: persisted.compacted,
            objects: persisted
                .objects
                .into_iter()
                .map(|(r, n, m, v)| ((r, n, m), v))
                .collect(),
            log: persisted.log.into(),
            window: config.watch_window,
            pending: Vec::new(),
            violations: Vec::new(),
        };
        let (events, _) = broadcast::channel(65536);
        let (close_watches, _) = tokio::sync::watch::channel(0);
        Ok(Arc::new(Shared {
            store: Mutex::new(store),
            events,
            changed: Notify::new(),
            close_watches,
            state_file,
            config,
        }))
    }

    /// Runs `f` on the store, then persists, publishes the changes it made
    /// to watches and wakes the controllers.
    pub fn with<T>(&self, f: impl FnOnce(&mut Store) -> T) -> T {
        let mut store = self.store.lock().unwrap_or_else(|e| e.into_inner());
        let out = f(&mut store);
        let pending = std::mem::take(&mut store.pending);
        if !pending.is_empty() {
            self.persist(&store);
            for e in pending {
                let _ = self.events.send(e);
            }
            drop(store);
            self.changed.notify_waiters();
        }
        out
    }

    /// Reads the store without changing it.
    pub fn read<T>(&self, f: impl FnOnce(&Store) -> T) -> T {
        let store = self.store.lock().unwrap_or_else(|e| e.into_inner());
        f(&store)
    }

    fn persist(&self, store: &Store) {
        let tmp = self.state_file.with_extension("json.tmp");
        let bytes = serde_json::to_vec(&store.persisted()).expect("state serializes");
        if let Err(e) =
            std::fs::write(&tmp, bytes).and_then(|()| std::fs::rename(&tmp, &self.state_file))
        {
            eprintln!(
                "oz-test-apiserver: could not persist {}: {e}",
                self.state_file.display()
            );
        }
    }

    /// Compacts the change log now (admin hook).
    pub fn compact(&self) -> u64 {
        let mut store = self.store.lock().unwrap_or_else(|e| e.into_inner());
        store.compact();
        self.persist(&store);
        store.rv
    }
}
