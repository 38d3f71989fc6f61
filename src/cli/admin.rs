//! `backupctl`: the admin CLI. Also runs `wal-push`/`wal-fetch` as subcommands (the same code as the binaries).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use super::exit::{self, Program};
use super::output::line;
use crate::Error;
use crate::config::Config;
use crate::repository::backup::BackupType;
use crate::repository::store;
use crate::storage::DynStorage;

mod alert;
pub mod catalog;
mod check;
mod drill;
mod dump;
mod gc;
mod metrics;
mod prune;
mod schedule;
mod status;
mod status_text;
mod verify;

/// Administer a backupctl repository of PostgreSQL WAL and base backups: status, check, verify, retention
/// (prune, delete, gc, keep), config-show; backup and restore run base-backup and pitr-restore, wal-push and
/// wal-fetch the archive and restore commands.
#[derive(Debug, Parser)]
#[command(name = "backupctl", version, after_long_help = exit::OTHER_HELP)]
pub struct Args {
    /// Configuration file (default: $BACKUPCTL_CONFIG, then /etc/backupctl/backupctl.toml).
    #[arg(long, value_name = "PATH", global = true)]
    pub config: Option<PathBuf>,
    /// Print the results as JSON: the same as the subcommand's own --json-output, for every subcommand that has
    /// one (see its --help).
    #[arg(long = "json-output", visible_alias = "json")]
    pub json_output: bool,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Admin subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Print the effective configuration (after interpolation and defaults) as TOML; secrets are redacted.
    ConfigShow {
        /// Print it as JSON instead: {"path": FILE, "config": {...}}.
        #[arg(long = "json-output", visible_alias = "json")]
        json_output: bool,
    },
    /// Check that everything backups need works: configuration, PostgreSQL's archiving settings, the repository
    /// (write, read and delete of a probe), a forced WAL switch reaching the archive, spool space, and the age of
    /// the newest backup and WAL. One line per check; exit 0 only if all pass.
    #[command(visible_alias = "test")]
    Check(check::CheckArgs),
    /// Create a new, empty repository at repository.url (wal-push's first push and base-backup also create one).
    /// Other commands refuse a URL where no repository exists. Run it as the PostgreSQL OS user.
    Init {
        /// Print the result as one JSON object: {"repository": URL, "format": N, "created": true|false}.
        #[arg(long = "json-output", visible_alias = "json")]
        json_output: bool,
    },
    /// Show the repository's cluster, the archived WAL per timeline with its gaps, the restorable window, and the
    /// backups: what each can reach, whether it is kept and why, and its sizes.
    Status(status::StatusArgs),
    /// Re-read every object the backups need (with --wal, every archived WAL file too), check sizes and checksums
    /// and WAL continuity, and name what is missing or corrupt and which backups it breaks.
    Verify(verify::VerifyArgs),
    /// Apply the retention policy: delete the backups it does not keep and the WAL no kept backup needs, then
    /// reclaim their space (gc).
    Prune(prune::PruneArgs),
    /// Mark a backup as kept: prune never deletes it (until a date, or forever).
    Keep(prune::KeepArgs),
    /// Remove a backup's keep mark: retention decides about it again.
    Unkeep(prune::UnkeepArgs),
    /// Delete one backup (its manifest first, so it stops being listed at once). Its data is reclaimed by gc.
    Delete(gc::DeleteArgs),
    /// Reclaim space: remove data objects no backup references and temporary files that killed writers left.
    Gc(gc::GcArgs),
    /// Print each scheduled job's next run times ([schedule]); with --daemon, run them in the foreground.
    Schedule(schedule::ScheduleArgs),
    /// Prove that a backup restores: restore it into a temporary directory, start PostgreSQL on it, let it
    /// recover, check it (pg_amcheck and [drill] sql), and record the result and the recovery time.
    Drill(drill::DrillArgs),
    /// Take a logical dump: pg_dump of each database (all but templates by default) and pg_dumpall
    /// --globals-only, compressed and checksummed into the repository; listed once complete.
    Dump(dump::DumpArgs),
    /// Restore one database of a logical dump through pg_restore (into a new or empty database, or over an
    /// existing one with --clean), and with --globals the roles and tablespaces. Every byte is fetched and
    /// verified before the target is touched.
    DumpRestore(dump::DumpRestoreArgs),
    /// Alerts by email and webhook ([alerts]): `alert test` sends a test message through each channel.
    Alert(alert::AlertArgs),
    /// The PostgreSQL catalog ([catalog]): `catalog migrate` creates or migrates schema backupctl, `catalog sync`
    /// mirrors the repository (backups, dumps, WAL ranges, status) into it for SQL queries (docs/design/catalog.md).
    Catalog(catalog::CatalogArgs),
    /// Print the metrics in the Prometheus text format (the daemon serves the same at /metrics).
    Metrics(metrics::MetricsArgs),
    /// Take a base backup (same as the base-backup binary).
    Backup {
        /// full or incremental.
        #[arg(value_name = "TYPE", value_parser = super::base_backup::parse_type)]
        backup_type: BackupType,
        /// Options.
        #[command(flatten)]
        args: super::base_backup::BackupArgs,
    },
    /// Restore a backup and set up point-in-time recovery (same as the pitr-restore binary).
    Restore(super::pitr_restore::RestoreArgs),
    /// PostgreSQL's archive_command: archive one WAL file (same as the wal-push binary).
    #[command(after_long_help = exit::WAL_PUSH_HELP)]
    WalPush {
        /// PostgreSQL's %p.
        wal_path: PathBuf,
    },
    /// PostgreSQL's restore_command: fetch one WAL file (same as the wal-fetch binary).
    #[command(after_long_help = exit::WAL_FETCH_HELP)]
    WalFetch {
        /// PostgreSQL's %f.
        name: String,
        /// PostgreSQL's %p.
        dest: PathBuf,
    },
}

/// Entry point of the `backupctl` binary.
pub fn main() -> ExitCode {
    let args = match super::parse_args::<Args>(Program::Other) {
        Ok(a) => a,
        Err(code) => return code,
    };
    let command = match with_json(args.command, args.json_output) {
        Ok(c) => c,
        Err(e) => {
            super::report_error("backupctl", &e);
            return exit::exit_code(Program::Other, Err(&e));
        }
    };
    let (program, result) = match command {
        Command::WalPush { wal_path } => {
            let a = super::wal_push::Args { config: args.config, push_worker: false, wal_path };
            (Program::WalPush, super::wal_push::run(&a))
        }
        Command::WalFetch { name, dest } => {
            exit::fatal_on_panic();
            let a = super::wal_fetch::Args {
                config: args.config,
                prefetch_worker: false,
                name: Some(name),
                dest: Some(dest),
            };
            (Program::WalFetch, super::wal_fetch::run(&a))
        }
        Command::Backup { backup_type, args: b } => {
            (Program::Other, super::base_backup::run(args.config.as_deref(), backup_type, &b))
        }
        Command::Restore(r) => (Program::Other, super::pitr_restore::run(args.config.as_deref(), &r)),
        other => (Program::Other, run(args.config, other)),
    };
    match &result {
        Err(e) if program == Program::WalFetch && e.is_not_in_archive() => {}
        Err(e) => super::report_error("backupctl", e),
        Ok(()) => {}
    }
    exit::exit_code(program, result.as_ref().map(|_| ()))
}

/// `command` with `backupctl --json-output <command>` (the flag before the subcommand) applied to the
/// subcommand's own flag. A command that prints no results (wal-push, wal-fetch) refuses it: [`Error::Usage`].
fn with_json(mut command: Command, json: bool) -> Result<Command, Error> {
    if !json {
        return Ok(command);
    }
    match &mut command {
        Command::ConfigShow { json_output } | Command::Init { json_output } => *json_output = true,
        Command::Check(a) => a.json_output = true,
        Command::Status(a) => a.json_output = true,
        Command::Verify(a) => a.json_output = true,
        Command::Prune(a) => a.json_output = true,
        Command::Keep(a) => a.json_output = true,
        Command::Unkeep(a) => a.json_output = true,
        Command::Delete(a) => a.json_output = true,
        Command::Gc(a) => a.json_output = true,
        Command::Schedule(a) => a.json_output = true,
        Command::Drill(a) => a.json_output = true,
        Command::Catalog(a) => match &mut a.command {
            catalog::CatalogCommand::Migrate { json_output, .. } | catalog::CatalogCommand::Sync { json_output } => {
                *json_output = true
            }
        },
        Command::Dump(a) => a.json_output = true,
        Command::DumpRestore(a) => a.json_output = true,
        Command::Alert(alert::AlertArgs { command: alert::AlertCommand::Test { json_output } }) => *json_output = true,
        Command::Metrics(_) => {
            return Err(Error::Usage("--json-output: metrics are printed in the Prometheus text format".to_owned()));
        }
        Command::Backup { args, .. } => args.json = true,
        Command::Restore(r) => r.json = true,
        Command::WalPush { .. } | Command::WalFetch { .. } => {
            return Err(Error::Usage("--json-output: wal-push and wal-fetch print no results".to_owned()));
        }
    }
    Ok(command)
}

/// What an admin subcommand runs with: the configuration (loaded and validated once) and a multi-thread runtime.
/// Subcommands are plain functions that block on `rt` where they need storage, so they may also call the
/// blocking PostgreSQL client between storage calls.
pub(super) struct Ctx {
    /// The configuration file that was loaded.
    pub path: PathBuf,
    /// The validated configuration.
    pub config: Config,
    /// The runtime storage calls run on.
    pub rt: tokio::runtime::Runtime,
}

impl Ctx {
    /// Open the repository's backend (with retries bounded by `archive.retry_deadline_seconds`); creates nothing.
    pub fn storage(&self) -> Result<DynStorage, Error> {
        let deadline = std::time::Duration::from_secs(self.config.archive.retry_deadline_seconds);
        Ok(self.rt.block_on(crate::storage::open(&self.config.repository.url, &self.config.repository.s3, deadline))?)
    }

    /// [`Ctx::storage`] of a repository that must exist already ([`store::require_existing`]).
    pub fn existing_storage(&self) -> Result<DynStorage, Error> {
        let storage = self.storage()?;
        self.rt.block_on(store::require_existing(storage.as_ref()))?;
        Ok(storage)
    }
}

/// Report one alert condition of a command (check, verify) when alerts are configured, so that cron users get
/// alerts without the daemon. Delivery failures are logged by the alerter and never fail the command. Alerts
/// keep their record in the spool: a user who does not own it (root, a read-only monitoring user running verify)
/// sends nothing and gets a warning, rather than leave files there that wal-push could not write.
///
/// With `health`, the archive's health conditions ([`crate::alert::health::current`]: wal-push failing, the
/// archive behind) are reported too, so that `backupctl check` run from cron raises them as the daemon does. The
/// backup-age condition is left out: check's own `backup_age` check already reports it in the `check` alert.
fn alert_condition(ctx: &Ctx, condition: crate::alert::Condition, health: bool) {
    let alerter = crate::alert::Alerter::new(&ctx.config);
    if !alerter.is_configured() {
        return;
    }
    use crate::storage::fs::owner;
    if let Err(e) = owner::check_writer(&ctx.config.spool.path, owner::Role::Spool) {
        tracing::warn!(condition = %condition.key, "alerts not sent: {e}");
        return;
    }
    let mut conditions = vec![condition];
    if health {
        match ctx.rt.block_on(crate::alert::health::current(&ctx.config)) {
            Ok(more) => conditions.extend(more.into_iter().filter(|c| c.key != crate::alert::BACKUP_AGE)),
            Err(e) => tracing::warn!(error = %e, "health alerts not evaluated"),
        }
    }
    ctx.rt.block_on(alerter.update(&conditions, jiff::Timestamp::now()));
}

fn run(config_flag: Option<PathBuf>, command: Command) -> Result<(), Error> {
    let (path, config) = super::load_config(config_flag.as_deref())?;
    super::init_tracing("backupctl", Some(&config));
    if let Command::ConfigShow { json_output } = command {
        let shown = redacted(&config);
        if json_output {
            // Paths as text: json! would panic on a path that is not UTF-8.
            let value = serde_json::json!({ "path": path.display().to_string(), "config": shown });
            return line(value);
        }
        let text = toml::to_string_pretty(&shown).map_err(|e| Error::Task(e.to_string()))?;
        return line(format_args!("# {}\n{}", path.display(), text.trim_end()));
    }
    let rt = super::multi_thread_runtime()?;
    let ctx = Ctx { path, config, rt };
    match command {
        Command::Init { json_output } => init(&ctx, json_output),
        Command::Check(a) => check::run(&ctx, &a),
        Command::Status(a) => status::run(&ctx, &a),
        Command::Verify(a) => verify::run(&ctx, &a),
        Command::Prune(a) => prune::run(&ctx, &a),
        Command::Keep(a) => prune::keep(&ctx, &a),
        Command::Unkeep(a) => prune::unkeep(&ctx, &a),
        Command::Delete(a) => gc::delete(&ctx, &a),
        Command::Gc(a) => gc::run(&ctx, &a),
        Command::Schedule(a) => schedule::run(&ctx, &a),
        Command::Drill(a) => drill::run(&ctx, &a),
        Command::Dump(a) => dump::run(&ctx, &a),
        Command::DumpRestore(a) => dump::restore(&ctx, &a),
        Command::Alert(a) => alert::run(&ctx, &a),
        Command::Metrics(a) => metrics::run(&ctx, &a),
        Command::Catalog(a) => catalog::run(&ctx, &a),
        Command::ConfigShow { .. }
        | Command::WalPush { .. }
        | Command::WalFetch { .. }
        | Command::Backup { .. }
        | Command::Restore(_) => Ok(()),
    }
}

fn init(ctx: &Ctx, json_output: bool) -> Result<(), Error> {
    super::check_repository_writer(&ctx.config.repository.url)?;
    let storage = ctx.storage()?;
    let (d, created) =
        ctx.rt.block_on(store::init(storage.as_ref(), &super::now_rfc3339(), ctx.config.repository.format))?;
    if json_output {
        line(serde_json::json!({
            "repository": storage.to_string(),
            "format": d.format,
            "created": created,
        }))
    } else if created {
        line(format_args!("created repository {storage} (format {})", d.format))
    } else {
        line(format_args!("repository {storage} already exists (format {}); nothing changed", d.format))
    }
}

fn redacted(config: &crate::config::Config) -> crate::config::Config {
    let mut c = config.clone();
    if let Some(ep) = c.repository.s3.endpoint.as_mut() {
        *ep = crate::config::redact_url(ep);
    }
    if c.repository.s3.sse_kms_key_id.is_some() {
        c.repository.s3.sse_kms_key_id = Some("<redacted>".to_owned());
    }
    if let Some(pg) = c.postgres.as_mut().filter(|pg| pg.password.is_some()) {
        pg.password = Some("<redacted>".to_owned());
    }
    if let Some(cat) = c.catalog.as_mut().filter(|cat| cat.password.is_some()) {
        cat.password = Some("<redacted>".to_owned());
    }
    c.alerts = c.alerts.redacted();
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 7: `init` takes `--json-output`/`--json`, and `--json-output` may come before the subcommand.
    #[test]
    fn issue_7_json_output_on_init_and_before_the_subcommand() {
        for argv in [&["backupctl", "init", "--json-output"][..], &["backupctl", "init", "--json"]] {
            let a = Args::try_parse_from(argv).expect("init --json-output");
            assert!(matches!(with_json(a.command, a.json_output), Ok(Command::Init { json_output: true })), "{argv:?}");
        }
        for (argv, want) in [
            (&["backupctl", "--json-output", "status"][..], true),
            (&["backupctl", "--json", "status"], true),
            (&["backupctl", "status", "--json"], true),
            (&["backupctl", "--config", "/x", "status"], false),
        ] {
            let a = Args::try_parse_from(argv).expect("parses");
            match with_json(a.command, a.json_output) {
                Ok(Command::Status(a)) => assert_eq!(a.json_output, want, "{argv:?}"),
                other => panic!("{argv:?}: {other:?}"),
            }
        }
        let a = Args::try_parse_from(["backupctl", "--json-output", "config-show"]).expect("parses");
        assert!(matches!(with_json(a.command, a.json_output), Ok(Command::ConfigShow { json_output: true })));
        let a = Args::try_parse_from(["backupctl", "--json-output", "backup", "full"]).expect("parses");
        assert!(matches!(with_json(a.command, a.json_output), Ok(Command::Backup { args, .. }) if args.json));
        // wal-push prints no results: the flag is refused rather than ignored.
        let a = Args::try_parse_from(["backupctl", "--json-output", "wal-push", "/x"]).expect("parses");
        assert!(matches!(with_json(a.command, a.json_output), Err(Error::Usage(_))));
    }
    /// Issue 12: `catalog sync|migrate` take `--json-output` before the subcommand too, and config-show redacts
    /// the catalog's password.
    #[test]
    fn issue_12_catalog_json_flag_and_redacted_password() {
        let a = Args::try_parse_from(["backupctl", "--json", "catalog", "sync"]).expect("parses");
        assert!(matches!(
            with_json(a.command, a.json_output),
            Ok(Command::Catalog(catalog::CatalogArgs { command: catalog::CatalogCommand::Sync { json_output: true } }))
        ));
        let a = Args::try_parse_from(["backupctl", "catalog", "migrate", "--to-version", "1"]).expect("parses");
        assert!(matches!(
            with_json(a.command, a.json_output),
            Ok(Command::Catalog(catalog::CatalogArgs {
                command: catalog::CatalogCommand::Migrate { to_version: Some(1), json_output: false }
            }))
        ));
        let text = "[repository]\nurl = \"file:///r\"\n[spool]\npath = \"/s\"\n[catalog]\npassword = \"hunter2\"\n";
        let c = Config::parse(std::path::Path::new("/c.toml"), text, &|_| None).expect("config");
        let shown = toml::to_string(&redacted(&c)).expect("toml");
        assert!(!shown.contains("hunter2") && shown.contains("<redacted>"), "{shown}");
    }
}
