//! `backupctl status`'s text, rendered from its JSON document (`status --json-output`): one renderer for the
//! repository and for the catalog (`--from-catalog`), so that the two answers read the same by construction.

use serde_json::Value;

use crate::Error;
use crate::cli::human_bytes;
use crate::cli::output::line;

fn s(v: &Value) -> &str {
    v.as_str().unwrap_or_default()
}

fn n(v: &Value) -> u64 {
    v.as_u64().unwrap_or_default()
}

/// Print the text form of the status document `v` (the JSON `status --json-output` prints).
pub(super) fn print(v: &Value) -> Result<(), Error> {
    line(format_args!("repository: {}", s(&v["repository"])))?;
    match &v["cluster"] {
        Value::Null => line("cluster: none yet (no WAL archived)")?,
        c => line(format_args!(
            "cluster: system identifier {}, PostgreSQL {}, wal segment size {}",
            s(&c["system_identifier"]),
            n(&c["pg_version"]),
            human_bytes(n(&c["wal_segment_size"]))
        ))?,
    }
    print_wal(&v["wal"])?;
    match &v["restorable_window"] {
        // Without backup ids: --last and --type filter the backups listed, not the window.
        Value::Null => line("restorable: nothing (no backup whose data and WAL are all present)")?,
        w => line(format_args!(
            "restorable: from {} (end of the oldest restorable backup) to the end of segment {}{}",
            s(&w["earliest"]),
            s(&w["latest_segment"]),
            w["latest"].as_str().map(|t| format!(" (archived {t})")).unwrap_or_default(),
        ))?,
    }
    if let Some(age) = v["newest_backup_age_seconds"].as_i64() {
        line(format_args!("newest backup: finished {} ago", human_age(age)))?;
    }
    print_retention(&v["retention"])?;
    print_backups(v["backups"].as_array().map(Vec::as_slice).unwrap_or_default(), v["wal"]["last"].as_str())
}

/// The retention lines: the base backups' policy (and its notes), then the dumps' (absent from documents an
/// older version stored in the catalog).
fn print_retention(r: &Value) -> Result<(), Error> {
    match (r["error"].as_str(), r["has_rules"].as_bool().unwrap_or(false)) {
        (Some(e), _) => line(format_args!("retention (backups): {}; no plan: {e}", s(&r["policy"])))?,
        (None, true) => line(format_args!(
            "retention (backups): {} (what prune would do now is shown per backup)",
            s(&r["policy"])
        ))?,
        (None, false) => {
            line("retention (backups): no backup policy key in [retention]: prune deletes no backup and no WAL")?
        }
    }
    for note in r["notes"].as_array().into_iter().flatten() {
        line(format_args!("retention (backups): note: {}", s(note)))?;
    }
    let d = &r["dumps"];
    match d["has_rules"].as_bool() {
        Some(true) => line(format_args!(
            "retention (dumps): {}, per database; the newest dump of each database is kept",
            s(&d["policy"])
        )),
        Some(false) => line("retention (dumps): no dump_*_retain key in [retention]: prune deletes no dump"),
        None => Ok(()),
    }
}

fn print_wal(w: &Value) -> Result<(), Error> {
    let (Some(first), Some(last)) = (w["first"].as_str(), w["last"].as_str()) else { return line("wal: none") };
    let completeness = match n(&w["gaps"]) {
        0 => "no gaps".to_owned(),
        1 => "1 GAP".to_owned(),
        k => format!("{k} GAPS"),
    };
    let when = match (w["last_archived"].as_str(), w["last_archived_at"].as_str()) {
        (Some(seg), Some(at)) => format!(", last archived {seg} at {at}"),
        _ => String::new(),
    };
    line(format_args!(
        "wal: {} segments from {first} to {last}, {completeness}{when}, {} other files, {} stored",
        n(&w["segments"]),
        n(&w["other_files"]),
        human_bytes(n(&w["bytes_stored"]))
    ))?;
    for t in w["timelines"].as_array().into_iter().flatten() {
        let (Some(f), Some(l)) = (t["first"].as_str(), t["last"].as_str()) else { continue };
        let at = t["last_archived_at"].as_str().map(|t| format!(" (archived {t})")).unwrap_or_default();
        line(format_args!(
            "  timeline {}: {f} to {l}{at}, {} segments, {} partial",
            n(&t["timeline"]),
            n(&t["segments"]),
            n(&t["partials"])
        ))?;
        for g in t["gaps"].as_array().into_iter().flatten() {
            line(format_args!("    gap: {}", gap_text(g)))?;
        }
    }
    Ok(())
}

fn gap_text(g: &Value) -> String {
    let (a, b) = (s(&g["first"]), s(&g["last"]));
    let range = if a == b { a.to_owned() } else { format!("{a} to {b} ({} segments)", n(&g["count"])) };
    let mut out = format!("{range} missing ({}; {} is the next archived)", s(&g["status"]), s(&g["next"]));
    if let Some(list) = ids(&g["breaks"]) {
        out.push_str(&format!(", breaks backup {list}"));
    }
    if let Some(list) = ids(&g["cuts"]) {
        out.push_str(&format!(", cuts short backup {list}"));
    }
    out
}

/// The ids of a JSON list, comma-separated; `None` when it is empty.
fn ids(list: &Value) -> Option<String> {
    let ids: Vec<&str> = list.as_array().into_iter().flatten().map(s).collect();
    (!ids.is_empty()).then(|| ids.join(", "))
}

fn human_age(seconds: i64) -> String {
    let s = seconds.max(0);
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m {}s", s / 60, s % 60),
        3600..86_400 => format!("{}h {}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d {}h", s / 86_400, s % 86_400 / 3600),
    }
}

/// The backups, one line each and one line of what it reaches and whether it is kept; `newest` is the newest
/// archived segment (a backup whose stop is in it reaches the end of the archive, not "its stop only").
fn print_backups(backups: &[Value], newest: Option<&str>) -> Result<(), Error> {
    if backups.is_empty() {
        return line("backups: none");
    }
    line("backups:")?;
    let header = ["id", "type", "start", "stop", "start lsn", "stop lsn", "size", "stored", "unique", "label"];
    line(format_args!(
        "  {:<17} {:<11} {:<27} {:<27} {:<11} {:<11} {:>10} {:>10} {:>10}  {}",
        header[0], header[1], header[2], header[3], header[4], header[5], header[6], header[7], header[8], header[9]
    ))?;
    for b in backups {
        let sizes = &b["sizes"];
        line(format_args!(
            "  {:<17} {:<11} {:<27} {:<27} {:<11} {:<11} {:>10} {:>10} {:>10}  {}",
            s(&b["id"]),
            s(&b["type"]),
            s(&b["start_time"]),
            s(&b["stop_time"]),
            s(&b["start_lsn"]),
            s(&b["stop_lsn"]),
            human_bytes(n(&sizes["logical"])),
            human_bytes(n(&sizes["stored"])),
            sizes["unique"].as_u64().map_or_else(|| "-".to_owned(), human_bytes),
            s(&b["label"])
        ))?;
        let missing: Vec<&str> = b["missing_wal"].as_array().into_iter().flatten().map(s).collect();
        let reach = if !missing.is_empty() {
            format!("BROKEN: WAL {} missing from its start..stop", missing.join(", "))
        } else if n(&sizes["objects_missing"]) > 0 {
            format!("BROKEN: {} data objects missing", n(&sizes["objects_missing"]))
        } else {
            let r = &b["reaches"];
            match r["segment"].as_str() {
                Some(seg) if Some(seg) == newest => format!("reaches {seg}, the newest archived segment"),
                Some(seg) if r["to_stop_only"].as_bool() == Some(true) => format!("reaches its stop only ({seg})"),
                Some(seg) => {
                    let at = r["archived_at"].as_str().map(|t| format!(", archived {t}")).unwrap_or_default();
                    format!("reaches {seg}{at}")
                }
                None => "reaches nothing".to_owned(),
            }
        };
        let keep = &b["keep"];
        let policy = &keep["policy"];
        let kept = match policy["kept"].as_bool() {
            Some(true) => {
                let reasons: Vec<&str> = policy["reasons"].as_array().into_iter().flatten().map(s).collect();
                let after = match policy["reach_after_prune"].as_str() {
                    Some("stop-only") => " (after prune it reaches its stop only)",
                    _ => "",
                };
                format!("kept: {}{after}", reasons.join(", "))
            }
            Some(false) => "the next prune deletes it".to_owned(),
            None => match keep["reason"].as_str() {
                Some(reason) => reason.to_owned(),
                None => "not kept by a mark".to_owned(),
            },
        };
        line(format_args!("  {:<17} {reach}; {kept}", ""))?;
        if let Some(d) = b["description"].as_str().filter(|d| !d.is_empty()) {
            // Free text on its own line, under the id; control characters shown escaped.
            line(format_args!("  {:<17} description: {}", "", d.escape_debug()))?;
        }
    }
    Ok(())
}
