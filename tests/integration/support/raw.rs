//! The repository through the library (both backends), to read, damage and repair it as a disk or a person would.

use std::time::Duration;

use backupctl::repository::backup::Manifest;
use backupctl::storage::{DynStorage, Key, PutMode};

/// A repository opened with the library, with a runtime of its own.
pub struct Raw {
    /// The runtime the calls block on.
    pub rt: tokio::runtime::Runtime,
    /// The backend.
    pub storage: DynStorage,
}

impl Raw {
    /// Open the repository at `url`.
    pub fn open(url: &str, s3: &backupctl::config::S3Config) -> Self {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        let storage = rt.block_on(backupctl::storage::open(url, s3, Duration::from_secs(30))).expect("open");
        Self { rt, storage }
    }

    /// Every manifest (none may be damaged).
    pub fn manifests(&self) -> Vec<Manifest> {
        let (good, bad) = self.rt.block_on(backupctl::repository::store::manifests(self.storage.as_ref())).expect("m");
        assert!(bad.is_empty());
        good
    }

    /// The manifest of backup `id`, which must exist.
    pub fn manifest(&self, id: &str) -> Manifest {
        let id = id.parse().expect("id");
        let m = self.rt.block_on(backupctl::repository::store::load_manifest(self.storage.as_ref(), &id));
        m.expect("load manifest").expect("manifest exists")
    }

    /// The stored bytes of `key`.
    pub fn get(&self, key: &Key) -> bytes::Bytes {
        self.rt.block_on(self.storage.get(key)).unwrap_or_else(|e| panic!("get {key}: {e}"))
    }

    /// Overwrite `key` with `body`.
    pub fn put(&self, key: &Key, body: bytes::Bytes) {
        self.rt.block_on(self.storage.put(key, body, PutMode::Overwrite)).unwrap_or_else(|e| panic!("put {key}: {e}"));
    }

    /// Delete `key`; returns what it held.
    pub fn delete(&self, key: &Key) -> bytes::Bytes {
        let body = self.get(key);
        self.rt.block_on(self.storage.delete(key)).unwrap_or_else(|e| panic!("delete {key}: {e}"));
        body
    }

    /// Overwrite the object at `key` with bytes of the same length that are not it.
    pub fn corrupt(&self, key: &Key) {
        let mut bad = self.get(key).to_vec();
        let half = bad.len() / 2;
        for b in &mut bad[half..] {
            *b ^= 0x5a;
        }
        self.put(key, bytes::Bytes::from(bad));
    }
}
