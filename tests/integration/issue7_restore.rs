//! Issue 7, section 2: what pitr-restore writes into postgresql.auto.conf means exactly what was asked (stale
//! recovery settings in the source's configuration, hostile values and paths), a missing --backup-id is named, and
//! destinations that initdb accepts (a link to an empty directory, a mount point) are accepted.

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use crate::pitr::{FileRepo, Source};
use crate::support::cluster::{Cluster, as_postgres, assert_ok, bin, chown_postgres, require_pg, wait_for};

/// `batch:rows` for every batch, in order.
fn batches(c: &Cluster) -> String {
    c.sql("select coalesce(string_agg(batch || ':' || n, ',' order by batch), '') from (select batch, count(*) n from batches group by batch) s")
}

fn insert(c: &Cluster, batch: u32) {
    c.sql(&format!("insert into batches select {batch}, g from generate_series(1, 100) g"));
}

/// Start the restored copy in `dest` and wait until recovery has ended; panics with its log otherwise.
fn start_recovered(src: &Source, dest: &Path) -> Cluster {
    let mut copy = Cluster::at(&src.cluster.bin, dest, &src.cluster.socket);
    copy.start();
    wait_for(&format!("recovery of {} to finish", dest.display()), Duration::from_secs(120), || {
        copy.try_sql("select pg_is_in_recovery()").stdout.starts_with(b"f").then_some(())
    });
    let log = copy.log_text();
    assert!(!log.contains("FATAL") && !log.contains("PANIC"), "{}: {log}", dest.display());
    copy
}

/// A destination path that does not exist yet, below the source's directory.
fn fresh(src: &Source, name: &str) -> PathBuf {
    let dest = src.dir.sub(name);
    std::fs::remove_dir(&dest).expect("rmdir");
    dest
}

/// pitr-restore as postgres with this configuration file.
fn restore_with(config: &Path, dest: &Path, args: &[&str]) -> Output {
    as_postgres(&bin("pitr-restore"))
        .arg("--config")
        .arg(config)
        .arg("--destination")
        .arg(dest)
        .args(args)
        .output()
        .expect("pitr-restore")
}

/// A parameter as the server reads it from the data directory's configuration files (`postgres -C`), raw.
fn server_reads(src: &Source, dest: &Path, parameter: &str) -> Vec<u8> {
    let out = as_postgres(&src.cluster.bin.join("postgres")).arg("-D").arg(dest).arg("-C").arg(parameter).output();
    let out = out.expect("postgres -C");
    assert_ok(&format!("postgres -C {parameter}"), &out);
    let mut value = out.stdout;
    assert_eq!(value.pop(), Some(b'\n'));
    value
}

/// The error lines of a refused command; asserts it exited `code` with exactly one `error:` line.
fn refused(out: &Output, code: i32) -> String {
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(code), "{err}");
    assert_eq!(err.lines().filter(|l| l.contains("error:")).count(), 1, "{err}");
    err
}

/// A copy of the source's configuration at `dir/backupctl.toml`, readable by postgres.
fn config_at(src: &Source, dir: &Path) -> PathBuf {
    std::fs::create_dir_all(dir).expect("mkdir");
    let path = dir.join("backupctl.toml");
    std::fs::copy(&src.config, &path).expect("copy config");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    chown_postgres(dir);
    path
}

/// Recovery settings left in the source's postgresql.conf (pgbackrest#2417) travel with the backup: a restore to
/// the end of the archive must not stop at a stale recovery_target_time (nor wait a stale apply delay, nor shut
/// down). A --backup-id that does not exist is named, with the ids that do.
#[test]
fn issue_7_stale_recovery_settings() {
    if require_pg().is_none() {
        return;
    }
    let repo = FileRepo::new("i7-stale");
    let src = Source::start("i7-stale", &repo.url(), "");
    let c = &src.cluster;
    c.sql("create table batches (batch int, id int)");
    insert(c, 0);
    // Harmless on a primary; read by any server started in recovery from a copy of this directory.
    let conf = c.data.join("postgresql.conf");
    let original = std::fs::read_to_string(&conf).expect("conf");
    let stale = "recovery_target_time = '2020-01-01 00:00:00+00'\nrecovery_min_apply_delay = '1d'\n\
                 recovery_end_command = 'false'\nrecovery_target_action = 'shutdown'\n";
    std::fs::write(&conf, format!("{original}{stale}")).expect("conf");
    let with_stale_time = src.backup_json("full")["id"].as_str().expect("id").to_owned();
    std::thread::sleep(Duration::from_millis(1100)); // backup ids name the second
    let second = src.backup_json("full")["id"].as_str().expect("id").to_owned();
    for batch in 1..=3 {
        insert(c, batch);
    }
    c.switch_and_wait_archived(Duration::from_secs(120));

    // A --backup-id that does not exist: named, with the ids that exist; nothing written.
    let dest = fresh(&src, "no-such-backup");
    let err = refused(&src.restore(&dest, &["--backup-id", "20200101-000000F"]), 1);
    assert!(err.contains("backup 20200101-000000F does not exist"), "{err}");
    assert!(err.contains(&with_stale_time) && err.contains(&second), "{err}");
    assert!(!dest.exists(), "a refused restore must not create the destination");

    let dest = fresh(&src, "stale-time");
    assert_ok("pitr-restore", &src.restore(&dest, &["--backup-id", &with_stale_time, "--archive-mode", "off"]));
    let copy = start_recovered(&src, &dest);
    assert_eq!(batches(&copy), "0:100,1:100,2:100,3:100", "{}", copy.log_text());
    assert_eq!(copy.sql("show recovery_target_time"), "");
    assert_eq!(copy.sql("show recovery_min_apply_delay"), "0");
}

/// A stale recovery_target_name in the source's postgresql.conf must not stop a restore to a time from starting
/// ("multiple recovery targets specified"), nor change where it stops.
#[test]
fn issue_7_stale_target_name_with_a_time_target() {
    if require_pg().is_none() {
        return;
    }
    let repo = FileRepo::new("i7-stale-name");
    let src = Source::start("i7-stale-name", &repo.url(), "");
    let c = &src.cluster;
    c.sql("create table batches (batch int, id int)");
    insert(c, 0);
    c.append_conf("recovery_target_name = 'stale_point'\nrecovery_target_inclusive = off\n");
    src.backup_json("full");
    std::thread::sleep(Duration::from_millis(1100));
    insert(c, 1);
    let after_1 = c.sql("select clock_timestamp()");
    insert(c, 2);
    c.switch_and_wait_archived(Duration::from_secs(120));

    let dest = fresh(&src, "stale-name");
    assert_ok("pitr-restore", &src.restore(&dest, &["--to", &after_1, "--archive-mode", "off"]));
    let copy = start_recovered(&src, &dest);
    assert_eq!(batches(&copy), "0:100,1:100", "{}", copy.log_text());
    assert_eq!(copy.sql("show recovery_target_name"), "");
}

/// Restore point names with backslashes, quotes, `%` and unicode, and configuration paths with quotes, spaces, `%`,
/// `$`, backquotes and non-UTF-8 bytes, each written by pitr-restore and read back exactly by PostgreSQL; the
/// restore_command is run through /bin/sh as PostgreSQL runs it; and one restore through such a path recovers to
/// such a restore point. Values PostgreSQL cannot hold are refused before anything is written.
#[test]
fn issue_7_hostile_values_are_read_back_exactly() {
    if require_pg().is_none() {
        return;
    }
    let repo = FileRepo::new("i7-quote");
    let src = Source::start("i7-quote", &repo.url(), "");
    let c = &src.cluster;
    c.sql("create table batches (batch int, id int)");
    insert(c, 0);
    src.backup_json("full");
    insert(c, 1);
    let point = r#"release\x 'q' "dq" 100% %f ü\"#;
    c.sql(&format!("select pg_create_restore_point('{}')", point.replace('\'', "''")));
    insert(c, 2);
    c.switch_and_wait_archived(Duration::from_secs(120));

    // A copy to write settings into with --delta.
    let dest = fresh(&src, "table");
    assert_ok("pitr-restore", &src.restore(&dest, &["--archive-mode", "off"]));

    // Table: each restore point name read back by the server's own configuration reader.
    let names = [
        r"release\x",
        r"\\double\\",
        r"trailing\",
        "it's",
        "''",
        r#"say "hi""#,
        "with  spaces ",
        "100%",
        "%f %p %%",
        "naïve ünïcødé ✓",
        "tab\there",
        "#not a comment",
        "x = 'y'",
    ];
    for name in names {
        assert_ok(name, &src.restore(&dest, &["--delta", "--to-name", name, "--archive-mode", "off"]));
        assert_eq!(server_reads(&src, &dest, "recovery_target_name"), name.as_bytes(), "--to-name {name:?}");
    }

    // Table: each configuration path, in restore_command as the server reads it, run by /bin/sh after
    // PostgreSQL's %-replacement: the shell hands wal-fetch exactly the path.
    let mut dirs: Vec<OsString> = [
        "plain",
        "with space",
        "it's",
        "'quoted'",
        r#"dq""#,
        "100%",
        "%f%p%%",
        "$HOME",
        "`id`",
        r"back\slash",
        "ü",
        "-dash",
        "semi;colon|pipe&amp",
    ]
    .iter()
    .map(OsString::from)
    .collect();
    dirs.push(OsString::from_vec(b"latin1 r\xe9glages".to_vec()));
    for name in dirs {
        let config = config_at(&src, &src.dir.path().join("cfgs").join(&name));
        assert_ok(&format!("{name:?}"), &restore_with(&config, &dest, &["--delta", "--archive-mode", "off"]));
        let command = server_reads(&src, &dest, "restore_command");
        let run = percent_replace(&command, b"000000010000000000000001", b"pg_wal/RECOVERYXLOG");
        let (program, rest) = run.split_at(run.iter().position(|&b| b == b' ').expect("a space"));
        assert_eq!(program, bin("wal-fetch").as_os_str().as_bytes(), "{}", String::from_utf8_lossy(&command));
        let mut script = b"printf '%s\\n'".to_vec();
        script.extend_from_slice(rest);
        let out = Command::new("sh").arg("-c").arg(OsStr::from_bytes(&script)).output().expect("sh");
        assert_ok("sh", &out);
        let mut want = b"--config\n".to_vec();
        want.extend_from_slice(config.as_os_str().as_bytes());
        want.extend_from_slice(b"\n000000010000000000000001\npg_wal/RECOVERYXLOG\n");
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&want),
            "{}",
            String::from_utf8_lossy(&command)
        );
        assert_eq!(out.stdout, want);
    }

    // What PostgreSQL cannot hold: refused as usage errors before anything is written.
    let untouched = fresh(&src, "refused");
    for name in ["line\nbreak", "", &"x".repeat(64)] {
        let err = refused(&src.restore(&untouched, &["--to-name", name]), 2);
        assert!(err.contains("recovery_target_name"), "{err}");
        assert!(!err.lines().any(|l| l.starts_with("break")), "one line: {err}");
    }
    let config = config_at(&src, &src.dir.path().join("new\nline"));
    let err = refused(&restore_with(&config, &untouched, &[]), 2);
    assert!(err.contains("restore_command") && err.contains("newline"), "{err}");
    assert!(!untouched.exists(), "a refused restore must not create the destination");

    // End to end: the configuration at a hostile path, the target a hostile name; wal-fetch runs through it.
    let hostile = src.dir.path().join(r#"it's a "100%" %f dir $HOME `id` \n"#);
    let config = config_at(&src, &hostile);
    let dest = fresh(&src, "end-to-end");
    assert_ok("pitr-restore", &restore_with(&config, &dest, &["--to-name", point, "--archive-mode", "off"]));
    let copy = start_recovered(&src, &dest);
    assert_eq!(batches(&copy), "0:100,1:100", "{}", copy.log_text());
    assert_eq!(copy.sql("show recovery_target_name"), point);
    assert!(copy.log_text().contains("recovery stopping at restore point"), "{}", copy.log_text());
}

/// PostgreSQL's replacement of `%f`, `%p` and `%%` in restore_command (src/common/percentrepl.c).
fn percent_replace(command: &[u8], f: &[u8], p: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut bytes = command.iter();
    while let Some(&b) = bytes.next() {
        if b != b'%' {
            out.push(b);
            continue;
        }
        match bytes.next() {
            Some(b'f') => out.extend_from_slice(f),
            Some(b'p') => out.extend_from_slice(p),
            Some(b'%') => out.push(b'%'),
            other => panic!("PostgreSQL refuses %{other:?} in restore_command: {}", String::from_utf8_lossy(command)),
        }
    }
    out
}

/// A destination that is a symbolic link to an empty directory is followed and kept; one that holds only
/// lost+found (a mount point) is empty; anything else there is named in the refusal; a dangling link is refused.
#[test]
fn issue_7_destinations() {
    if require_pg().is_none() {
        return;
    }
    let repo = FileRepo::new("i7-dest");
    let src = Source::start("i7-dest", &repo.url(), "");
    let c = &src.cluster;
    c.sql("create table batches (batch int, id int)");
    insert(c, 0);
    src.backup_json("full");
    insert(c, 1);
    c.switch_and_wait_archived(Duration::from_secs(120));

    let mount = src.dir.sub("mount-point");
    let lost = mount.join("lost+found");
    std::fs::create_dir(&lost).expect("mkdir lost+found");
    std::fs::set_permissions(&lost, std::fs::Permissions::from_mode(0o700)).expect("chmod");
    assert_ok("pitr-restore into a mount point", &src.restore(&mount, &["--archive-mode", "off"]));
    let copy = start_recovered(&src, &mount);
    assert_eq!(batches(&copy), "0:100,1:100");
    drop(copy);
    assert!(lost.is_dir(), "lost+found is left alone");

    let busy = src.dir.sub("busy");
    std::fs::create_dir(busy.join("lost+found")).expect("mkdir");
    std::fs::write(busy.join("notes.txt"), "x").expect("write");
    let err = refused(&src.restore(&busy, &[]), 1);
    assert!(err.contains("not empty") && err.contains("notes.txt"), "{err}");

    let dangling = src.dir.path().join("dangling");
    std::os::unix::fs::symlink(src.dir.path().join("nowhere"), &dangling).expect("symlink");
    let err = refused(&src.restore(&dangling, &[]), 1);
    assert!(err.contains("nowhere") && err.contains("does not exist"), "{err}");

    let target = src.dir.sub("link-target");
    let link = src.dir.path().join("link");
    std::os::unix::fs::symlink(&target, &link).expect("symlink");
    assert_ok("pitr-restore into a link", &src.restore(&link, &["--archive-mode", "off"]));
    assert_eq!(std::fs::read_link(&link).expect("still a link"), target);
    assert!(target.join("PG_VERSION").is_file(), "restored into the link's target");
    let copy = start_recovered(&src, &link);
    assert_eq!(batches(&copy), "0:100,1:100");
}

/// The md5 of every file under `dir`, by path.
fn tree_digest(dir: &Path) -> Vec<(PathBuf, String)> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).expect("read_dir").flatten() {
            let p = e.path();
            if p.is_dir() {
                todo.push(p);
            } else {
                let bytes = std::fs::read(&p).expect("read");
                out.push((p, blake3::hash(&bytes).to_hex().to_string()));
            }
        }
    }
    out.sort();
    out
}

/// `--delta` restores over an old copy of the cluster, never into another cluster's tablespace: with the backup's
/// tablespace location kept (no --tablespace-mapping) on the source's host, that location is the running source's
/// tablespace. Refused, whether or not --delta is given, and nothing there is touched; --delta over a copy whose own
/// pg_tblspc link leads to its tablespace directory still works.
#[test]
fn issue_7_delta_never_writes_into_another_clusters_tablespace() {
    if require_pg().is_none() {
        return;
    }
    let repo = FileRepo::new("i7-delta-ts");
    let src = Source::start("i7-delta-ts", &repo.url(), "");
    let c = &src.cluster;
    let ts = src.dir.sub("ts-live");
    c.sql(&format!("create tablespace ts location '{}'", ts.display()));
    c.sql("create table batches (batch int, id int) tablespace ts");
    // Another major's directory beside this cluster's (what pg_upgrade leaves): not this cluster's, not backed up.
    let other_major = ts.join("PG_99_202601011");
    std::fs::create_dir(&other_major).expect("mkdir");
    std::fs::write(other_major.join("leftover"), b"x").expect("write");
    crate::support::cluster::chown_postgres(&ts);
    insert(c, 0);
    src.backup_json("full");
    insert(c, 1);
    insert(c, 2);
    c.sql("checkpoint");
    c.switch_and_wait_archived(Duration::from_secs(120));
    let before = tree_digest(&ts);

    for args in [&["--archive-mode", "off"][..], &["--archive-mode", "off", "--delta"][..]] {
        let dest = fresh(&src, &format!("no-mapping-{}", args.len()));
        let err = refused(&src.restore(&dest, args), 1);
        assert!(err.contains("--tablespace-mapping") && err.contains(&ts.display().to_string()), "{err}");
        assert!(!err.contains("use --delta"), "never suggest --delta for another cluster's tablespace: {err}");
    }
    assert_eq!(tree_digest(&ts), before, "the running source's tablespace was written to");
    assert_eq!(c.sql("select count(*) from batches"), "300");

    // A copy with its own tablespace directory, then --delta over it (stopped): allowed.
    let dest = fresh(&src, "copy");
    let moved = fresh(&src, "ts-copy");
    let mapping = format!("{}={}", ts.display(), moved.display());
    assert_ok("restore", &src.restore(&dest, &["--archive-mode", "off", "--tablespace-mapping", &mapping]));
    let names = |d: &Path| -> Vec<String> {
        std::fs::read_dir(d)
            .expect("read_dir")
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect()
    };
    let restored = names(&moved);
    assert!(restored.len() == 1 && restored[0].starts_with("PG_"), "only the cluster's own directory: {restored:?}");
    // Another major's cluster beside the copy's in the same tablespace directory: a delta restore leaves it alone.
    let beside = moved.join("PG_98_202501011");
    std::fs::create_dir(&beside).expect("mkdir");
    std::fs::write(beside.join("16384"), b"another cluster's").expect("write");
    crate::support::cluster::chown_postgres(&moved);
    let out = src.restore(&dest, &["--archive-mode", "off", "--tablespace-mapping", &mapping, "--delta"]);
    assert_ok("delta restore over the copy", &out);
    assert_eq!(std::fs::read(beside.join("16384")).expect("left alone"), b"another cluster's");
    let copy = start_recovered(&src, &dest);
    assert_eq!(batches(&copy), "0:100,1:100,2:100");
    assert_eq!(tree_digest(&ts), before);
}
