//! Build script: where the installed documentation lives, for the hints that point at it.
//!
//! `BACKUPCTL_DOC_DIR` at build time (default `/usr/share/doc/backupctl`, where the Debian package puts
//! README.md, operations.md and configuration.md) becomes the compile-time variable of the same name, read by
//! the `doc!` macro (src/lib.rs).

fn main() {
    println!("cargo:rerun-if-env-changed=BACKUPCTL_DOC_DIR");
    let dir = std::env::var("BACKUPCTL_DOC_DIR").unwrap_or_else(|_| "/usr/share/doc/backupctl".to_owned());
    println!("cargo:rustc-env=BACKUPCTL_DOC_DIR={dir}");
}
