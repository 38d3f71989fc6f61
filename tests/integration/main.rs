//! Integration tests: real backends and services on loopback.

mod archive;
mod backup;
mod issue10_checksums;
mod issue10_format2;
mod issue10_gc;
mod issue7_backup;
mod issue7_first_use;
mod issue7_holes;
mod issue7_polish;
mod issue7_restore;
mod issue7_surface;
mod issue8_check;
mod issue8_gc;
mod issue8_prune;
mod issue8_status;
mod issue8_verify;
mod issue9_alerts;
mod issue9_drill;
mod issue9_metrics;
mod issue9_schedule;
mod issue9_trial;
mod pitr;
mod push;
mod s3_archive;
mod storage_conformance;
mod support;
