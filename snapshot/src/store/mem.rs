//! An in-memory store: for tests (the corruption test runs thousands of cases against it)
//! and for restore drills that should not touch a disk.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::SystemTime;

use super::{object_key, ObjectInfo, ObjectKind, Store, StoreError};

/// Objects in a map, keyed like the file system layout.
#[derive(Debug, Default)]
pub struct MemStore {
    objects: Mutex<BTreeMap<String, (Vec<u8>, SystemTime)>>,
}

impl MemStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// A copy of every object (key and bytes), to snapshot and later reset a test fixture.
    pub fn dump(&self) -> BTreeMap<String, Vec<u8>> {
        let objects = self.objects.lock().expect("poisoned");
        objects
            .iter()
            .map(|(k, (v, _))| (k.clone(), v.clone()))
            .collect()
    }

    /// Replaces all objects with `objects` (see [`MemStore::dump`]).
    pub fn load(&self, objects: &BTreeMap<String, Vec<u8>>) {
        let now = SystemTime::now();
        let mut map = self.objects.lock().expect("poisoned");
        *map = objects
            .iter()
            .map(|(k, v)| (k.clone(), (v.clone(), now)))
            .collect();
    }
}

impl Store for MemStore {
    fn put(&self, kind: ObjectKind, name: &str, data: &[u8]) -> Result<(), StoreError> {
        let key = object_key(kind, name)?;
        let mut objects = self.objects.lock().expect("poisoned");
        objects.insert(key, (data.to_vec(), SystemTime::now()));
        Ok(())
    }

    fn put_new(&self, kind: ObjectKind, name: &str, data: &[u8]) -> Result<bool, StoreError> {
        let key = object_key(kind, name)?;
        let mut objects = self.objects.lock().expect("poisoned");
        if objects.contains_key(&key) {
            return Ok(false);
        }
        objects.insert(key, (data.to_vec(), SystemTime::now()));
        Ok(true)
    }

    fn get(&self, kind: ObjectKind, name: &str) -> Result<Vec<u8>, StoreError> {
        let key = object_key(kind, name)?;
        let objects = self.objects.lock().expect("poisoned");
        objects
            .get(&key)
            .map(|(v, _)| v.clone())
            .ok_or(StoreError::NotFound { key })
    }

    fn list(&self, kind: ObjectKind) -> Result<Vec<ObjectInfo>, StoreError> {
        let prefix = match kind {
            ObjectKind::Config => "config",
            ObjectKind::Chunk => "objects/",
            ObjectKind::Snapshot => "snapshots/",
            ObjectKind::Lock => "locks/",
        };
        let objects = self.objects.lock().expect("poisoned");
        Ok(objects
            .range(prefix.to_string()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, (v, t))| ObjectInfo {
                name: k.rsplit('/').next().unwrap_or(k).to_string(),
                size: v.len() as u64,
                modified: Some(*t),
            })
            .collect())
    }

    fn delete(&self, kind: ObjectKind, name: &str) -> Result<(), StoreError> {
        let key = object_key(kind, name)?;
        self.objects.lock().expect("poisoned").remove(&key);
        Ok(())
    }

    fn sync(&self) -> Result<(), StoreError> {
        Ok(())
    }
}
