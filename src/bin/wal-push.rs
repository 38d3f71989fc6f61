//! archive_command: see `wal-push --help`.
fn main() -> std::process::ExitCode {
    backupctl::cli::wal_push::main()
}
