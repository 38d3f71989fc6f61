//! Does PostgreSQL's `archive_command` call wal-push with this configuration? A pure judgement of the archive
//! settings (`archive_command`, `archive_library`; PostgreSQL's "Write Ahead Log, Archiving" settings chapter).
//!
//! The command is split into words as `/bin/sh` would (`shlex`), cut into simple commands at `&&`, `||`, `;`,
//! `|` and `&`, and each simple command is looked at for `[NAME=VALUE ...] [env|exec] wal-push ARGS` or
//! `backupctl ... wal-push ARGS` (by the program's file name). wal-push resolves its configuration as the
//! `--config` flag, else `$BACKUPCTL_CONFIG`, else [`crate::config::DEFAULT_CONFIG_PATH`]; the archiver runs the
//! command in the data directory, so a relative path is relative to it.

use std::path::{Path, PathBuf};

use crate::config::{CONFIG_ENV, DEFAULT_CONFIG_PATH};

/// Where the wal-push that `archive_command` calls takes its configuration from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigSource {
    /// `--config PATH` or `--config=PATH`.
    Flag(PathBuf),
    /// `BACKUPCTL_CONFIG=PATH` in front of the program.
    Env(PathBuf),
    /// Neither: the server's own `$BACKUPCTL_CONFIG`, else the default path.
    Unnamed,
}

/// One call of wal-push found in `archive_command`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WalPushCall {
    /// The program as written (`/usr/local/bin/wal-push`, `backupctl`).
    pub program: String,
    /// Where its configuration comes from.
    pub config: ConfigSource,
    /// An argument holds `%p` (the path of the file to archive, which wal-push takes).
    pub has_path: bool,
}

impl WalPushCall {
    /// The configuration file this call names, made absolute against the data directory where one is known.
    pub fn named_config(&self, data_directory: Option<&Path>) -> Option<PathBuf> {
        let p = match &self.config {
            ConfigSource::Flag(p) | ConfigSource::Env(p) => p,
            ConfigSource::Unnamed => return None,
        };
        Some(match data_directory {
            Some(d) if p.is_relative() => d.join(p),
            _ => p.clone(),
        })
    }
}

/// Find the first call of wal-push in `command`. Errors: the reason, one line (unbalanced quotes, no wal-push).
pub fn find_wal_push(command: &str) -> Result<WalPushCall, String> {
    let words = shlex::split(command)
        .ok_or_else(|| format!("archive_command '{command}' cannot be split into words (unbalanced quotes?)"))?;
    let mut simple: Vec<Vec<String>> = vec![Vec::new()];
    for w in words {
        if matches!(w.as_str(), "&&" | "||" | ";" | "|" | "&") {
            simple.push(Vec::new());
        } else if let Some(head) = w.strip_suffix(';') {
            if let Some(last) = simple.last_mut() {
                last.push(head.to_owned());
            }
            simple.push(Vec::new());
        } else if let Some(last) = simple.last_mut() {
            last.push(w);
        }
    }
    simple.iter().find_map(|words| wal_push_in(words)).ok_or_else(|| {
        format!(
            "archive_command '{command}' does not call wal-push (a wrapper script? then the wal_switch check shows \
             whether WAL reaches this repository)"
        )
    })
}

/// The call of wal-push in one simple command, if it is one.
fn wal_push_in(words: &[String]) -> Option<WalPushCall> {
    let mut env = None;
    let mut i = 0;
    while let Some(w) = words.get(i) {
        if let Some((name, value)) = w.split_once('=').filter(|(n, _)| is_shell_name(n)) {
            if name == CONFIG_ENV {
                env = Some(PathBuf::from(value));
            }
        } else if !matches!(w.as_str(), "env" | "exec" | "nice" | "ionice") {
            break;
        }
        i += 1;
    }
    let program = words.get(i)?;
    let base = program.rsplit('/').next().unwrap_or(program);
    let rest = &words[i + 1..];
    let args: Vec<&String> = match base {
        "wal-push" => rest.iter().collect(),
        "backupctl" => {
            let at = rest.iter().position(|w| w == "wal-push")?;
            rest.iter().enumerate().filter(|(j, _)| *j != at).map(|(_, w)| w).collect()
        }
        _ => return None,
    };
    let mut flag = None;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if a.as_str() == "--config" {
            flag = it.next().map(|p| PathBuf::from(p.as_str()));
        } else if let Some(p) = a.strip_prefix("--config=") {
            flag = Some(PathBuf::from(p));
        }
    }
    let config = match (flag, env) {
        (Some(p), _) => ConfigSource::Flag(p),
        (None, Some(p)) => ConfigSource::Env(p),
        (None, None) => ConfigSource::Unnamed,
    };
    let has_path = args.iter().any(|a| a.contains("%p"));
    Some(WalPushCall { program: program.clone(), config, has_path })
}

fn is_shell_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// What the archive settings mean for this configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Judgement {
    /// wal-push is called with this configuration; the detail says how.
    Ok(String),
    /// It is not; the reason, one line.
    Failed(String),
    /// It is called with another configuration file (`theirs`); the reason names both.
    OtherConfig {
        /// The file archive_command's wal-push reads.
        theirs: PathBuf,
        /// The reason, one line.
        reason: String,
    },
}

/// Judge the archive settings against `this_config` (the file this check loaded). `archive_library` is `None`
/// where the server has no such setting (before PostgreSQL 15); `same_file` says whether two paths name one file.
pub fn judge(
    archive_command: &str,
    archive_library: Option<&str>,
    data_directory: Option<&Path>,
    this_config: &Path,
    same_file: &dyn Fn(&Path, &Path) -> bool,
) -> Judgement {
    let this = this_config.display();
    if let Some(lib) = archive_library.filter(|l| !l.is_empty()) {
        return Judgement::Failed(format!(
            "archive_library = '{lib}' is set: PostgreSQL archives through that module and never runs \
             archive_command; set archive_library = '' and archive_command = '<path>/wal-push --config {this} %p'"
        ));
    }
    if archive_command.trim().is_empty() {
        return Judgement::Failed(format!(
            "archive_command is empty: PostgreSQL archives nothing and WAL piles up in pg_wal; set \
             archive_command = '<path>/wal-push --config {this} %p'"
        ));
    }
    let call = match find_wal_push(archive_command) {
        Ok(c) => c,
        Err(reason) => return Judgement::Failed(reason),
    };
    if !call.has_path {
        return Judgement::Failed(format!(
            "archive_command '{archive_command}' does not pass %p (the path of the WAL file) to wal-push"
        ));
    }
    let Some(theirs) = call.named_config(data_directory) else {
        let default = Path::new(DEFAULT_CONFIG_PATH);
        return if same_file(this_config, default) {
            Judgement::Ok(format!(
                "{} names no configuration: wal-push reads the server's ${CONFIG_ENV} if set, else \
                 {DEFAULT_CONFIG_PATH}, the file this check uses",
                call.program
            ))
        } else {
            Judgement::Failed(format!(
                "archive_command names no configuration, so wal-push reads the server's ${CONFIG_ENV} if set, else \
                 {DEFAULT_CONFIG_PATH}; this check uses {this}: add --config {this} to archive_command"
            ))
        };
    };
    let how = match call.config {
        ConfigSource::Env(_) => format!("{CONFIG_ENV}="),
        _ => "--config ".to_owned(),
    };
    if same_file(&theirs, this_config) {
        Judgement::Ok(format!("{} {how}{} (this configuration)", call.program, theirs.display()))
    } else {
        let reason = format!("archive_command uses {}, this check uses {this}", theirs.display());
        Judgement::OtherConfig { theirs, reason }
    }
}

/// Do two paths name the same file: equal after resolving links, or the same device and inode (a hard link).
/// Paths that cannot be resolved (a missing file) compare as written.
pub fn same_file(a: &Path, b: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    if a == b {
        return true;
    }
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(x), Ok(y)) => x.dev() == y.dev() && x.ino() == y.ino(),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flag(p: &str) -> ConfigSource {
        ConfigSource::Flag(p.into())
    }

    #[test]
    fn finds_wal_push_in_the_forms_people_write() {
        let cases: &[(&str, &str, ConfigSource, bool)] = &[
            ("/usr/bin/wal-push --config /etc/b.toml %p", "/usr/bin/wal-push", flag("/etc/b.toml"), true),
            ("wal-push --config=/etc/b.toml %p", "wal-push", flag("/etc/b.toml"), true),
            ("wal-push %p", "wal-push", ConfigSource::Unnamed, true),
            ("wal-push --config /etc/b.toml %f", "wal-push", flag("/etc/b.toml"), false),
            ("backupctl --config /c.toml wal-push %p", "backupctl", flag("/c.toml"), true),
            ("/opt/bin/backupctl wal-push --config /c.toml %p", "/opt/bin/backupctl", flag("/c.toml"), true),
            (
                "BACKUPCTL_CONFIG=/e.toml /usr/bin/wal-push %p",
                "/usr/bin/wal-push",
                ConfigSource::Env("/e.toml".into()),
                true,
            ),
            ("env BACKUPCTL_CONFIG=/e.toml wal-push %p", "wal-push", ConfigSource::Env("/e.toml".into()), true),
            ("BACKUPCTL_CONFIG=/e.toml wal-push --config /f.toml %p", "wal-push", flag("/f.toml"), true),
            (
                "'/path with space/wal-push' --config '/a b.toml' \"%p\"",
                "/path with space/wal-push",
                flag("/a b.toml"),
                true,
            ),
            ("test ! -f /x/%f && wal-push --config /c.toml %p", "wal-push", flag("/c.toml"), true),
            ("true; exec wal-push --config /c.toml %p", "wal-push", flag("/c.toml"), true),
        ];
        for (command, program, config, has_path) in cases {
            let call = find_wal_push(command).unwrap_or_else(|e| panic!("{command}: {e}"));
            assert_eq!(call.program, *program, "{command}");
            assert_eq!(&call.config, config, "{command}");
            assert_eq!(call.has_path, *has_path, "{command}");
        }
        for not_it in ["cp %p /archive/%f", "/usr/local/bin/archive.sh %p", "backupctl status", "wal-push-old %p", ""] {
            assert!(find_wal_push(not_it).is_err(), "{not_it}");
        }
        assert!(find_wal_push("wal-push 'unbalanced %p").unwrap_err().contains("unbalanced quotes"));
    }

    #[test]
    fn judgements() {
        let this = Path::new("/etc/backupctl/backupctl.toml");
        let other = Path::new("/srv/b.toml");
        let eq = |a: &Path, b: &Path| a == b;
        let data = Some(Path::new("/var/lib/pg/data"));
        let ok = |j: Judgement| matches!(j, Judgement::Ok(_));
        assert!(ok(judge("wal-push --config /etc/backupctl/backupctl.toml %p", Some(""), data, this, &eq)));
        assert!(ok(judge("wal-push %p", None, data, this, &eq)), "default path, default file");
        match judge("wal-push %p", None, data, other, &eq) {
            Judgement::Failed(r) => assert!(r.contains("names no configuration") && r.contains("/srv/b.toml"), "{r}"),
            j => panic!("{j:?}"),
        }
        match judge("wal-push --config /etc/other.toml %p", None, data, this, &eq) {
            Judgement::OtherConfig { theirs, reason } => {
                assert_eq!(theirs, Path::new("/etc/other.toml"));
                assert_eq!(
                    reason,
                    "archive_command uses /etc/other.toml, this check uses /etc/backupctl/backupctl.toml"
                );
            }
            j => panic!("{j:?}"),
        }
        // Relative to the data directory, where the archiver runs.
        let rel = Path::new("/var/lib/pg/data/b.toml");
        assert!(ok(judge("wal-push --config b.toml %p", None, data, rel, &eq)));
        let fails = |j: Judgement, want: &str| match j {
            Judgement::Failed(r) => assert!(r.contains(want), "{r} should say {want}"),
            j => panic!("{j:?}"),
        };
        fails(
            judge("wal-push --config /etc/backupctl/backupctl.toml %p", Some("basic_archive"), data, this, &eq),
            "archive_library = 'basic_archive'",
        );
        fails(judge("", Some(""), data, this, &eq), "archive_command is empty");
        fails(judge("cp %p /a/%f", None, data, this, &eq), "does not call wal-push");
        fails(judge("wal-push --config /etc/backupctl/backupctl.toml", None, data, this, &eq), "does not pass %p");
    }
}
