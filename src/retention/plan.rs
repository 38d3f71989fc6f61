//! The retention plan (pure): which backups a policy keeps, and which WAL they and the PITR window need.
