//! Issue 11: the least-privilege IAM policies in packaging/iam/, checked against what the code calls.
//!
//! - `issue_11_iam_policies_cover_every_s3_call` reads the S3 backend's source (src/storage/s3.rs and
//!   src/storage/s3/*.rs), collects every aws-sdk-s3 operation it sends, and checks each against a table of the IAM
//!   actions it needs (an operation missing from the table fails the test), then checks that the full policy grants
//!   all of them and the push-only policy exactly what a database host needs, nothing more. It also checks the
//!   repository key prefixes the push-only host may delete and the optional create-only bucket policy against the
//!   repository's layout and the code's overwriting writes.
//! - `issue_11_iam_policies_on_s3` runs the tools against a moto S3 server with IAM enforced, as two IAM users
//!   holding the two policies: the push-only user archives, backs up (multipart uploads included), checks,
//!   verifies, fetches and restores, and is refused deleting a backup and gc; the full user deletes and gc's.
//!   moto evaluates actions and resources but no condition keys, so the create-only bucket policy (conditions on
//!   `s3:if-none-match`) is checked by the first test only. IAM concerns S3 only: file:// has no counterpart.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use serde_json::Value;

use crate::support::cluster::{Cluster, PgDir, as_postgres, assert_ok, bin, output_text, require_pg, write_config};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// What an IAM action is granted on: the bucket (`arn:aws:s3:::BUCKET`) or the objects under the repository's
/// prefix (`arn:aws:s3:::BUCKET/PREFIX/*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum On {
    Bucket,
    Objects,
}

/// Whether the push-only host (wal-push, wal-fetch, base-backup, pitr-restore, check, status, verify, init, keep)
/// sends an operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PushOnly {
    Needs,
    /// Only on these key prefixes of the repository (its own leases and check probes).
    Under(&'static [&'static str]),
    /// Only gc, prune and delete send it.
    Never,
}

/// An aws-sdk-s3 operation: its name (the client method), the IAM actions it needs and on what, and whether a
/// push-only host sends it.
struct Operation {
    sdk: &'static str,
    actions: &'static [(&'static str, On)],
    push_only: PushOnly,
}

const fn op(sdk: &'static str, actions: &'static [(&'static str, On)], push_only: PushOnly) -> Operation {
    Operation { sdk, actions, push_only }
}

/// Every aws-sdk-s3 operation the backend may call: the IAM actions it needs, and whether a push-only host sends
/// it. Source: AWS Service Authorization Reference, "Actions, resources, and condition keys for Amazon S3", table
/// "API operations defined by Amazon S3" (docs.aws.amazon.com/service-authorization/latest/reference/list_s3.html),
/// and the "Permissions" section of each operation in the Amazon S3 API Reference. GetObject and HeadObject also
/// need s3:ListBucket on the bucket: without it S3 answers 403 instead of 404 for a missing key, and wal-fetch
/// would take "not archived (yet)" for a failure and stop the recovery (exit 255).
const OPERATIONS: &[Operation] = &[
    op("put_object", &[("s3:PutObject", On::Objects)], PushOnly::Needs),
    op("create_multipart_upload", &[("s3:PutObject", On::Objects)], PushOnly::Needs),
    op("upload_part", &[("s3:PutObject", On::Objects)], PushOnly::Needs),
    op("complete_multipart_upload", &[("s3:PutObject", On::Objects)], PushOnly::Needs),
    op("abort_multipart_upload", &[("s3:AbortMultipartUpload", On::Objects)], PushOnly::Needs),
    op("get_object", &[("s3:GetObject", On::Objects), ("s3:ListBucket", On::Bucket)], PushOnly::Needs),
    op("head_object", &[("s3:GetObject", On::Objects), ("s3:ListBucket", On::Bucket)], PushOnly::Needs),
    op("list_objects_v2", &[("s3:ListBucket", On::Bucket)], PushOnly::Needs),
    op("delete_object", &[("s3:DeleteObject", On::Objects)], PushOnly::Under(&["locks/", "check/"])),
    op("delete_objects", &[("s3:DeleteObject", On::Objects)], PushOnly::Never),
    op("list_multipart_uploads", &[("s3:ListBucketMultipartUploads", On::Bucket)], PushOnly::Never),
    op("list_parts", &[("s3:ListMultipartUploadParts", On::Objects)], PushOnly::Never),
];

const BUCKET_ARN: &str = "arn:aws:s3:::BUCKET";
const OBJECTS_ARN: &str = "arn:aws:s3:::BUCKET/PREFIX/*";

fn read(rel: &str) -> String {
    std::fs::read_to_string(Path::new(ROOT).join(rel)).unwrap_or_else(|e| panic!("read {rel}: {e}"))
}

/// The source with whole-line `//` comments removed (doc comments may name SDK calls).
fn code_of(rel: &str) -> String {
    read(rel).lines().filter(|l| !l.trim_start().starts_with("//")).collect::<Vec<_>>().join("\n")
}

/// Files under `dir` (relative to the crate root) whose name ends with `.rs`, recursively, sorted.
fn rust_files(dir: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![PathBuf::from(ROOT).join(dir)];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap_or_else(|e| panic!("{}: {e}", d.display())) {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let rel = path.strip_prefix(ROOT).expect("under root").to_string_lossy().into_owned();
                out.push(rel);
            }
        }
    }
    out.sort();
    out
}

/// The identifier called right after `client .` in `code` (whitespace and newlines allowed around the dot).
fn client_calls(code: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = code;
    while let Some(at) = rest.find("client") {
        let before = rest[..at].chars().next_back();
        rest = &rest[at + "client".len()..];
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
            continue;
        }
        let after = rest.trim_start();
        let Some(after) = after.strip_prefix('.') else { continue };
        let after = after.trim_start();
        let name: String = after.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
        if after[name.len()..].trim_start().starts_with('(') && !name.is_empty() {
            out.push(name);
        }
    }
    out
}

/// How many `.send()` calls `code` has (every SDK request ends in one).
fn sends(code: &str) -> usize {
    let squeezed: String = code.chars().filter(|c| !c.is_whitespace()).collect();
    squeezed.matches(".send()").count()
}

/// The SDK operations the S3 backend calls, checked to be all of its requests.
fn sdk_operations() -> BTreeSet<String> {
    let files: Vec<String> =
        rust_files("src/storage").into_iter().filter(|f| f.starts_with("src/storage/s3")).collect();
    assert!(files.iter().any(|f| f == "src/storage/s3.rs"), "{files:?}");
    let mut ops = BTreeSet::new();
    for file in &files {
        let code = code_of(file);
        let calls = client_calls(&code);
        assert_eq!(
            calls.len(),
            sends(&code),
            "{file}: every .send() must belong to a `client.<operation>(` call this test can see ({calls:?}); \
             call the SDK as self.client.<operation>() so the IAM check below covers it"
        );
        ops.extend(calls);
    }
    // Nothing else talks to S3: a new caller elsewhere must go through the backend (or extend this test).
    for file in rust_files("src") {
        if !file.starts_with("src/storage/s3") {
            assert!(!code_of(&file).contains("aws_sdk_s3"), "{file} uses aws_sdk_s3 outside the S3 backend");
        }
    }
    ops
}

/// Policy statement fields as lists.
fn strings(v: &Value) -> Vec<String> {
    match v {
        Value::String(s) => vec![s.clone()],
        Value::Array(a) => a.iter().map(|x| x.as_str().expect("string").to_owned()).collect(),
        other => panic!("expected a string or a list, got {other}"),
    }
}

/// The (action, resource) pairs an identity policy allows; checks it has only unconditional Allow statements.
fn grants(rel: &str) -> BTreeSet<(String, String)> {
    let policy: Value = serde_json::from_str(&read(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"));
    assert_eq!(policy["Version"], "2012-10-17", "{rel}");
    let mut out = BTreeSet::new();
    for st in policy["Statement"].as_array().expect("Statement list") {
        assert_eq!(st["Effect"], "Allow", "{rel}: {st}");
        for key in ["NotAction", "NotResource", "Principal", "Condition"] {
            assert!(st.get(key).is_none(), "{rel}: identity policy statement with {key}: {st}");
        }
        for action in strings(&st["Action"]) {
            assert!(action.starts_with("s3:") && !action.contains('*'), "{rel}: action {action}");
            for resource in strings(&st["Resource"]) {
                assert!(resource.starts_with(BUCKET_ARN), "{rel}: resource {resource} outside BUCKET");
                out.insert((action.clone(), resource));
            }
        }
    }
    out
}

fn arn(on: On) -> &'static str {
    match on {
        On::Bucket => BUCKET_ARN,
        On::Objects => OBJECTS_ARN,
    }
}

/// Key prefixes (`wal/`) and top-level keys (`backupctl.json`) of the repository layout, from its module doc.
fn layout_top_level() -> BTreeSet<String> {
    let doc = read("src/repository/mod.rs");
    let start = doc.find("//! ```text").expect("layout block");
    let block = &doc[start..];
    let end = block[10..].find("//! ```").expect("layout block end") + 10;
    block[..end]
        .lines()
        .skip(1)
        .filter_map(|l| l.strip_prefix("//! ")?.split_whitespace().next())
        .map(|key| match key.split_once('/') {
            Some((dir, _)) => format!("{dir}/"),
            None => key.to_owned(),
        })
        .collect()
}

#[test]
fn issue_11_iam_policies_cover_every_s3_call() {
    let ops = sdk_operations();
    let table: BTreeMap<&str, &Operation> = OPERATIONS.iter().map(|o| (o.sdk, o)).collect();
    let unknown: Vec<&String> = ops.iter().filter(|op| !table.contains_key(op.as_str())).collect();
    assert!(
        unknown.is_empty(),
        "the S3 backend calls {unknown:?}, which this test does not know: add each with its IAM actions (AWS Service \
         Authorization Reference) to OPERATIONS, and to packaging/iam/*.json"
    );
    let unused: Vec<&&str> = table.keys().filter(|op| !ops.contains(**op)).collect();
    assert!(unused.is_empty(), "OPERATIONS lists {unused:?}, which the backend no longer calls: remove them");

    let full = grants("packaging/iam/backupctl-full.json");
    let push = grants("packaging/iam/backupctl-push-only.json");
    let lock_prefix = backupctl::repository::lease::LOCKS_PREFIX;
    let probe = code_of("src/check/steps.rs");
    assert!(probe.contains("Key::new(format!(\"check/probe-"), "check's probe key moved: update PushOnly::Under");

    let (mut want_full, mut want_push) = (BTreeSet::new(), BTreeSet::new());
    for op in &ops {
        let Operation { actions, push_only, .. } = table[op.as_str()];
        for (action, on) in *actions {
            want_full.insert((action.to_string(), arn(*on).to_owned()));
            match push_only {
                PushOnly::Needs => {
                    want_push.insert((action.to_string(), arn(*on).to_owned()));
                }
                PushOnly::Under(prefixes) => {
                    assert_eq!(*on, On::Objects);
                    assert!(prefixes.contains(&lock_prefix) && prefixes.contains(&"check/"), "{prefixes:?}");
                    for p in *prefixes {
                        want_push.insert((action.to_string(), format!("arn:aws:s3:::BUCKET/PREFIX/{p}*")));
                    }
                }
                PushOnly::Never => {}
            }
        }
    }
    // Exactly: every action the code needs is granted, and nothing else (least privilege).
    assert_eq!(full, want_full, "backupctl-full.json (left) against what the code calls (right)");
    assert_eq!(push, want_push, "backupctl-push-only.json (left) against what a database host calls (right)");

    // The optional bucket policy denies the push-only host overwriting writes (no If-None-Match) on every key the
    // code writes create-only. The code overwrites only leases (locks/), check probes (check/) and, in a format 1
    // repository, the chunks a full backup writes again (data/); everything else in the layout is create-only.
    let overwriting: BTreeSet<String> = rust_files("src")
        .into_iter()
        .filter(|f| !f.starts_with("src/storage/"))
        .filter(|f| code_of(f).split("#[cfg(test)]").next().is_some_and(|c| c.contains("PutMode::Overwrite")))
        .collect();
    let expected: BTreeSet<String> = ["src/backup/upload.rs", "src/check/steps.rs", "src/repository/store.rs"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    assert_eq!(
        overwriting, expected,
        "a new overwriting write: decide whether a push-only host may do it and update \
         packaging/iam/backupctl-push-only-create-only.bucket-policy.json and this test"
    );
    let put_record_callers: BTreeSet<String> = rust_files("src")
        .into_iter()
        .filter(|f| f != "src/repository/store.rs" && code_of(f).contains("put_record("))
        .collect();
    assert!(
        put_record_callers.iter().all(|f| f.starts_with("src/repository/lease")),
        "store::put_record (an overwriting write) used outside leases: {put_record_callers:?}"
    );
    assert!(code_of("src/backup/upload.rs").contains("id.key()"), "format 1 chunk writer changed");
    assert!(backupctl::repository::backup::DATA_PREFIX == "data/");

    let bucket_policy: Value =
        serde_json::from_str(&read("packaging/iam/backupctl-push-only-create-only.bucket-policy.json")).expect("json");
    let statements = bucket_policy["Statement"].as_array().expect("Statement");
    assert_eq!(statements.len(), 1);
    let deny = &statements[0];
    assert_eq!(deny["Effect"], "Deny");
    assert_eq!(deny["Action"], "s3:PutObject");
    assert_eq!(deny["Condition"]["Null"]["s3:if-none-match"], "true");
    assert_eq!(deny["Condition"]["Bool"]["s3:ObjectCreationOperation"], "true", "CreateMultipartUpload stays allowed");
    let denied: BTreeSet<String> = strings(&deny["Resource"])
        .iter()
        .map(|r| r.strip_prefix("arn:aws:s3:::BUCKET/PREFIX/").expect("under PREFIX").trim_end_matches('*').to_owned())
        .collect();
    let overwritable: BTreeSet<String> =
        [backupctl::repository::backup::DATA_PREFIX, lock_prefix].iter().map(|s| s.to_string()).collect();
    let create_only: BTreeSet<String> = layout_top_level().difference(&overwritable).cloned().collect();
    assert!(create_only.contains("wal/") && create_only.contains("backupctl.json"), "{create_only:?}");
    assert_eq!(denied, create_only, "the bucket policy's create-only keys against the repository layout");
}

// --- the policies on a real S3 protocol server with IAM enforced -------------------------------------------------

/// An IAM user's access key.
struct AccessKey {
    id: String,
    secret: String,
}

/// `application/x-www-form-urlencoded` value.
fn form_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// POST `body` to moto at `path` and return the response (status line included); moto does not check signatures
/// while IAM is not enforced, so the Authorization header only names the service.
fn moto_post(endpoint: &str, path: &str, content_type: &str, body: &str) -> String {
    let host = endpoint.strip_prefix("http://").expect("http endpoint");
    let mut stream = std::net::TcpStream::connect(host).expect("connect moto");
    stream.set_read_timeout(Some(Duration::from_secs(30))).expect("timeout");
    let request = format!(
        "POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
         Authorization: AWS4-HMAC-SHA256 Credential=test/20260101/us-east-1/iam/aws4_request, SignedHeaders=host, \
         Signature=0\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).expect("send");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("read");
    assert!(response.starts_with("HTTP/1.1 200") || response.starts_with("HTTP/1.0 200"), "{path}: {response}");
    response
}

fn iam(endpoint: &str, params: &[(&str, &str)]) -> String {
    let body: Vec<String> =
        params.iter().chain(&[("Version", "2010-05-08")]).map(|(k, v)| format!("{k}={}", form_encode(v))).collect();
    moto_post(endpoint, "/", "application/x-www-form-urlencoded", &body.join("&"))
}

fn xml_field(xml: &str, name: &str) -> String {
    let open = format!("<{name}>");
    let start = xml.find(&open).unwrap_or_else(|| panic!("no {name} in {xml}")) + open.len();
    let end = xml[start..].find('<').expect("closing tag") + start;
    xml[start..end].to_owned()
}

/// An IAM user holding `policy_file` with BUCKET and PREFIX filled in (plus `moto_only`, statements moto needs
/// where it departs from AWS), and its access key.
fn user_with_policy(
    endpoint: &str,
    name: &str,
    policy_file: &str,
    (bucket, prefix): (&str, &str),
    moto_only: &[Value],
) -> AccessKey {
    let text = read(policy_file)
        .replace("arn:aws:s3:::BUCKET", &format!("arn:aws:s3:::{bucket}"))
        .replace(&format!("arn:aws:s3:::{bucket}/PREFIX/"), &format!("arn:aws:s3:::{bucket}/{prefix}/"));
    assert!(!text.contains("BUCKET") && !text.contains("PREFIX"), "{text}");
    let mut policy: Value = serde_json::from_str(&text).expect("policy json");
    policy["Statement"].as_array_mut().expect("Statement").extend(moto_only.iter().cloned());
    let policy = policy.to_string();
    iam(endpoint, &[("Action", "CreateUser"), ("UserName", name)]);
    iam(
        endpoint,
        &[("Action", "PutUserPolicy"), ("UserName", name), ("PolicyName", name), ("PolicyDocument", &policy)],
    );
    let created = iam(endpoint, &[("Action", "CreateAccessKey"), ("UserName", name)]);
    AccessKey { id: xml_field(&created, "AccessKeyId"), secret: xml_field(&created, "SecretAccessKey") }
}

/// A command run as postgres with `key`'s credentials (instead of the test process's).
fn as_user(program: &str, key: &AccessKey) -> Command {
    let mut c = as_postgres(&bin(program));
    c.env("AWS_ACCESS_KEY_ID", &key.id).env("AWS_SECRET_ACCESS_KEY", &key.secret);
    c
}

fn run(program: &str, key: &AccessKey, config: &Path, args: &[&str]) -> Output {
    as_user(program, key).arg("--config").arg(config).args(args).output().expect(program)
}

/// An SDK client for moto with `key`.
fn client(endpoint: &str, key: &AccessKey) -> aws_sdk_s3::Client {
    use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region};
    let conf = aws_sdk_s3::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .endpoint_url(endpoint)
        .force_path_style(true)
        .credentials_provider(Credentials::new(&key.id, &key.secret, None, None, "iam-test"))
        .build();
    aws_sdk_s3::Client::from_conf(conf)
}

async fn keys_under(client: &aws_sdk_s3::Client, bucket: &str, prefix: &str) -> Vec<String> {
    let out = client.list_objects_v2().bucket(bucket).prefix(prefix).send().await.expect("list");
    out.contents().iter().filter_map(|o| o.key().map(str::to_owned)).collect()
}

#[test]
fn issue_11_iam_policies_on_s3() {
    let Some(pg) = require_pg() else { return };
    let Some(server) = crate::support::s3::own_server() else { return };
    let endpoint = server.endpoint.clone();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let bucket = rt.block_on(server.new_bucket("iam"));
    let prefix = "repo";
    let push = user_with_policy(&endpoint, "push", "packaging/iam/backupctl-push-only.json", (&bucket, prefix), &[]);
    // moto authorizes DeleteObjects against the bucket's ARN; AWS checks s3:DeleteObject on each key, which the
    // policy grants (moto 5.2 s3/responses.py, `_bucket_response_delete_keys`).
    let moto_delete_objects = serde_json::json!({
        "Effect": "Allow", "Action": "s3:DeleteObject", "Resource": format!("arn:aws:s3:::{bucket}")
    });
    let full = user_with_policy(
        &endpoint,
        "full",
        "packaging/iam/backupctl-full.json",
        (&bucket, prefix),
        &[moto_delete_objects],
    );
    // From now on every request needs a signature of an IAM user and a policy allowing it.
    let answer = moto_post(&endpoint, "/moto-api/reset-auth", "text/plain", "0");
    assert!(answer.contains("\"status\": \"ok\""), "{answer}");
    let anonymous = rt.block_on(server.client().list_objects_v2().bucket(&bucket).send());
    assert!(anonymous.is_err(), "moto enforces IAM: the test credentials are no IAM user's");

    let dir = PgDir::new("iam");
    let spool = dir.sub("spool");
    std::fs::create_dir_all(&spool).expect("spool");
    crate::support::cluster::chown_postgres(&spool);
    // Objects above 1 MiB go up in 5 MiB parts: a base backup's packs then use the multipart operations.
    let s3 = format!(
        "[repository.s3]\nendpoint = \"{endpoint}\"\nregion = \"us-east-1\"\nforce_path_style = true\nallow_http = true\n\
         multipart_threshold_mib = 1\nmultipart_part_size_mib = 5\n\n[retention]\ngc_grace = \"0s\"\n"
    );
    let url = format!("s3://{bucket}/{prefix}");
    let placeholder = write_config(dir.path(), &url, &spool, &s3);
    // The server's archive_command runs with the push-only user's credentials.
    let archive = format!(
        "archive_mode = on\narchive_command = 'env AWS_ACCESS_KEY_ID={} AWS_SECRET_ACCESS_KEY={} {} --config {} %p'\n",
        push.id,
        push.secret,
        bin("wal-push").display(),
        placeholder.display()
    );
    let mut cluster = Cluster::init_with(&pg, &dir, "src", &archive);
    let config = write_config(
        dir.path(),
        &url,
        &spool,
        &format!(
            "{s3}\n[postgres]\nhost = \"{}\"\nport = {}\nuser = \"postgres\"\n",
            cluster.socket.display(),
            cluster.port
        ),
    );
    crate::support::cluster::chown_postgres(dir.path());

    let out = run("backupctl", &push, &config, &["init"]);
    assert_ok("backupctl init as the push-only user", &out);
    cluster.start();
    // About 25 MB of hex digits (compresses about 2x): packs above the multipart threshold.
    cluster.sql(
        "create table filler as select g, md5(g::text) || md5(random()::text) || md5(random()::text) \
         || md5(random()::text) pad from generate_series(1, 200000) g",
    );
    let segment = cluster.switch_and_wait_archived(Duration::from_secs(120));

    let out = as_user("base-backup", &push)
        .env("BACKUPCTL_LOG", "backupctl=debug")
        .arg("--config")
        .arg(&config)
        .args(["--fast", "--json", "--type", "full"])
        .output()
        .expect("base-backup");
    assert_ok("base-backup as the push-only user", &out);
    let (_, stdout, stderr) = output_text(&out);
    assert!(stderr.contains("uploaded part"), "the backup used multipart uploads: {stderr}");
    let summary: Value = serde_json::from_str(&stdout).expect("base-backup --json");
    let id = summary["id"].as_str().expect("backup id").to_owned();
    let full_client = client(&endpoint, &full);
    let locks = rt.block_on(keys_under(&full_client, &bucket, &format!("{prefix}/locks/")));
    assert!(locks.is_empty(), "the push-only host deleted its own lease: {locks:?}");

    let out = run("backupctl", &push, &config, &["check", "--json-output"]);
    let (_, stdout, stderr) = output_text(&out);
    let report: Value = serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("check json: {e}: {stdout} {stderr}"));
    let repository = report["checks"].as_array().expect("checks").iter().find(|c| c["name"] == "repository");
    assert_eq!(repository.expect("repository check")["status"], "ok", "probe put, get, delete: {report}");
    assert!(rt.block_on(keys_under(&full_client, &bucket, &format!("{prefix}/check/"))).is_empty());
    for args in [&["status"][..], &["verify"][..]] {
        assert_ok(&format!("backupctl {args:?} as the push-only user"), &run("backupctl", &push, &config, args));
    }
    let dest = dir.path().join("RECOVERYXLOG");
    let fetched = as_user("wal-fetch", &push).arg("--config").arg(&config).arg(&segment).arg(&dest).output();
    assert_ok("wal-fetch of an archived segment", &fetched.expect("wal-fetch"));
    let absent = as_user("wal-fetch", &push).arg("--config").arg(&config).arg("0000000A.history").arg(&dest).output();
    let (code, _, err) = output_text(&absent.expect("wal-fetch"));
    assert_eq!(code, Some(1), "a missing file is 'not in the archive' (404, not 403) under the policy: {err}");
    let restored = dir.path().join("restored");
    let out = as_user("pitr-restore", &push)
        .arg("--config")
        .arg(&config)
        .arg("--destination")
        .arg(&restored)
        .output()
        .expect("pitr-restore");
    assert_ok("pitr-restore as the push-only user", &out);
    assert!(restored.join("PG_VERSION").is_file());

    // The push-only host cannot delete backups, expire WAL or reclaim space.
    for args in [&["delete", "--backup-id", id.as_str()][..], &["gc"][..], &["prune", "--policy", "keep-last=1"][..]] {
        let (code, _, err) = output_text(&run("backupctl", &push, &config, args));
        assert_eq!(code, Some(1), "backupctl {args:?} as the push-only user: {err}");
        assert!(err.to_lowercase().contains("denied"), "names the refusal: {err}");
        assert!(err.contains("hint:") && err.contains("push-only policy"), "says what to do: {err}");
    }
    let manifests = rt.block_on(keys_under(&full_client, &bucket, &format!("{prefix}/backups/{id}/")));
    assert!(!manifests.is_empty(), "the backup is still there");
    let locks = rt.block_on(keys_under(&full_client, &bucket, &format!("{prefix}/locks/")));
    assert!(locks.is_empty(), "the refused gc removed its lease: {locks:?}");

    // The full host: a leftover multipart upload (a killed writer's) and the backup go.
    let leftover = format!("{prefix}/packs/00/leftover");
    rt.block_on(full_client.create_multipart_upload().bucket(&bucket).key(&leftover).send()).expect("create upload");
    for args in [&["delete", "--backup-id", id.as_str()][..], &["gc"][..]] {
        assert_ok(&format!("backupctl {args:?} as the full user"), &run("backupctl", &full, &config, args));
    }
    let uploads = rt.block_on(full_client.list_multipart_uploads().bucket(&bucket).send()).expect("list uploads");
    assert!(uploads.uploads().is_empty(), "gc aborted the leftover upload: {:?}", uploads.uploads());
    let manifests = rt.block_on(keys_under(&full_client, &bucket, &format!("{prefix}/backups/{id}/")));
    assert!(manifests.is_empty(), "{manifests:?}");
    cluster.stop();
}
