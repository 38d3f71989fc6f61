//! `[drill]: restore drills (`backupctl drill`): where they run and the smoke query.`

use serde::{Deserialize, Serialize};

/// [drill]: restore drills (`backupctl drill`): where they run and the smoke query.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct DrillConfig {}

/// Every value of the section that parses but makes no sense, each as `key = value: what is wrong`.
pub(super) fn validate(_c: &DrillConfig) -> Vec<String> {
    Vec::new()
}
