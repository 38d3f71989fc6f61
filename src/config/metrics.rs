//! `[metrics]: the Prometheus endpoint of the daemon and the node-exporter textfile.`

use serde::{Deserialize, Serialize};

/// [metrics]: the Prometheus endpoint of the daemon and the node-exporter textfile.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsConfig {}

/// Every value of the section that parses but makes no sense, each as `key = value: what is wrong`.
pub(super) fn validate(_c: &MetricsConfig) -> Vec<String> {
    Vec::new()
}
