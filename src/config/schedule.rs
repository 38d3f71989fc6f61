//! `[schedule]: when the daemon (`backupctl schedule --daemon`) runs each job.`

use serde::{Deserialize, Serialize};

/// [schedule]: when the daemon (`backupctl schedule --daemon`) runs each job.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ScheduleConfig {}

/// Every value of the section that parses but makes no sense, each as `key = value: what is wrong`.
pub(super) fn validate(_c: &ScheduleConfig) -> Vec<String> {
    Vec::new()
}
