//! Alerts by email and webhook: conditions, rate limiting, "resolved" messages (issue 9).
