//! The admin CLI: see `backupctl --help`.
fn main() -> std::process::ExitCode {
    backupctl::cli::admin::main()
}
