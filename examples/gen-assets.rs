//! Generate the man pages and shell completions the Debian package installs, from the programs' clap definitions
//! (`backupctl::cli::commands`), so that they always say what `--help` says.
//!
//! Usage: `cargo run --example gen-assets -- <out dir>`. Writes `<out>/man/<program>.1` for each program and
//! `<out>/man/backupctl-<subcommand>.1` for each subcommand of `backupctl` (nested ones as
//! `backupctl-<sub>-<subsub>.1`; packaging/deb/build.sh gzips them, as Debian policy wants, §12.1), and
//! `<out>/completions/{bash,zsh,fish}/` with one file per program, named as each shell's completion directory
//! expects.

use std::path::{Path, PathBuf};

use clap_complete::Shell;

type Result<T> = std::result::Result<T, String>;

/// `what: error`, for `map_err`.
fn ctx<E: std::fmt::Display>(what: impl std::fmt::Display) -> impl FnOnce(E) -> String {
    move |e| format!("{what}: {e}")
}

fn main() -> Result<()> {
    let out = PathBuf::from(std::env::args_os().nth(1).ok_or("usage: gen-assets <out dir>")?);
    let man = out.join("man");
    std::fs::create_dir_all(&man).map_err(ctx(format!("create {}", man.display())))?;
    let mut pages = 0;
    for cmd in backupctl::cli::commands() {
        pages += man_pages(&man, cmd.clone(), &[])?;
        completions(&out, cmd)?;
    }
    println!("gen-assets: {pages} man pages and completions for 5 programs in {}", out.display());
    Ok(())
}

/// Write the page of `cmd` (whose parents are `parents`) and of each of its subcommands. Returns pages written.
fn man_pages(dir: &Path, cmd: clap::Command, parents: &[String]) -> Result<usize> {
    let mut names = parents.to_vec();
    names.push(cmd.get_name().to_string());
    let name = names.join("-");
    // A subcommand's page is titled with its full name, as git's are (git-commit(1)).
    // clap takes `&'static str` names (without its `string` feature): this short-lived program leaks a few.
    let leak = |s: String| -> &'static str { Box::leak(s.into_boxed_str()) };
    let cmd = cmd.name(leak(name.clone())).bin_name(leak(names.join(" "))).version(env!("CARGO_PKG_VERSION"));
    let mut roff = Vec::new();
    clap_mangen::Man::new(cmd.clone())
        .section("1")
        .source(format!("backupctl {}", env!("CARGO_PKG_VERSION")))
        .manual("backupctl")
        .render(&mut roff)
        .map_err(ctx(format!("render the page of {name}")))?;
    let path = dir.join(format!("{name}.1"));
    std::fs::write(&path, roff).map_err(ctx(format!("write {}", path.display())))?;
    let mut n = 1;
    for sub in cmd.get_subcommands().filter(|s| s.get_name() != "help" && !s.is_hide_set()) {
        n += man_pages(dir, sub.clone(), &names)?;
    }
    Ok(n)
}

/// Write `cmd`'s completion script for bash, zsh and fish.
fn completions(out: &Path, mut cmd: clap::Command) -> Result<()> {
    let bin = cmd.get_name().to_string();
    for (shell, file) in
        [(Shell::Bash, bin.clone()), (Shell::Zsh, format!("_{bin}")), (Shell::Fish, format!("{bin}.fish"))]
    {
        let dir = out.join("completions").join(shell.to_string());
        std::fs::create_dir_all(&dir).map_err(ctx(format!("create {}", dir.display())))?;
        let path = dir.join(file);
        let mut f = std::fs::File::create(&path).map_err(ctx(format!("create {}", path.display())))?;
        clap_complete::generate(shell, &mut cmd, &bin, &mut f);
    }
    Ok(())
}
