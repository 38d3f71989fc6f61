//! Issue 8, status: each backup says whether the configured retention policy keeps it and why, or that the next
//! prune deletes it; after prune, status agrees with what was deleted.

use serde_json::Value;

use crate::pitr::{FileRepo, Source};
use crate::support::cluster::{as_postgres, assert_ok, bin, require_pg};

fn status(src: &Source) -> Value {
    let out = src.status_json_output();
    assert_ok("status --json-output", &out);
    serde_json::from_slice(&out.stdout).expect("status JSON")
}

fn policy_of<'a>(status: &'a Value, id: &str) -> &'a Value {
    let backups = status["backups"].as_array().expect("backups");
    let b = backups.iter().find(|b| b["id"] == id).unwrap_or_else(|| panic!("{id} not in {status:#}"));
    &b["keep"]["policy"]
}

#[test]
fn issue_8_status_says_what_the_policy_keeps_and_why() {
    if require_pg().is_none() {
        return;
    }
    let repo = FileRepo::new("i8-status");
    let src = Source::start("i8-status", &repo.url(), "[retention]\nkeep_last = 2\ngc_grace = \"0s\"\n");
    let c = &src.cluster;
    c.sql("create table t (id int)");
    let mut ids = Vec::new();
    for i in 0..4 {
        c.sql(&format!("insert into t values ({i})"));
        ids.push(src.backup_json("full")["id"].as_str().expect("id").to_owned());
    }
    let backupctl = |args: &[&str]| {
        as_postgres(&bin("backupctl")).arg("--config").arg(&src.config).args(args).output().expect("backupctl")
    };
    assert_ok("keep", &backupctl(&["keep", "--backup-id", &ids[0], "--forever"]));

    let before = status(&src);
    assert_eq!(before["retention"]["has_rules"], true, "{before:#}");
    assert_eq!(policy_of(&before, &ids[0])["reasons"], serde_json::json!(["kept forever"]));
    assert_eq!(policy_of(&before, &ids[1])["kept"], false, "{before:#}");
    assert_eq!(policy_of(&before, &ids[2])["reasons"], serde_json::json!(["keep-last"]));
    assert_eq!(policy_of(&before, &ids[3])["reasons"], serde_json::json!(["newest", "keep-last"]));
    assert_eq!(policy_of(&before, &ids[3])["reach_after_prune"], "onward");
    let text = backupctl(&["status"]);
    assert_ok("status", &text);
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains("the next prune deletes it"), "{text}");
    assert!(text.contains("kept: kept forever"), "{text}");
    assert!(text.contains("retention (backups): keep-last=2"), "{text}");

    let pruned = backupctl(&["prune", "--json-output"]);
    assert_ok("prune", &pruned);
    let after = status(&src);
    let left: Vec<&str> =
        after["backups"].as_array().expect("backups").iter().map(|b| b["id"].as_str().expect("id")).collect();
    assert_eq!(left, [&ids[0], &ids[2], &ids[3]], "{after:#}");
    for id in &left {
        assert_eq!(policy_of(&after, id)["kept"], true, "{id}: {after:#}");
    }
}
