//! wal-push and wal-fetch on synthetic segments: every bad input, idempotence, look-ahead, crash safety.
//! These run as root against a file:// repository (the S3 variants live in `s3_archive`).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::support::cluster::wait_for;
use crate::support::wal::{WalDir, fetch, mark_ready, push, segment_name, status, write_segment};

const MB: u64 = 1 << 20;
const SYSID: u64 = 7_312_345_678_901_234_567;

/// A [`WalDir`] and what these tests do with it.
struct Env(WalDir);

impl std::ops::Deref for Env {
    type Target = WalDir;
    fn deref(&self) -> &WalDir {
        &self.0
    }
}

impl Env {
    fn new(extra: &str) -> Self {
        Self(WalDir::new(extra))
    }

    fn segment(&self, segno: u64, size: u64, seed: u64) -> PathBuf {
        write_segment(&self.pg_wal, 1, segno, size, SYSID, seed)
    }

    fn fetch_back(&self, name: &str) -> (Option<i32>, String, Option<Vec<u8>>) {
        let dest = self.dir.path().join("restored");
        let _ = std::fs::remove_file(&dest);
        let out = fetch(&self.config, name, &dest);
        let (code, err) = status(&out);
        (code, err, std::fs::read(&dest).ok())
    }

    fn repo_files(&self) -> Vec<String> {
        let mut out = Vec::new();
        walk(&self.repo(), &mut out);
        out.sort();
        out
    }
}

fn walk(dir: &Path, out: &mut Vec<String>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for e in entries.flatten() {
        if e.path().is_dir() {
            walk(&e.path(), out);
        } else {
            out.push(e.file_name().to_string_lossy().into_owned());
        }
    }
}

#[test]
fn push_then_fetch_round_trips_every_kind_of_name() {
    let env = Env::new("[archive]\npush_ahead = 0");
    let seg = env.segment(3, 16 * MB, 1);
    let partial_src = env.segment(4, 16 * MB, 2);
    let partial = env.pg_wal.join(format!("{}.partial", segment_name(1, 4, 16 * MB)));
    std::fs::rename(&partial_src, &partial).expect("rename");
    let history = env.pg_wal.join("00000002.history");
    // Timeline 2 forked inside segment 4, whose .partial timeline 1 archived: consistent with the archive, so that
    // segment 4 of timeline 1 is the end of that timeline, not a hole.
    std::fs::write(&history, "1\t0/4800000\tno recovery target specified\n").expect("history");
    let backup = env.pg_wal.join(format!("{}.00000028.backup", segment_name(1, 3, 16 * MB)));
    std::fs::write(
        &backup,
        "START WAL LOCATION: 0/3000028 (file 000000010000000000000003)\nSTOP WAL LOCATION: 0/3000100\n",
    )
    .expect("backup");

    for path in [&history, &seg, &partial, &backup] {
        let (code, err) = status(&push(&env.config, path));
        assert_eq!(code, Some(0), "push {}: {err}", path.display());
        let name = path.file_name().expect("name").to_str().expect("utf8");
        let (code, err, got) = env.fetch_back(name);
        assert_eq!(code, Some(0), "fetch {name}: {err}");
        assert_eq!(got.expect("written"), std::fs::read(path).expect("source"), "{name} byte-identical");
    }
    // A .partial is never served in place of the full segment.
    let (code, _, got) = env.fetch_back(&segment_name(1, 4, 16 * MB));
    assert_eq!(code, Some(1));
    assert!(got.is_none());
    // A .history of a timeline that does not exist: "not found", fast, nothing written.
    let started = Instant::now();
    let (code, err, got) = env.fetch_back("00000009.history");
    assert_eq!(code, Some(1), "{err}");
    assert!(got.is_none());
    assert!(started.elapsed() < Duration::from_secs(2), "took {:?}", started.elapsed());
}

#[test]
fn segment_sizes_from_1mib_to_64mib_and_log_boundaries() {
    for size in [MB, 64 * MB] {
        let env = Env::new("[archive]\npush_ahead = 0");
        let per = 0x1_0000_0000u64 / size;
        // The last segment of log 0 and the first of log 1.
        for segno in [per - 1, per] {
            let path = env.segment(segno, size, 5);
            let (code, err) = status(&push(&env.config, &path));
            assert_eq!(code, Some(0), "{size} {segno}: {err}");
            let name = segment_name(1, segno, size);
            let (code, err, got) = env.fetch_back(&name);
            assert_eq!(code, Some(0), "{err}");
            assert_eq!(got.expect("written"), std::fs::read(&path).expect("src"));
        }
        assert_eq!(segment_name(1, per, size), "000000010000000100000000");
    }
}

#[test]
fn bad_inputs_fail_and_write_nothing() {
    let env = Env::new("[archive]\npush_ahead = 0");
    let name = segment_name(1, 8, 16 * MB);
    type Damage = Box<dyn Fn(&Path)>;
    let cases: Vec<(&str, Damage, &str)> = vec![
        (
            "truncated",
            Box::new(|p: &Path| {
                let f = std::fs::OpenOptions::new().write(true).open(p).expect("open");
                f.set_len(5 * MB).expect("truncate");
            }),
            "but the file is",
        ),
        (
            "random bytes",
            Box::new(|p: &Path| {
                let data: Vec<u8> = (0..16 * MB).map(|i| (i * 7919 % 251) as u8).collect();
                std::fs::write(p, data).expect("write");
            }),
            "is not one of a known PostgreSQL release",
        ),
        (
            "other cluster",
            Box::new(|p: &Path| {
                let dir = p.parent().expect("dir");
                write_segment(dir, 1, 8, 16 * MB, SYSID + 1, 1);
            }),
            "belongs to cluster",
        ),
        (
            "wrong page address",
            Box::new(|p: &Path| {
                let dir = p.parent().expect("dir");
                let other = write_segment(dir, 1, 9, 16 * MB, SYSID, 1);
                std::fs::rename(other, p).expect("rename");
            }),
            "page address",
        ),
        ("empty", Box::new(|p: &Path| std::fs::write(p, b"").expect("write")), "too short"),
    ];
    // The repository belongs to SYSID once one good segment is in.
    let first = env.segment(7, 16 * MB, 1);
    assert_eq!(status(&push(&env.config, &first)).0, Some(0));
    let before = env.repo_files();
    for (what, damage, want) in cases {
        env.segment(8, 16 * MB, 1);
        damage(&env.pg_wal.join(&name));
        let (code, err) = status(&push(&env.config, &env.pg_wal.join(&name)));
        assert_eq!(code, Some(1), "{what}: {err}");
        assert!(err.contains(want), "{what}: {err:?} should mention {want:?}");
        assert_eq!(err.lines().filter(|l| l.contains("error:")).count(), 1, "{what}: one error line: {err}");
        assert_eq!(env.repo_files(), before, "{what}: nothing written");
    }
    // Names PostgreSQL never archives.
    for bad in ["RECOVERYXLOG", "000000010000000000000008.gz", "00000001000000000000000g"] {
        let p = env.pg_wal.join(bad);
        std::fs::write(&p, b"x").expect("write");
        let (code, err) = status(&push(&env.config, &p));
        assert_eq!(code, Some(1), "{bad}: {err}");
        assert!(err.contains("is not a WAL segment"), "{err}");
    }
    // A file that vanished.
    let (code, err) = status(&push(&env.config, &env.pg_wal.join(segment_name(1, 30, 16 * MB))));
    assert_eq!(code, Some(1));
    assert!(err.contains("cannot read") && err.contains("No such file"), "{err}");
    // A malformed history file.
    let h = env.pg_wal.join("00000003.history");
    std::fs::write(&h, "not a history file\n").expect("write");
    let (code, err) = status(&push(&env.config, &h));
    assert_eq!(code, Some(1));
    assert!(err.contains("not a valid timeline history file"), "{err}");
    assert_eq!(env.repo_files(), before);
}

#[test]
fn idempotent_and_never_overwritten() {
    let env = Env::new("[archive]\npush_ahead = 0");
    let path = env.segment(5, 16 * MB, 1);
    assert_eq!(status(&push(&env.config, &path)).0, Some(0));
    let stored = env.repo_files();
    // Same content again: success, with a warning, nothing rewritten.
    let (code, err) = status(&push(&env.config, &path));
    assert_eq!(code, Some(0), "{err}");
    assert!(err.contains("already archived with the same checksum"), "{err}");
    // Same name, different content: refused, naming both checksums.
    let original = std::fs::read(&path).expect("read");
    env.segment(5, 16 * MB, 2);
    let (code, err) = status(&push(&env.config, &path));
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("already archived with a different checksum"), "{err}");
    assert_eq!(err.matches("blake3:").count(), 2, "names both checksums: {err}");
    let (code, _, got) = env.fetch_back(&segment_name(1, 5, 16 * MB));
    assert_eq!(code, Some(0));
    assert_eq!(got.expect("fetched"), original, "the first content is kept");
    assert_eq!(env.repo_files(), stored);
    // History files too.
    let h = env.pg_wal.join("00000002.history");
    std::fs::write(&h, "1\t0/5000000\tfirst\n").expect("write");
    assert_eq!(status(&push(&env.config, &h)).0, Some(0));
    std::fs::write(&h, "1\t0/6000000\tsecond\n").expect("write");
    let (code, err) = status(&push(&env.config, &h));
    assert_eq!(code, Some(1));
    assert!(err.contains("different checksum"), "{err}");
}

#[test]
fn look_ahead_pushes_ready_segments_and_later_calls_use_the_spool() {
    let env = Env::new("[archive]\npush_concurrency = 2\npush_ahead = 4");
    let names: Vec<String> = (1..=6).map(|n| segment_name(1, n, MB)).collect();
    for n in 1..=6 {
        env.segment(n, MB, 3);
        mark_ready(&env.pg_wal, &names[n as usize - 1]);
    }
    let (code, err) = status(&push(&env.config, &env.pg_wal.join(&names[0])));
    assert_eq!(code, Some(0), "{err}");
    // Segments 2..=5 were pushed ahead (limit 4) and recorded; 6 was not.
    let records: Vec<String> = std::fs::read_dir(env.dir.path().join("spool/push"))
        .expect("spool")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    for n in &names[1..5] {
        assert!(records.contains(&format!("{n}.ok")), "{n} recorded: {records:?}");
        assert!(env.repo_files().contains(n), "{n} stored");
    }
    assert!(!env.repo_files().contains(&names[5]));
    // Now make the repository unreachable: the recorded segments still succeed (from the spool, no storage).
    std::fs::rename(env.repo(), env.dir.path().join("repo-moved")).expect("move repo");
    for n in &names[1..5] {
        let (code, err) = status(&push(&env.config, &env.pg_wal.join(n)));
        assert_eq!(code, Some(0), "{n}: {err}");
    }
    std::fs::rename(env.dir.path().join("repo-moved"), env.repo()).expect("move back");
    // A record never vouches for a file rewritten under the same name: it is checked for real, and refused.
    let n7 = segment_name(1, 7, MB);
    env.segment(7, MB, 3);
    mark_ready(&env.pg_wal, &n7);
    let (code, err) = status(&push(&env.config, &env.pg_wal.join(&names[5])));
    assert_eq!(code, Some(0), "{err}");
    // (a wal-push run lies between the two writes, so their mtimes differ even on a coarse clock)
    env.segment(7, MB, 4);
    let (code, err) = status(&push(&env.config, &env.pg_wal.join(&n7)));
    assert_eq!(code, Some(1), "rewritten segment must not pass on an old record: {err}");
    assert!(err.contains("different checksum"), "{err}");
    for n in &names {
        let (code, err, got) = env.fetch_back(n);
        assert_eq!(code, Some(0), "{err}");
        assert_eq!(got.expect("got"), std::fs::read(env.pg_wal.join(n)).expect("src"));
    }
}

#[test]
fn kill_9_during_upload_then_rerun() {
    let env = Env::new("[archive]\npush_concurrency = 1\npush_ahead = 40");
    // A big backlog so that the kill lands mid-batch.
    let names: Vec<String> = (1..=40).map(|n| segment_name(1, n, 4 * MB)).collect();
    for n in 1..=40u64 {
        env.segment(n, 4 * MB, 9);
        mark_ready(&env.pg_wal, &names[n as usize - 1]);
    }
    let mut child = Command::new(env!("CARGO_BIN_EXE_wal-push"))
        .arg("--config")
        .arg(&env.config)
        .arg(env.pg_wal.join(&names[0]))
        .spawn()
        .expect("spawn");
    let spool_push = env.dir.path().join("spool/push");
    wait_for("a few look-ahead records", Duration::from_secs(60), || {
        let n = std::fs::read_dir(&spool_push).ok()?.count();
        (n >= 3).then_some(())
    });
    let _ = Command::new("kill").args(["-9", &child.id().to_string()]).status();
    let _ = child.wait();
    // Every record points at a complete, verifiable object.
    for rec in std::fs::read_dir(&spool_push).expect("spool").flatten() {
        let name = rec.file_name().to_string_lossy().trim_end_matches(".ok").to_owned();
        if name.starts_with('.') {
            continue;
        }
        let (code, err, got) = env.fetch_back(&name);
        assert_eq!(code, Some(0), "{name}: {err}");
        assert_eq!(got.expect("got"), std::fs::read(env.pg_wal.join(&name)).expect("src"));
    }
    // No temp file is visible as an object, and a rerun of every segment succeeds.
    for n in &names {
        let (code, err) = status(&push(&env.config, &env.pg_wal.join(n)));
        assert_eq!(code, Some(0), "{n}: {err}");
    }
    for n in &names {
        let (code, err, got) = env.fetch_back(n);
        assert_eq!(code, Some(0), "{n}: {err}");
        assert_eq!(got.expect("got"), std::fs::read(env.pg_wal.join(n)).expect("src"), "{n}");
    }
    let files = env.repo_files();
    assert!(files.iter().all(|f| !f.starts_with(".tmp")), "temp files left visible: {files:?}");
}

#[test]
fn corrupt_object_unwritable_destination_and_bad_config() {
    let env = Env::new("[archive]\npush_ahead = 0");
    let path = env.segment(2, MB, 1);
    let name = segment_name(1, 2, MB);
    assert_eq!(status(&push(&env.config, &path)).0, Some(0));
    // Flip one byte of the stored object body.
    let obj = env.repo().join("wal/0000000100000000").join(&name);
    let mut bytes = std::fs::read(&obj).expect("object");
    let at = bytes.len() - 10;
    bytes[at] ^= 0x55;
    std::fs::write(&obj, &bytes).expect("write");
    let (code, err, got) = env.fetch_back(&name);
    assert_eq!(code, Some(255), "{err}");
    assert!(err.contains("corrupt"), "{err}");
    assert!(got.is_none(), "nothing written at %p");
    let leftovers: Vec<_> = std::fs::read_dir(env.dir.path())
        .expect("dir")
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(".wal-fetch"))
        .collect();
    assert!(leftovers.is_empty(), "temp files removed");
    // A corrupt header.
    bytes[3] ^= 1;
    std::fs::write(&obj, &bytes).expect("write");
    assert_eq!(env.fetch_back(&name).0, Some(255));

    // Unwritable destination directory.
    let path3 = env.segment(3, MB, 1);
    assert_eq!(status(&push(&env.config, &path3)).0, Some(0));
    let out = fetch(&env.config, &segment_name(1, 3, MB), Path::new("/nonexistent-dir/RECOVERYXLOG"));
    let (code, err) = status(&out);
    assert_eq!(code, Some(255), "{err}");
    assert!(err.contains("cannot write /nonexistent-dir/RECOVERYXLOG"), "{err}");

    // Bad configuration: wal-push exits 2, wal-fetch 255; both name the file and key.
    let bad = env.dir.path().join("bad.toml");
    std::fs::write(&bad, "[repository]\nurl = \"file:///r\"\nbogus = 1\n[spool]\npath = \"/s\"\n").expect("write");
    let (code, err) = status(&push(&bad, &path3));
    assert_eq!(code, Some(2));
    assert!(err.contains("bad.toml") && err.contains("bogus"), "{err}");
    let (code, err) = status(&fetch(&bad, &name, &env.dir.path().join("x")));
    assert_eq!(code, Some(255));
    assert!(err.contains("bad.toml"), "{err}");
    let missing = env.dir.path().join("missing.toml");
    let (code, err) = status(&push(&missing, &path3));
    assert_eq!(code, Some(2));
    assert!(err.contains("missing.toml"), "{err}");
    // Unset ${VAR} without default.
    std::fs::write(&bad, "[repository]\nurl = \"${BACKUPCTL_TEST_UNSET_VAR}\"\n[spool]\npath = \"/s\"\n")
        .expect("write");
    let (code, err) = status(&push(&bad, &path3));
    assert_eq!(code, Some(2));
    assert!(err.contains("BACKUPCTL_TEST_UNSET_VAR"), "{err}");
    // Bad usage.
    let out = Command::new(env!("CARGO_BIN_EXE_wal-fetch")).arg("--config").arg(&env.config).output().expect("run");
    assert_eq!(out.status.code(), Some(255));
    let out = Command::new(env!("CARGO_BIN_EXE_wal-push")).output().expect("run");
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn repository_refuses_another_cluster() {
    let env = Env::new("[archive]\npush_ahead = 0");
    let a = env.segment(1, 16 * MB, 1);
    assert_eq!(status(&push(&env.config, &a)).0, Some(0));
    let other = write_segment(&env.pg_wal, 1, 2, 16 * MB, SYSID ^ 0xFFFF, 1);
    let (code, err) = status(&push(&env.config, &other));
    assert_eq!(code, Some(1));
    assert!(err.contains(&format!("belongs to cluster {SYSID}")), "{err}");
    // A different segment size from the same system id is refused too.
    let small = write_segment(&env.pg_wal, 1, 64, MB, SYSID, 1);
    let (code, err) = status(&push(&env.config, &small));
    assert_eq!(code, Some(1));
    assert!(err.contains("wal segment size"), "{err}");
}

#[test]
fn concurrent_invocations_do_not_race() {
    let env = Env::new("[archive]\npush_concurrency = 2\npush_ahead = 8");
    let names: Vec<String> = (1..=12).map(|n| segment_name(1, n, 4 * MB)).collect();
    for n in 1..=12u64 {
        env.segment(n, 4 * MB, 11);
        mark_ready(&env.pg_wal, &names[n as usize - 1]);
    }
    // Four pushers at once, over overlapping look-ahead windows.
    let children: Vec<_> = [0usize, 0, 3, 6]
        .iter()
        .map(|&i| {
            Command::new(env!("CARGO_BIN_EXE_wal-push"))
                .arg("--config")
                .arg(&env.config)
                .arg(env.pg_wal.join(&names[i]))
                .stderr(std::process::Stdio::piped())
                .spawn()
                .expect("spawn")
        })
        .collect();
    for child in children {
        let out = child.wait_with_output().expect("wait");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    for n in &names {
        let (code, err) = status(&push(&env.config, &env.pg_wal.join(n)));
        assert_eq!(code, Some(0), "{n}: {err}");
        let (code, err, got) = env.fetch_back(n);
        assert_eq!(code, Some(0), "{n}: {err}");
        assert_eq!(got.expect("got"), std::fs::read(env.pg_wal.join(n)).expect("src"), "{n}");
    }
}

/// wal-fetch's detached prefetcher holds none of the caller's standard streams: a caller that reads
/// restore_command's output to the end (a wrapper script, `Command::output`) gets it when wal-fetch exits, not
/// when the prefetcher does. Before the fix its stderr was the caller's pipe, and every such call waited for the
/// prefetcher's idle exit.
#[test]
fn wal_fetch_prefetcher_holds_no_caller_stream() {
    let env = Env::new("[archive]\npush_ahead = 0\nfetch_prefetch = 4");
    for n in 1..=12u64 {
        let path = env.segment(n, MB, n);
        assert_eq!(status(&push(&env.config, &path)).0, Some(0), "push {n}");
    }
    let config = env.config.display().to_string();
    let dest = env.dir.path().join("restored");
    // The prefetcher idles 2 seconds before it exits: look for it right after each call (a few tries, in case a
    // loaded machine let it go already).
    let mut checked = 0;
    for n in 1..=6u64 {
        let name = segment_name(1, n, MB);
        let out = fetch(&env.config, &name, &dest);
        assert_eq!(status(&out).0, Some(0), "fetch {name}: {}", status(&out).1);
        for pid in processes_with(&["--prefetch-worker", &config]) {
            for fd in 0..3 {
                let Ok(target) = std::fs::read_link(format!("/proc/{pid}/fd/{fd}")) else { continue };
                assert_eq!(target, Path::new("/dev/null"), "the prefetcher's fd {fd}");
                checked += 1;
            }
        }
    }
    assert!(checked > 0, "no prefetcher was seen running after six fetches");
}

/// Pids of the processes whose command line contains every one of `words`.
fn processes_with(words: &[&str]) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let pid = entry.file_name().to_string_lossy().into_owned();
        if !pid.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else { continue };
        let text = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if words.iter().all(|w| text.contains(w)) {
            found.push(pid);
        }
    }
    found
}
