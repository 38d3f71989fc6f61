//! pitr-restore: restore a base backup and set up point-in-time recovery.
fn main() -> std::process::ExitCode {
    backupctl::cli::pitr_restore::main()
}
