//! pitr-restore: not implemented in this release (see the README's roadmap).
fn main() -> std::process::ExitCode {
    backupctl::cli::not_yet("pitr-restore")
}
