//! Keep marks: a backup marked kept is never deleted by `prune` (until a date, or forever).
//!
//! Layout (see [`crate::repository::backup`]): `backups/<id>/keep/<set at>`, one create-only record per change;
//! the newest record (by key, which sorts by the time it was set) is the backup's mark. `unkeep` writes a record
//! that is not kept, so nothing is ever overwritten; deleting the backup removes its records with it.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::repository::backup::{BACKUPS_PREFIX, BackupId};
use crate::repository::store::{self, Error};
use crate::storage::{Key, Storage};

/// Name of the directory of keep records inside a backup's prefix.
const KEEP_DIR: &str = "keep";

/// One keep record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeepMark {
    /// False for an `unkeep` record.
    pub kept: bool,
    /// Kept until this time (RFC 3339 UTC); `None` with `kept` is forever.
    pub until: Option<String>,
    /// When the mark was set (RFC 3339 UTC).
    pub set_at: String,
}

impl KeepMark {
    /// True if the mark keeps the backup at `now`. A mark whose `until` does not parse keeps it (the safe way).
    pub fn is_kept_at(&self, now: OffsetDateTime) -> bool {
        if !self.kept {
            return false;
        }
        match &self.until {
            None => true,
            Some(until) => OffsetDateTime::parse(until, &Rfc3339).map_or(true, |u| now < u),
        }
    }

    /// How the mark reads in `status` and `prune`: `kept forever`, `kept until <time>`, or `not kept`.
    pub fn describe(&self) -> String {
        match (self.kept, &self.until) {
            (false, _) => "not kept".to_owned(),
            (true, None) => "kept forever".to_owned(),
            (true, Some(u)) => format!("kept until {u}"),
        }
    }
}

/// Key of a keep record of `id` set at `at`: the time in a form that sorts as it reads, to the nanosecond.
pub fn record_key(id: &BackupId, at: OffsetDateTime) -> Key {
    let t = at.to_offset(time::UtcOffset::UTC);
    let name = format!(
        "{:04}{:02}{:02}T{:02}{:02}{:02}.{:09}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.nanosecond()
    );
    // invariant: validated ids and the digits above make a valid key.
    Key::new(format!("{BACKUPS_PREFIX}{id}/{KEEP_DIR}/{name}")).unwrap_or_else(|e| unreachable!("keep key: {e}"))
}

/// The id of the backup a keep record key belongs to, if `key` is one.
pub fn backup_of_record(key: &str) -> Option<BackupId> {
    let rest = key.strip_prefix(BACKUPS_PREFIX)?;
    let (id, rest) = rest.split_once('/')?;
    let name = rest.strip_prefix(KEEP_DIR)?.strip_prefix('/')?;
    (!name.is_empty() && !name.contains('/')).then(|| id.parse().ok()).flatten()
}

/// Record `mark` for `id` at `now` (create-only).
pub async fn set(storage: &dyn Storage, id: &BackupId, mark: &KeepMark, now: OffsetDateTime) -> Result<(), Error> {
    let key = record_key(id, now);
    if store::create(storage, &key, mark).await? {
        Ok(())
    } else {
        Err(crate::storage::Error::AlreadyExists { backend: storage.to_string(), key }.into())
    }
}

/// The current mark of every backup that has one (whether or not its manifest still exists), by one listing of
/// `backups/`. A record that cannot be read is an error: guessing "not kept" could delete a kept backup.
pub async fn load_all(storage: &dyn Storage) -> Result<HashMap<BackupId, KeepMark>, Error> {
    load_listed(storage, &storage.list(BACKUPS_PREFIX).await?).await
}

/// [`load_all`] from a listing of `backups/` already made (`listing`): reads only the current marks. Errors as
/// [`load_all`] (storage errors, a mark that cannot be read, or one listed but gone).
pub async fn load_listed(
    storage: &dyn Storage,
    listing: &[crate::storage::ObjectMeta],
) -> Result<HashMap<BackupId, KeepMark>, Error> {
    let mut newest: HashMap<BackupId, Key> = HashMap::new();
    for meta in listing {
        if let Some(id) = backup_of_record(meta.key.as_str()) {
            let slot = newest.entry(id).or_insert_with(|| meta.key.clone());
            if meta.key > *slot {
                *slot = meta.key.clone();
            }
        }
    }
    let mut out = HashMap::new();
    for (id, key) in newest {
        let mark = store::load::<KeepMark>(storage, &key)
            .await?
            .ok_or_else(|| crate::storage::Error::NotFound { backend: storage.to_string(), key: key.clone() })?;
        out.insert(id, mark);
    }
    Ok(out)
}

/// The current mark of one backup, if it has any.
pub async fn load(storage: &dyn Storage, id: &BackupId) -> Result<Option<KeepMark>, Error> {
    let prefix = format!("{BACKUPS_PREFIX}{id}/{KEEP_DIR}/");
    let Some(last) = storage
        .list(&prefix)
        .await?
        .into_iter()
        .filter(|m| backup_of_record(m.key.as_str()).is_some())
        .max_by(|a, b| a.key.cmp(&b.key))
    else {
        return Ok(None);
    };
    store::load(storage, &last.key).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::fs::FsStorage;

    #[tokio::test]
    async fn newest_record_wins() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = FsStorage::new(dir.path());
        let id: BackupId = "20261126-083000F".parse().expect("id");
        assert_eq!(load(&s, &id).await.expect("load"), None);
        let t0 = time::macros::datetime!(2026-11-30 10:00:00 UTC);
        let forever = KeepMark { kept: true, until: None, set_at: "2026-11-30T10:00:00Z".into() };
        set(&s, &id, &forever, t0).await.expect("set");
        let off = KeepMark { kept: false, until: None, set_at: "2026-11-30T10:00:01Z".into() };
        set(&s, &id, &off, t0 + time::Duration::seconds(1)).await.expect("unset");
        assert_eq!(load(&s, &id).await.expect("load"), Some(off.clone()));
        assert_eq!(load_all(&s).await.expect("all").get(&id), Some(&off));
        assert!(!off.is_kept_at(t0));
        assert!(forever.is_kept_at(t0));
        let until = KeepMark { kept: true, until: Some("2027-01-01T00:00:00Z".into()), set_at: String::new() };
        assert!(until.is_kept_at(t0));
        assert!(!until.is_kept_at(time::macros::datetime!(2027-01-01 00:00:00 UTC)));
        assert_eq!(backup_of_record(record_key(&id, t0).as_str()), Some(id.clone()));
        assert_eq!(backup_of_record(id.manifest_key().as_str()), None);
    }
}
