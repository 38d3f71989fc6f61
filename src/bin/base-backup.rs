//! base-backup: take a base backup of the running cluster into the repository.
fn main() -> std::process::ExitCode {
    backupctl::cli::base_backup::main()
}
