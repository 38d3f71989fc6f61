//! `backupctl check` (alias `test`): is everything that backups need working? One line per check.

use bytes::Bytes;
use clap::Args;

use super::Ctx;
use crate::Error;
use crate::cli::output::line;
use crate::repository::store;
use crate::storage::{Key, PutMode};

/// `backupctl check` options.
#[derive(Debug, Clone, Args)]
pub struct CheckArgs {
    /// Print the results as one JSON object.
    #[arg(long = "json-output", visible_alias = "json")]
    pub json_output: bool,
}

/// Run `backupctl check`.
pub(super) fn run(ctx: &Ctx, args: &CheckArgs) -> Result<(), Error> {
    let json_output = args.json_output;
    let (path, config) = (&ctx.path, &ctx.config);
    let say = |text: std::fmt::Arguments<'_>| if json_output { Ok(()) } else { line(text) };
    say(format_args!("configuration: {} ok", path.display()))?;
    // Writes only the probe: the spool is checked, not created (wal-push creates it).
    use crate::storage::fs::owner;
    owner::check_writer(&config.spool.path, owner::Role::Spool)?;
    let spool_exists = config.spool.path.is_dir();
    let spool_state = if spool_exists { "ok" } else { "ok (wal-push creates it)" };
    say(format_args!("spool: {} {spool_state}", config.spool.path.display()))?;
    crate::cli::check_repository_writer(&config.repository.url)?;
    let storage = ctx.existing_storage()?;
    let storage = storage.as_ref();
    ctx.rt.block_on(async {
        let d = store::load::<crate::repository::Descriptor>(storage, &crate::repository::descriptor_key()).await?;
        match &d {
            Some(d) => say(format_args!("repository: {storage} format {} ok", d.format))?,
            None => say(format_args!("repository: {storage} ok (made by an earlier version: no descriptor)"))?,
        }
        let key = Key::new(format!("check/probe-{}", std::process::id())).map_err(crate::storage::Error::from)?;
        let body = Bytes::from(format!("backupctl check {}", crate::cli::now_rfc3339()));
        storage.put(&key, body.clone(), PutMode::Overwrite).await?;
        let back = storage.get(&key).await?;
        storage.delete(&key).await?;
        if back != body {
            return Err(Error::Task(format!("{storage}: probe object {key} read back different content")));
        }
        say(format_args!("storage round trip (put, get, delete): ok"))?;
        if json_output {
            line(serde_json::json!({
                "ok": true,
                "configuration": path.display().to_string(),
                "spool": config.spool.path.display().to_string(),
                "spool_exists": spool_exists,
                "repository": storage.to_string(),
                "format": d.as_ref().map(|d| d.format),
                "round_trip": "ok",
            }))?;
        }
        Ok(())
    })
}
