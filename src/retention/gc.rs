//! Deleting backups and reclaiming space (mark and sweep), safe against a concurrent base-backup.
//! See docs/design/retention.md.
