//! The tracing subscriber every program installs (`[log]`): stderr, a size-rotated file, the systemd journal.
//!
//! Every record carries its time, level and program; what the program works on comes from the spans the library
//! opens (`segment` in wal-push and wal-fetch, `backup_id` in base-backup, `job` in the daemon). In `text` the
//! program follows the time (`2026-12-01T04:00:00.123456Z wal-push  INFO push{segment=...}: archived ...`); in
//! `json` it is the object's first key (`{"program":"wal-push","timestamp":...,"level":"INFO","fields":{...},
//! "span":{...},"spans":[...]}`).
//!
//! Invariants: logging never fails or stops a program. A destination that cannot be used is reported once on
//! stderr and left out; a record that cannot be written is dropped. The file destination is shared safely between
//! processes: each record is appended under an exclusive lock on `<file>.lock`, and the rotation state is read
//! from the directory each time (file-rotate keeps it in memory, which another process would make stale).

use std::io::Write as _;
use std::path::{Path, PathBuf};

use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::FormatTime;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, MakeWriter};
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{EnvFilter, Layer, Registry};

use super::output::note;
use crate::config::{Config, LogConfig};

type Boxed = Box<dyn Layer<Registry> + Send + Sync>;

/// The target of the record of a command's failure (`error: ...`), which `report_error` prints on stderr itself:
/// it goes to the file and the journal only.
pub const OUTCOME_TARGET: &str = "backupctl::outcome";

/// Install the subscriber for `program` as `[log]` of `config` says (defaults without one). `$BACKUPCTL_LOG`
/// (an `EnvFilter` directive such as `backupctl=debug`) overrides the level. A second call does nothing.
pub fn init(program: &'static str, config: Option<&Config>) {
    let log = config.map(|c| c.log.clone()).unwrap_or_default();
    let filter =
        EnvFilter::try_from_env("BACKUPCTL_LOG").unwrap_or_else(|_| EnvFilter::new(format!("backupctl={}", log.level)));
    let layers = layers(program, &log);
    let _ = tracing_subscriber::registry().with(layers.with_filter(filter)).try_init();
}

/// The destination layers `log` asks for; a destination that cannot be used is reported on stderr and left out.
fn layers(program: &'static str, log: &LogConfig) -> Vec<Boxed> {
    let json = log.format == "json";
    let mut layers: Vec<Boxed> = Vec::new();
    if log.stderr {
        let not_outcome = tracing_subscriber::filter::filter_fn(|m| m.target() != OUTCOME_TARGET);
        layers.push(Box::new(fmt_layer(program, json, std::io::stderr).with_filter(not_outcome)));
    }
    if let Some(path) = log.file_for(program) {
        let max_bytes = usize::try_from(log.max_size_mib.saturating_mul(1 << 20)).unwrap_or(usize::MAX);
        match RotatingFile::open(&path, max_bytes, log.keep) {
            Ok(file) => layers.push(fmt_layer(program, json, file)),
            Err(e) => {
                note(format_args!("{program}: warning: cannot log to {}: {e}; not logging to a file", path.display()))
            }
        }
    }
    if log.journald {
        match tracing_journald::layer() {
            Ok(l) => layers.push(Box::new(l.with_syslog_identifier(program.to_owned()))),
            Err(e) => {
                note(format_args!("{program}: warning: journald is not reachable ({e}); not logging to the journal"))
            }
        }
    }
    layers
}

fn fmt_layer<W>(program: &'static str, json: bool, writer: W) -> Boxed
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let base = tracing_subscriber::fmt::layer()
        .with_writer(writer)
        .with_ansi(false)
        .with_target(false)
        // On a failed write (a closed stderr) tracing-subscriber would report it with eprintln!, which panics:
        // wal-push must never die half-way through a push because of its log.
        .log_internal_errors(false);
    if json {
        Box::new(
            base.json().event_format(ProgramJson {
                program,
                inner: tracing_subscriber::fmt::format().json().with_target(false),
            }),
        )
    } else {
        Box::new(base.with_timer(ProgramTime { program }))
    }
}

/// The time (RFC 3339, UTC, microseconds), then the program.
struct ProgramTime {
    program: &'static str,
}

impl FormatTime for ProgramTime {
    fn format_time(&self, w: &mut Writer<'_>) -> std::fmt::Result {
        tracing_subscriber::fmt::time::SystemTime.format_time(w)?;
        write!(w, " {}", self.program)
    }
}

/// The JSON event format with `"program"` as the first key of each object.
struct ProgramJson<E> {
    program: &'static str,
    inner: E,
}

impl<S, N, E> FormatEvent<S, N> for ProgramJson<E>
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    E: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        let mut buf = String::new();
        self.inner.format_event(ctx, Writer::new(&mut buf), event)?;
        match buf.strip_prefix('{') {
            // The program's name is one of ours: nothing in it needs JSON escaping.
            Some(rest) => write!(writer, "{{\"program\":\"{}\",{rest}", self.program),
            None => writer.write_str(&buf),
        }
    }
}

/// A log file rotated by size, safe to share between processes.
#[derive(Debug)]
pub struct RotatingFile {
    path: PathBuf,
    lock: PathBuf,
    max_bytes: usize,
    keep: usize,
}

impl RotatingFile {
    /// Check that `path` can be appended to (its directory must exist: it is not created) and return the
    /// destination: rotated once it passes `max_bytes`, keeping `keep` old files (`path.1` the newest).
    pub fn open(path: &Path, max_bytes: usize, keep: usize) -> std::io::Result<Self> {
        let Some(name) = path.file_name() else {
            return Err(std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a file name"));
        };
        let lock = path.with_file_name(format!("{}.lock", name.to_string_lossy()));
        std::fs::OpenOptions::new().create(true).append(true).open(path)?;
        std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(&lock)?;
        Ok(Self { path: path.to_path_buf(), lock, max_bytes: max_bytes.max(1), keep: keep.max(1) })
    }

    /// Append one record under the lock, rotating first if the file has passed its size. Errors drop the record.
    fn append(&self, bytes: &[u8]) {
        use file_rotate::compression::Compression;
        use file_rotate::suffix::AppendCount;
        use file_rotate::{ContentLimit, FileRotate};
        use std::os::unix::fs::OpenOptionsExt;
        let Ok(lock) = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(&self.lock) else {
            return;
        };
        if fs2::FileExt::lock_exclusive(&lock).is_err() {
            return;
        }
        // file-rotate panics when it cannot list the directory: make sure it can, just before.
        if self.path.parent().is_none_or(|d| std::fs::read_dir(d).is_err()) {
            return;
        }
        let mut options = std::fs::OpenOptions::new();
        options.create(true).append(true).mode(0o640);
        let mut file = FileRotate::new(
            &self.path,
            AppendCount::new(self.keep),
            ContentLimit::BytesSurpassed(self.max_bytes),
            Compression::None,
            Some(options),
        );
        let _ = file.write_all(bytes);
        let _ = file.flush();
        let _ = fs2::FileExt::unlock(&lock);
    }
}

impl<'a> MakeWriter<'a> for RotatingFile {
    type Writer = Record<'a>;
    fn make_writer(&'a self) -> Self::Writer {
        Record { file: self, buf: Vec::new() }
    }
}

/// One record being formatted; appended to the file when dropped.
pub struct Record<'a> {
    file: &'a RotatingFile,
    buf: Vec<u8>,
}

impl std::io::Write for Record<'_> {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for Record<'_> {
    fn drop(&mut self) {
        if !self.buf.is_empty() {
            self.file.append(&self.buf);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Rotation keeps `keep` old files, each record whole in one file.
    #[test]
    fn rotation_keeps_n_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("b.log");
        let file = RotatingFile::open(&path, 100, 3).expect("open");
        for i in 0..40 {
            let mut w = file.make_writer();
            writeln!(w, "record {i:03} {}", "x".repeat(30)).expect("write");
        }
        let mut names: Vec<String> = std::fs::read_dir(dir.path())
            .expect("ls")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, ["b.log", "b.log.1", "b.log.2", "b.log.3", "b.log.lock"]);
        let newest = std::fs::read_to_string(&path).expect("read");
        assert!(newest.ends_with(&format!("record 039 {}\n", "x".repeat(30))), "{newest}");
        for n in ["b.log", "b.log.1", "b.log.2", "b.log.3"] {
            let text = std::fs::read_to_string(dir.path().join(n)).expect("read");
            assert!(text.lines().all(|l| l.starts_with("record ") && l.len() == 41), "{n}: {text}");
            assert!(text.len() <= 100 + 42, "{n} is {} bytes", text.len());
        }
    }

    #[test]
    fn open_refuses_a_missing_directory() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert!(RotatingFile::open(&dir.path().join("nope/b.log"), 100, 3).is_err());
    }
}
