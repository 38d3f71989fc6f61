//! `backupctl dump` and `backupctl dump-restore`: logical dumps through pg_dump and pg_restore.

use clap::Args;

use super::Ctx;
use crate::Error;
use crate::cli::human_bytes;
use crate::cli::output::line;
use crate::dump::{self, DumpId, DumpRequest, RestoreRequest};

/// `backupctl dump` options.
#[derive(Debug, Clone, Args)]
pub struct DumpArgs {
    /// Dump this database (repeatable). Default: every database that is not a template and allows connections.
    #[arg(long = "database", value_name = "DB")]
    pub databases: Vec<String>,
    /// Free text stored in the dump's manifest and shown by status.
    #[arg(long, value_name = "LABEL")]
    pub label: Option<String>,
    /// Run pg_dump with this many parallel jobs (directory format, through a temporary directory in [dump]
    /// temp_dir); 1 (the default) streams the custom format straight into the repository.
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub jobs: u16,
    /// Keep the roles' password hashes in the globals script (pg_dumpall without --no-role-passwords).
    #[arg(long)]
    pub with_role_passwords: bool,
    /// Print the dump's summary as one JSON object, the same as each dump of `backupctl status --json-output`:
    /// id, label, started_at, finished_at, server_version_num, pg_dump_version, databases [{name, format, files,
    /// bytes, stored_bytes, duration_ms}], has_globals, globals_bytes, has_role_passwords, bytes, stored_bytes.
    #[arg(long = "json-output", visible_alias = "json")]
    pub json_output: bool,
}

/// `backupctl dump-restore` options.
#[derive(Debug, Clone, Args)]
pub struct DumpRestoreArgs {
    /// The dump to restore from (as `backupctl status --type dump` lists it, e.g. 20261201-083000D).
    #[arg(long = "backup-id", value_name = "ID")]
    pub backup_id: DumpId,
    /// The database of the dump to restore. Needed unless only --globals is asked.
    #[arg(long, value_name = "DB")]
    pub database: Option<String>,
    /// Restore into this database instead of one of the same name; it is created (as with --create) if it does
    /// not exist.
    #[arg(long = "target-database", value_name = "NAME")]
    pub target_database: Option<String>,
    /// Create the target database (from template0) if it does not exist. A database dump-restore creates takes
    /// the source's encoding, LC_COLLATE, LC_CTYPE, locale provider and owner (when that role exists), and after
    /// the restore its ALTER DATABASE ... SET settings.
    #[arg(long)]
    pub create: bool,
    /// Run pg_restore with this many parallel jobs; 1 (the default) restores in one transaction (all or nothing).
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub jobs: u16,
    /// Restore only this table (repeatable): TABLE or SCHEMA.TABLE, as pg_restore -l lists them; its definition
    /// and data only (as pg_restore --table: not its indexes, constraints or column defaults), and into a new
    /// database its schema too. A name the dump does not hold, or a bare name several schemas hold, is refused.
    #[arg(long = "table", value_name = "T")]
    pub tables: Vec<String>,
    /// Restore only the schema (definitions), no data.
    #[arg(long)]
    pub schema_only: bool,
    /// Drop the dumped objects before recreating them (pg_restore --clean --if-exists); needed to restore into a
    /// database that is not empty.
    #[arg(long)]
    pub clean: bool,
    /// First restore the roles and tablespaces (the dump's pg_dumpall --globals-only script, through psql); roles
    /// that exist already are left as they are.
    #[arg(long)]
    pub globals: bool,
    /// Print the result as one JSON object.
    #[arg(long = "json-output", visible_alias = "json")]
    pub json_output: bool,
}

/// Run `backupctl dump`.
pub(super) fn run(ctx: &Ctx, args: &DumpArgs) -> Result<(), Error> {
    crate::cli::check_repository_writer(&ctx.config.repository.url)?;
    let request = DumpRequest {
        // A database named twice is dumped once (it would make an invalid manifest after the whole work).
        databases: args.databases.iter().fold(Vec::new(), |mut v: Vec<String>, d| {
            if !v.contains(d) {
                v.push(d.clone());
            }
            v
        }),
        label: args.label.clone(),
        jobs: usize::from(args.jobs),
        with_role_passwords: args.with_role_passwords,
    };
    let progress = crate::cli::progress::for_terminal(args.json_output);
    let m = dump::run(&ctx.rt, &ctx.config, &request, progress.as_ref())?;
    super::catalog::update_after(&ctx.config, &ctx.rt, "dump");
    if args.json_output {
        return line(super::status::dumps::json(&m));
    }
    let names: Vec<String> = m.databases.iter().map(|d| d.name.clone()).collect();
    line(format_args!(
        "dump {} complete: {} database(s) ({}) and the roles and tablespaces, {} dumped, {} stored",
        m.id,
        m.databases.len(),
        names.join(", "),
        human_bytes(m.raw_bytes()),
        human_bytes(m.stored_bytes())
    ))
}

/// Run `backupctl dump-restore`.
pub(super) fn restore(ctx: &Ctx, args: &DumpRestoreArgs) -> Result<(), Error> {
    let request = RestoreRequest {
        id: Some(args.backup_id.clone()),
        database: args.database.clone(),
        target: args.target_database.clone(),
        create: args.create,
        jobs: usize::from(args.jobs),
        tables: args.tables.clone(),
        schema_only: args.schema_only,
        clean: args.clean,
        globals: args.globals,
    };
    let progress = crate::cli::progress::for_terminal(args.json_output);
    let outcome = dump::restore(&ctx.rt, &ctx.config, &request, progress.as_ref())?;
    if args.json_output {
        return line(serde_json::to_value(&outcome).map_err(|e| Error::Task(e.to_string()))?);
    }
    let mut done = Vec::new();
    if outcome.globals {
        done.push(format!("roles and tablespaces ({} existed already)", outcome.globals_existing));
    }
    if let (Some(db), Some(target)) = (&outcome.database, &outcome.target) {
        let created = if outcome.created { " (created)" } else { "" };
        done.push(format!("database {db} into {target}{created}"));
    }
    line(format_args!(
        "restored from dump {}: {}; {} fetched and verified",
        outcome.dump,
        done.join(", "),
        human_bytes(outcome.bytes_fetched)
    ))?;
    for n in &outcome.notes {
        line(format_args!("note: {n}"))?;
    }
    Ok(())
}
