//! A progress bar on a terminal (indicatif), nothing otherwise (cron, systemd, pipes).

use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};

use crate::progress::{NoProgress, Progress};

/// A bar drawn on stderr.
#[derive(Debug)]
pub struct Bar {
    bar: ProgressBar,
}

impl Progress for Bar {
    fn start(&self, bytes: u64, files: u64) {
        self.bar.set_length(bytes);
        self.bar.set_position(0);
        self.bar.set_message(format!("{files} files"));
    }
    fn advance(&self, bytes: u64) {
        self.bar.inc(bytes);
    }
    fn phase(&self, message: &str) {
        self.bar.set_message(message.to_owned());
    }
    fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

/// A bar if stderr is a terminal and `quiet` is false, else nothing.
pub fn for_terminal(quiet: bool) -> Box<dyn Progress> {
    if quiet || !std::io::stderr().is_terminal() {
        return Box::new(NoProgress);
    }
    let bar = ProgressBar::new(0);
    let style = ProgressStyle::with_template(
        "{spinner} [{elapsed_precise}] {bar:30} {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta} {msg}",
    )
    .unwrap_or_else(|_| ProgressStyle::default_bar());
    bar.set_style(style);
    bar.enable_steady_tick(Duration::from_millis(200));
    Box::new(Bar { bar })
}
