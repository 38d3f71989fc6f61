//! Dump ids, manifests (JSON, checks, older manifests) and their storage.

use super::*;

fn file(name: &str, lens: &[u32]) -> DumpFile {
    DumpFile {
        name: name.to_owned(),
        frames: lens
            .iter()
            .enumerate()
            .map(|(i, l)| FrameRef { id: ObjectId::of(&(i as u64).to_le_bytes()), raw_length: *l })
            .collect(),
        raw_bytes: lens.iter().map(|l| u64::from(*l)).sum(),
        blake3: ObjectId::of(name.as_bytes()),
    }
}

pub(crate) fn example() -> DumpManifest {
    let a = file("", &[1 << 20, 5]);
    let b = vec![file("toc.dat", &[7]), file("3001.dat", &[1 << 20, 1 << 20, 3])];
    DumpManifest {
        format: DUMP_MANIFEST_FORMAT,
        id: "20261201-083000D".parse().expect("id"),
        label: Some("nightly".into()),
        started_at: "2026-12-01T08:30:00Z".into(),
        finished_at: "2026-12-01T08:31:00Z".into(),
        server_version_num: 150010,
        system_identifier: "7311111111111111111".into(),
        pg_dump_version: "pg_dump (PostgreSQL) 15.10".into(),
        databases: vec![
            DumpedDatabase {
                name: "app".into(),
                format: DumpFormat::Custom,
                raw_bytes: a.raw_bytes,
                files: vec![a],
                stored_bytes: 100,
                duration_ms: 5,
                properties: Some(DatabaseProperties {
                    encoding: "LATIN1".into(),
                    collate: "C".into(),
                    ctype: "C".into(),
                    locale_provider: Some("libc".into()),
                    locale: None,
                    icu_rules: None,
                    owner: "app owner".into(),
                    settings: vec!["work_mem=7MB".into(), "search_path=\"$user\", public".into()],
                    comment: Some("it's \"the\" app".into()),
                    privileges: Some(vec![DatabaseGrant {
                        grantee: None,
                        privilege: "CONNECT".into(),
                        grantable: false,
                    }]),
                    role_settings: vec![RoleSettings { role: "app".into(), settings: vec!["work_mem=1MB".into()] }],
                }),
            },
            DumpedDatabase {
                name: "Ünïcode \"db\"".into(),
                format: DumpFormat::Directory,
                raw_bytes: b.iter().map(|f| f.raw_bytes).sum(),
                files: b,
                stored_bytes: 0,
                duration_ms: 9,
                properties: None,
            },
        ],
        globals: Some(file("", &[12])),
        has_role_passwords: false,
    }
}

#[test]
fn issue_12_dump_id_round_trips_and_keys() {
    let t = time::macros::datetime!(2026-12-01 09:30:05 +01:00);
    let id = DumpId::new(t);
    assert_eq!(id.to_string(), "20261201-083005D");
    assert_eq!(id.to_string().parse::<DumpId>(), Ok(id.clone()));
    assert_eq!(id.manifest_key().as_str(), "dumps/20261201-083005D/manifest");
    assert_eq!(DumpId::from_manifest_key("dumps/20261201-083005D/manifest"), Some(id));
    for bad in ["20261201-083005F", "20261201-08300D", "x0261201-083005D", ""] {
        assert!(bad.parse::<DumpId>().is_err(), "{bad}");
    }
    assert_eq!(DumpId::from_manifest_key("backups/20261201-083005D/manifest"), None);
}

#[test]
fn issue_12_manifest_json_round_trips_and_validates() {
    let m = example();
    m.validate().expect("valid");
    let json = serde_json::to_string(&m).expect("json");
    assert!(json.contains("\"format\":\"custom\"") && json.contains("\"format\":\"directory\""), "{json}");
    let back: DumpManifest = serde_json::from_str(&json).expect("back");
    assert_eq!(back, m);
    assert_eq!(m.frames().len(), 3, "frames are named by content: repeated ids count once");
    assert_eq!(m.raw_bytes(), (1 << 20) + 5 + 7 + (2 << 20) + 3 + 12);
    assert_eq!(m.database("app").map(|d| d.format), Some(DumpFormat::Custom));
}

#[test]
fn issue_12_manifest_refusals() {
    type Damage = fn(&mut DumpManifest);
    let cases: [(Damage, &str); 10] = [
        (|m| m.format = 9, "manifest format 9"),
        (|m| m.databases[1].name = "app".into(), "repeated"),
        (|m| m.databases[1].files[0].name = "../x".into(), "not valid"),
        (|m| m.databases[0].files[0].name = "toc.dat".into(), "not valid"),
        (|m| m.databases[1].files[1].name = "toc.dat".into(), "not valid"),
        (|m| m.databases[0].files[0].raw_bytes += 1, "frames hold"),
        (|m| m.databases[0].raw_bytes += 1, "files hold"),
        (|m| m.globals.as_mut().expect("g").frames[0].raw_length = 0, "globals"),
        (|m| m.databases[0].properties.as_mut().expect("p").settings.push("=x".into()), "not name=value"),
        (|m| m.databases[0].properties.as_mut().expect("p").encoding.clear(), "without an encoding"),
    ];
    for (damage, want) in cases {
        let mut m = example();
        damage(&mut m);
        let e = m.validate().expect_err(want);
        assert!(e.to_string().contains(want), "{e} (wanted {want})");
    }
}

/// A manifest written before database properties were recorded (no `properties` key) still loads, and one
/// with them round-trips; the key is left out when there is nothing to record.
#[test]
fn issue_12_manifest_without_properties_still_loads() {
    let m = example();
    let mut v = serde_json::to_value(&m).expect("json");
    assert_eq!(v["databases"][0]["properties"]["encoding"], "LATIN1");
    assert!(v["databases"][1].get("properties").is_none(), "left out when None: {v}");
    if let Some(db) = v["databases"][0].as_object_mut() {
        db.remove("properties");
    }
    let old: DumpManifest = serde_json::from_value(v).expect("an older manifest");
    old.validate().expect("valid");
    assert_eq!(old.databases[0].properties, None);
    assert_eq!(old.databases[0].name, "app");
}

#[tokio::test]
async fn issue_12_manifests_save_once_list_and_name_damage() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = crate::storage::fs::FsStorage::new(dir.path());
    let m = example();
    assert!(save_manifest(&s, &m).await.expect("save"));
    assert!(!save_manifest(&s, &m).await.expect("again"), "create-only");
    assert_eq!(load_manifest(&s, &m.id).await.expect("load"), Some(m.clone()));
    let other: DumpId = "20261202-000000D".parse().expect("id");
    // A manifest stored under another dump's name is refused.
    let mut moved = m.clone();
    moved.label = None;
    store::create(&s, &other.manifest_key(), &moved).await.expect("create");
    let (good, bad) = manifests(&s).await.expect("list");
    assert_eq!(good, vec![m]);
    assert_eq!(bad.len(), 1);
    assert!(bad[0].1.to_string().contains("names dump 20261201-083000D"), "{}", bad[0].1);
}
