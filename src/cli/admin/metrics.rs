//! `backupctl metrics`: print the metrics in the Prometheus text format.

use clap::Args;

use super::Ctx;
use crate::Error;

/// `backupctl metrics` options.
#[derive(Debug, Clone, Args)]
pub struct MetricsArgs {}

/// Run `backupctl metrics`.
pub(super) fn run(_ctx: &Ctx, _args: &MetricsArgs) -> Result<(), Error> {
    Err(Error::Task("backupctl metrics is not built yet".to_owned()))
}
