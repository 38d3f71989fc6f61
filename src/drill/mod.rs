//! Restore drills: restore a backup into a temporary directory, start PostgreSQL on it, check it (issue 9).
