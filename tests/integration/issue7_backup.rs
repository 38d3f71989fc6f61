//! Issue 7, section 1: a backup holds everything PostgreSQL needs, or refuses loudly. Symbolic links anywhere in
//! the data directory or a tablespace are backed up as what they point to and restored as real directories and
//! files; links that cannot be followed are refused before any data is copied; file names that are not UTF-8 are
//! kept byte for byte; errors name the entry that failed; `lost+found` is neither backed up nor deleted.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::pitr::{FileRepo, Source};
use crate::support::cluster::{Cluster, assert_ok, chown_postgres, require_pg};

/// Move `from` to `to` and leave a symbolic link to `link_target` at `from`.
fn move_and_link(from: &Path, to: &Path, link_target: &Path) {
    std::fs::rename(from, to).unwrap_or_else(|e| panic!("mv {} {}: {e}", from.display(), to.display()));
    symlink(link_target, from).expect("symlink");
}

/// The manifest of backup `id` with its file entries (read from its file maps), as JSON.
fn manifest_json(repo: &FileRepo, id: &str) -> serde_json::Value {
    let m = crate::support::raw::Raw::open(&repo.url(), &Default::default()).manifest(id);
    assert!(m.files.len() > 100, "the manifest's entries are read: {}", m.files.len());
    serde_json::to_value(&m).expect("manifest json")
}

fn has_no_backup(repo: &FileRepo) -> bool {
    std::fs::read_dir(repo.dir.path().join("backups")).map(|d| d.count()).unwrap_or(0) == 0
}

fn is_real_dir(p: &Path) -> bool {
    std::fs::symlink_metadata(p).is_ok_and(|m| m.file_type().is_dir())
}

/// The example: pg_xact on another disk behind a link, commit 51 rows one by one, back up, restore, start: all 51
/// are there. And the kind: relative links, a link to a link, a nested link, a file link, a tablespace whose
/// pg_tblspc link is relative and whose database directory is itself a link; all restored as real directories and
/// files, never as links back to the source's. An in-place tablespace comes back as one.
#[test]
fn issue_7_symlinks_are_backed_up_as_what_they_point_to() {
    if require_pg().is_none() {
        return;
    }
    let repo = FileRepo::new("i7-links");
    let mut src = Source::start("i7-links", &repo.url(), "");
    let data = src.cluster.data.clone();
    let other = src.dir.sub("other-disk");
    let ts = src.dir.sub("ts");
    src.cluster.sql(&format!("create tablespace ts location '{}'", ts.display()));
    src.cluster.sql("create table r (id int); create table t (id int) tablespace ts");
    // An in-place tablespace: a plain directory pg_tblspc/<oid> (allow_in_place_tablespaces).
    src.cluster.append_conf("allow_in_place_tablespaces = on");
    src.cluster.sql("select pg_reload_conf()");
    crate::support::cluster::wait_for("allow_in_place_tablespaces", Duration::from_secs(30), || {
        (src.cluster.sql("show allow_in_place_tablespaces") == "on").then_some(())
    });
    src.cluster.sql("create tablespace inplace location ''");
    src.cluster.sql("create table u (id int) tablespace inplace");
    let ts_oid = src.cluster.sql("select oid from pg_tablespace where spcname = 'ts'");
    let db_oid = src.cluster.sql("select oid from pg_database where datname = 'postgres'");
    src.cluster.stop();

    move_and_link(&data.join("pg_xact"), &other.join("pg_xact"), &other.join("pg_xact"));
    move_and_link(&data.join("pg_multixact"), &other.join("pg_multixact"), Path::new("../other-disk/pg_multixact"));
    move_and_link(&data.join("pg_commit_ts"), &other.join("pg_commit_ts"), &other.join("commit-ts-link"));
    symlink(other.join("pg_commit_ts"), other.join("commit-ts-link")).expect("link to link");
    move_and_link(
        &data.join("pg_logical/snapshots"),
        &other.join("snapshots"),
        Path::new("../../other-disk/snapshots"),
    );
    move_and_link(&data.join("pg_ident.conf"), &other.join("pg_ident.conf"), &other.join("pg_ident.conf"));
    let ts_version_dir = std::fs::read_dir(&ts)
        .expect("ts")
        .flatten()
        .map(|e| e.path())
        .find(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("PG_")))
        .expect("PG_ directory in the tablespace");
    move_and_link(&ts_version_dir.join(&db_oid), &other.join("ts-db"), &other.join("ts-db"));
    let ts_link = data.join("pg_tblspc").join(&ts_oid);
    std::fs::remove_file(&ts_link).expect("rm tablespace link");
    symlink("../../ts", &ts_link).expect("relative tablespace link");
    chown_postgres(src.dir.path());
    src.cluster.start();

    src.cluster.sql("do $$ begin for i in 1..51 loop insert into r values (i); commit; end loop; end $$");
    src.cluster.sql("do $$ begin for i in 1..51 loop insert into t values (i); commit; end loop; end $$");
    src.cluster.sql("insert into u select generate_series(1, 51)");
    let summary = src.backup_json("full");
    src.cluster.switch_and_wait_archived(Duration::from_secs(120));

    let moved = src.dir.sub("ts-restored");
    std::fs::remove_dir(&moved).expect("rmdir");
    let ts_canonical = std::fs::canonicalize(&ts).expect("canonical ts");
    let mapping = format!("{}={}", ts_canonical.display(), moved.display());
    let copy = src.restore_and_start("copy", &["--tablespace-mapping", &mapping, "--archive-mode", "off"]);
    assert_eq!(copy.sql("select count(*) from r"), "51", "rows behind a linked pg_xact");
    assert_eq!(copy.sql("select count(*) from t"), "51", "rows in a relinked tablespace");
    assert_eq!(copy.sql("select count(*) from u"), "51", "rows in an in-place tablespace");
    for p in ["pg_xact", "pg_multixact", "pg_commit_ts", "pg_logical/snapshots"] {
        assert!(is_real_dir(&copy.data.join(p)), "{p} must be restored as a directory");
    }
    let ident = std::fs::symlink_metadata(copy.data.join("pg_ident.conf")).expect("pg_ident.conf");
    assert!(ident.file_type().is_file(), "a file link is restored as a file");
    let ts_version_name = ts_version_dir.file_name().expect("name");
    assert!(is_real_dir(&moved.join(ts_version_name).join(&db_oid)), "linked database directory in a tablespace");
    let manifest = manifest_json(&repo, summary["id"].as_str().expect("id"));
    assert_eq!(manifest["tablespaces"][0]["location"].as_str(), Some(ts_canonical.to_str().expect("utf-8")));
    // The source's directories still belong to the source alone.
    assert_eq!(src.cluster.sql("select count(*) from r"), "51");
}

/// Links that cannot be represented (dangling, a cycle, a link loop, a link to a FIFO) are refused before any data
/// is copied, naming the link; no manifest is written.
#[test]
fn issue_7_links_that_cannot_be_followed_are_refused_before_copying() {
    if require_pg().is_none() {
        return;
    }
    let repo = FileRepo::new("i7-badlinks");
    let src = Source::start("i7-badlinks", &repo.url(), "");
    let data = src.cluster.data.clone();
    let other = src.dir.sub("elsewhere");
    let fifo = other.join("fifo");
    assert_ok("mkfifo", &Command::new("mkfifo").arg(&fifo).output().expect("mkfifo"));
    let cases: Vec<(PathBuf, PathBuf, &str)> = vec![
        (data.join("global/dangling"), other.join("nowhere"), "does not exist"),
        (data.join("base/loop"), PathBuf::from(".."), "contains it"),
        (data.join("self-loop"), data.join("self-loop"), "link"),
        (data.join("pg_stat/fifo-link"), fifo.clone(), "not a directory or a regular file"),
    ];
    for (link, target, what) in &cases {
        symlink(target, link).expect("symlink");
        let out = src.base_backup(&["--fast"]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{}: {err}", link.display());
        assert!(err.contains(&link.display().to_string()) && err.contains(what), "{}: {err}", link.display());
        assert_eq!(err.lines().filter(|l| l.contains("error: ")).count(), 1, "one error line: {err}");
        assert!(has_no_backup(&repo), "{}: no manifest may be written", link.display());
        assert!(repo.objects().is_empty(), "{}: refused before any data is copied", link.display());
        std::fs::remove_file(link).expect("rm link");
    }
    // A FIFO in the data directory itself (not behind a link) is skipped, as pg_basebackup does, with one warning
    // that names it (format 2 walks twice, and warned twice before).
    let stray = data.join("stray-fifo");
    assert_ok("mkfifo", &Command::new("mkfifo").arg(&stray).output().expect("mkfifo"));
    let out = src.base_backup(&["--fast"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "a FIFO in the data directory is skipped: {err}");
    let warnings: Vec<&str> = err.lines().filter(|l| l.contains("skipping special file")).collect();
    assert_eq!(warnings.len(), 1, "one warning for the FIFO: {err}");
    assert!(warnings[0].contains("stray-fifo") && warnings[0].contains("FIFO"), "{err}");
    std::fs::remove_file(&stray).expect("rm fifo");
    let summary = src.backup_json("full");
    assert!(summary["files"].as_u64().unwrap_or(0) > 500, "{summary}");
}

/// The example: a configuration file with a Latin-1 name read through include_dir holds its setting in the restored
/// copy; a directory and a file with such names come back byte for byte, also through a --delta restore.
#[test]
fn issue_7_file_names_that_are_not_utf8() {
    if require_pg().is_none() {
        return;
    }
    let repo = FileRepo::new("i7-names");
    let src = Source::start("i7-names", &repo.url(), "");
    let data = src.cluster.data.clone();
    std::fs::create_dir(data.join("conf.d")).expect("conf.d");
    let conf = data.join("conf.d").join(OsStr::from_bytes(b"r\xe9glages.conf"));
    std::fs::write(&conf, "work_mem = '7777kB'\n").expect("conf file");
    let odd_dir = data.join(OsStr::from_bytes(b"\xff\xfe dir\\x41"));
    std::fs::create_dir(&odd_dir).expect("odd dir");
    let odd_file = odd_dir.join(OsStr::from_bytes(b"n\xe9e\nline"));
    std::fs::write(&odd_file, b"exact bytes").expect("odd file");
    chown_postgres(&data);
    src.cluster.append_conf("include_dir = 'conf.d'");
    src.cluster.sql("select pg_reload_conf()");
    crate::support::cluster::wait_for("the setting to load", Duration::from_secs(30), || {
        (src.cluster.sql("show work_mem") == "7777kB").then_some(())
    });
    src.backup_json("full");
    src.cluster.switch_and_wait_archived(Duration::from_secs(120));

    let mut copy = src.restore_and_start("copy", &["--archive-mode", "off"]);
    assert_eq!(copy.sql("show work_mem"), "7777kB", "the setting of conf.d/r\\xe9glages.conf");
    let rel = odd_file.strip_prefix(&data).expect("relative");
    assert_eq!(std::fs::read(copy.data.join(rel)).expect("odd file restored"), b"exact bytes");

    // --delta keeps them (and removes a stray name that is not UTF-8 either).
    copy.stop();
    let stray = copy.data.join(OsStr::from_bytes(b"stray-\xe9"));
    std::fs::write(&stray, b"x").expect("stray");
    chown_postgres(&copy.data);
    let out = src.restore(&copy.data, &["--delta", "--archive-mode", "off"]);
    assert_ok("delta restore", &out);
    assert!(!stray.exists(), "the stray file is removed");
    assert_eq!(std::fs::read(copy.data.join(rel)).expect("odd file kept"), b"exact bytes");
    let mut copy = Cluster::at(&src.cluster.bin, &copy.data, &src.cluster.socket);
    copy.start();
    crate::support::cluster::wait_for("recovery to finish", Duration::from_secs(120), || {
        copy.try_sql("select pg_is_in_recovery()").stdout.starts_with(b"f").then_some(())
    });
    assert_eq!(copy.sql("show work_mem"), "7777kB");

    // status still reads the repository.
    src.status_json_output();
}

/// The example: a root-owned directory with mode 000 inside the data directory fails the backup naming that
/// directory, with no manifest. A root-owned lost+found at the root is not backed up, and a --delta restore does
/// not delete the destination's.
#[test]
fn issue_7_unreadable_entries_are_named_and_lost_found_is_skipped() {
    if require_pg().is_none() {
        return;
    }
    let repo = FileRepo::new("i7-perm");
    let src = Source::start("i7-perm", &repo.url(), "");
    let data = src.cluster.data.clone();
    let secret = data.join("base").join("secret");
    std::fs::create_dir(&secret).expect("mkdir");
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o000)).expect("chmod");
    let out = src.base_backup(&["--fast"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains(&format!("cannot read {}:", secret.display())), "the message names the entry: {err}");
    assert!(has_no_backup(&repo));
    std::fs::remove_dir(&secret).expect("rmdir");

    let lost = data.join("lost+found");
    std::fs::create_dir(&lost).expect("mkdir");
    std::fs::write(lost.join("#1234"), b"orphan").expect("orphan");
    std::fs::set_permissions(&lost, std::fs::Permissions::from_mode(0o700)).expect("chmod");
    let summary = src.backup_json("full");
    let manifest = manifest_json(&repo, summary["id"].as_str().expect("id"));
    let text = manifest.to_string();
    assert!(!text.contains("lost+found"), "lost+found must not be in the manifest");
    src.cluster.switch_and_wait_archived(Duration::from_secs(120));

    let dest = src.dir.sub("copy");
    std::fs::remove_dir(&dest).expect("rmdir");
    assert_ok("restore", &src.restore(&dest, &["--archive-mode", "off"]));
    assert!(!dest.join("lost+found").exists());
    std::fs::create_dir(dest.join("lost+found")).expect("mkdir");
    std::fs::set_permissions(dest.join("lost+found"), std::fs::Permissions::from_mode(0o700)).expect("chmod");
    assert_ok("delta restore", &src.restore(&dest, &["--delta", "--archive-mode", "off"]));
    assert!(is_real_dir(&dest.join("lost+found")), "--delta must not delete lost+found");
}
