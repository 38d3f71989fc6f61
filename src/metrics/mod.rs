//! Prometheus metrics: collected from the repository and the local state, rendered in the text format (issue 9).
