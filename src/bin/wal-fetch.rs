//! restore_command: see `wal-fetch --help`.
fn main() -> std::process::ExitCode {
    backupctl::cli::wal_fetch::main()
}
