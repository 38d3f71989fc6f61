//! The spool's lock files: `fs2` exclusive locks, released by the kernel when the holder exits (even on kill -9).
//!
//! Invariant: all locking goes through this module, and calls fs2 through its trait path (std's inherent
//! `File::lock*` methods shadow fs2's since Rust 1.89).

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::Error;

/// A held lock; dropping it releases the lock.
#[derive(Debug)]
pub struct Lock {
    file: File,
    path: PathBuf,
}

impl Lock {
    /// Take the lock if it is free right now; `Ok(None)` if another process holds it.
    pub fn try_acquire(path: &Path) -> Result<Option<Self>, Error> {
        let io = |source| Error::Io { path: path.to_path_buf(), source };
        let mut file = OpenOptions::new().read(true).write(true).create(true).truncate(false).open(path).map_err(io)?;
        match fs2::FileExt::try_lock_exclusive(&file) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock || e.raw_os_error() == Some(libc::EWOULDBLOCK) => {
                return Ok(None);
            }
            Err(e) => return Err(io(e)),
        }
        let started = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
        file.set_len(0).map_err(io)?;
        file.seek(SeekFrom::Start(0)).map_err(io)?;
        writeln!(file, "pid={} started={started}", std::process::id()).map_err(io)?;
        Ok(Some(Self { file, path: path.to_path_buf() }))
    }

    /// Take the lock, polling until `wait` has passed; then fail naming the holder.
    pub fn acquire(path: &Path, wait: Duration) -> Result<Self, Error> {
        let deadline = Instant::now() + wait;
        let mut delay = Duration::from_millis(5);
        loop {
            if let Some(lock) = Self::try_acquire(path)? {
                return Ok(lock);
            }
            if Instant::now() >= deadline {
                return Err(Error::Locked { path: path.to_path_buf(), holder: holder(path) });
            }
            std::thread::sleep(delay);
            delay = (delay * 2).min(Duration::from_millis(200));
        }
    }

    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for Lock {
    fn drop(&mut self) {
        // Closing the file releases the lock as well; unlocking first makes it prompt.
        let _ = fs2::FileExt::unlock(&self.file);
    }
}

/// What the current holder wrote into the lock file (pid and start time), for error messages.
fn holder(path: &Path) -> String {
    let mut s = String::new();
    match File::open(path).and_then(|mut f| f.read_to_string(&mut s)) {
        Ok(_) if !s.trim().is_empty() => s.trim().to_owned(),
        _ => "unknown holder".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exclusive_and_released_on_drop() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("x.lock");
        let a = Lock::try_acquire(&p).expect("lock").expect("free");
        // A second open file description cannot take it (flock is per open file description).
        assert!(Lock::try_acquire(&p).expect("try").is_none());
        let err = Lock::acquire(&p, Duration::from_millis(30)).expect_err("held");
        assert!(err.to_string().contains(&format!("pid={}", std::process::id())), "{err}");
        drop(a);
        assert!(Lock::try_acquire(&p).expect("try").is_some());
    }
}
