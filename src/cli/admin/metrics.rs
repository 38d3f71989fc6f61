//! `backupctl metrics`: print the metrics in the Prometheus text format, or write them as a node-exporter textfile.

use clap::Args;

use super::Ctx;
use crate::Error;
use crate::cli::output::{line, note};
use crate::metrics::{self, Format, Parts};

/// `backupctl metrics` options.
#[derive(Debug, Clone, Args)]
pub struct MetricsArgs {
    /// Instead of printing, write every metric but the archive ones (wal-push writes those to
    /// backupctl_archive.prom) to <[metrics] textfile_dir>/backupctl.prom, atomically, for node-exporter's
    /// textfile collector (run it from cron). The file holds no _age_seconds gauges: alert on time() minus the
    /// _timestamp_seconds ones.
    #[arg(long)]
    pub textfile: bool,
}

/// Run `backupctl metrics`. A repository that cannot be opened or read is `backupctl_repository_up 0` with a
/// warning on stderr, not a failure.
pub(super) fn run(ctx: &Ctx, args: &MetricsArgs) -> Result<(), Error> {
    let dir = match (args.textfile, &ctx.config.metrics.textfile_dir) {
        (true, None) => return Err(metrics::Error::NoTextfileDir.into()),
        (true, Some(d)) => Some(d.clone()),
        (false, _) => None,
    };
    let storage = match ctx.storage() {
        Ok(s) => Some(s),
        Err(e) => {
            note(format_args!("backupctl: warning: cannot open the repository: {e}"));
            None
        }
    };
    let now = jiff::Timestamp::now();
    let parts = if dir.is_some() { Parts::FULL_FILE } else { Parts::LIVE };
    let text = ctx.rt.block_on(metrics::render_as(&ctx.config, storage.as_deref(), now, parts, Format::Prometheus))?;
    if text.contains("\nbackupctl_repository_up 0\n") {
        note("backupctl: warning: the repository could not be read: backupctl_repository_up is 0");
    }
    match dir {
        None => line(text.trim_end()),
        Some(dir) => {
            let path = metrics::write_textfile(&dir, metrics::FULL_TEXTFILE, &text)?;
            tracing::info!(path = %path.display(), "wrote metrics textfile");
            Ok(())
        }
    }
}
