//! Synthetic WAL segments with valid long page headers, and helpers to run our binaries.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Segment name for segment number `segno` on timeline `tli` with `seg_size`.
pub fn segment_name(tli: u32, segno: u64, seg_size: u64) -> String {
    let per = 0x1_0000_0000u64 / seg_size;
    format!("{tli:08X}{:08X}{:08X}", segno / per, segno % per)
}

/// Write a segment file whose long page header is valid for its name, cluster and size. The rest is
/// pseudo-random (seeded), so different seeds give different content under the same name.
pub fn write_segment(dir: &Path, tli: u32, segno: u64, seg_size: u64, sysid: u64, seed: u64) -> PathBuf {
    let name = segment_name(tli, segno, seg_size);
    let mut data = vec![0u8; seg_size as usize];
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ segno;
    for chunk in data.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        // Half the bytes compress: a realistic mix.
        let v = if (x >> 60) & 1 == 0 { 0 } else { x };
        chunk.copy_from_slice(&v.to_le_bytes()[..chunk.len()]);
    }
    data[0..2].copy_from_slice(&0xD110u16.to_le_bytes());
    data[2..4].copy_from_slice(&0x0002u16.to_le_bytes());
    data[4..8].copy_from_slice(&tli.to_le_bytes());
    data[8..16].copy_from_slice(&(segno * seg_size).to_le_bytes());
    data[16..24].fill(0);
    data[24..32].copy_from_slice(&sysid.to_le_bytes());
    data[32..36].copy_from_slice(&(seg_size as u32).to_le_bytes());
    data[36..40].copy_from_slice(&8192u32.to_le_bytes());
    let path = dir.join(&name);
    std::fs::write(&path, &data).expect("write segment");
    path
}

/// Mark a file `.ready` in `dir/archive_status`, as PostgreSQL does.
pub fn mark_ready(pg_wal: &Path, name: &str) {
    let status = pg_wal.join("archive_status");
    std::fs::create_dir_all(&status).expect("archive_status");
    std::fs::write(status.join(format!("{name}.ready")), b"").expect("ready");
}

/// Run `wal-push --config CONFIG PATH` as the current user.
pub fn push(config: &Path, wal: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_wal-push")).arg("--config").arg(config).arg(wal).output().expect("wal-push")
}

/// Run `wal-fetch --config CONFIG NAME DEST` as the current user.
pub fn fetch(config: &Path, name: &str, dest: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_wal-fetch"))
        .arg("--config")
        .arg(config)
        .arg(name)
        .arg(dest)
        .output()
        .expect("wal-fetch")
}

/// Exit code and stderr, for assertions.
pub fn status(out: &Output) -> (Option<i32>, String) {
    (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
}

/// A temporary directory laid out as the README's installation makes it, without a cluster: `pg_wal/` (with
/// `archive_status/`) for synthetic segments, `repo/` and `spool/` already created (by root, which runs these
/// tests and never creates them itself), and `backupctl.toml` for a file:// repository there plus `extra`.
pub struct WalDir {
    /// The directory.
    pub dir: tempfile::TempDir,
    /// Its configuration file.
    pub config: PathBuf,
    /// Its `pg_wal`.
    pub pg_wal: PathBuf,
}

impl WalDir {
    /// A new one; `extra` is appended to the configuration (more sections, e.g. `[archive]\npush_ahead = 0`).
    pub fn new(extra: &str) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let pg_wal = dir.path().join("pg_wal");
        std::fs::create_dir_all(pg_wal.join("archive_status")).expect("pg_wal");
        for d in ["repo", "spool"] {
            std::fs::create_dir(dir.path().join(d)).expect("mkdir");
        }
        let config = dir.path().join("backupctl.toml");
        std::fs::write(
            &config,
            format!(
                "[repository]\nurl = \"file://{0}/repo\"\n[spool]\npath = \"{0}/spool\"\n{extra}\n",
                dir.path().display()
            ),
        )
        .expect("config");
        Self { dir, config, pg_wal }
    }

    /// The repository's directory.
    pub fn repo(&self) -> PathBuf {
        self.dir.path().join("repo")
    }
}

/// Every file under `dir` (recursively), as paths.
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out
}
