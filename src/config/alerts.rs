//! `[alerts]: where alerts go (email, webhook) and what raises them; see docs/operations.md, "Running unattended".`

use serde::{Deserialize, Serialize};

/// [alerts]: where alerts go (email, webhook) and what raises them; see docs/operations.md, "Running unattended".
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct AlertsConfig {}

/// Every value of the section that parses but makes no sense, each as `key = value: what is wrong`.
pub(super) fn validate(_c: &AlertsConfig) -> Vec<String> {
    Vec::new()
}
