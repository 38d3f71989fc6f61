//! Streams in and out of the repository: a reader cut into 1 MiB frames handed to a [`Packer`], and a stored
//! stream fetched back into a local file, every frame and the whole stream verified.

use std::io::{Read, Write};
use std::path::Path;
use std::sync::Arc;

use futures_util::stream::{self, StreamExt};

use super::{DumpFile, DumpId, Error, FrameRef};
use crate::archive::blocking;
use crate::backup::packer::Packer;
use crate::repository::backup::ObjectId;
use crate::repository::packs::FRAME_RAW_MAX;
use crate::repository::packstore::{self, FrameIndex};
use crate::repository::store;
use crate::storage::Storage;

/// Frames fetched at once by [`fetch`].
const FETCH_PARALLEL: usize = 4;

/// Read `reader` to its end in frames of [`FRAME_RAW_MAX`] bytes, store each (unless the repository has it), and
/// describe the stream as `name`. Returns the reader too (a child's stdout, to wait for the child after).
pub(super) async fn store_reader<R: Read + Send + 'static>(
    packer: &Packer,
    reader: R,
    name: String,
    label: &str,
) -> Result<(DumpFile, R), crate::Error> {
    let mut reader = reader;
    let mut hasher = blake3::Hasher::new();
    let mut frames = Vec::new();
    let mut raw_bytes = 0u64;
    loop {
        let what = label.to_owned();
        let (r, h, buf) = blocking(move || {
            let mut buf = vec![0u8; FRAME_RAW_MAX];
            let n = crate::codec::read_full(&mut reader, &mut buf)
                .map_err(|source| Error::Io { path: what.into(), source })?;
            buf.truncate(n);
            hasher.update(&buf);
            Ok((reader, hasher, buf))
        })
        .await?;
        (reader, hasher) = (r, h);
        if buf.is_empty() {
            break;
        }
        let len = buf.len() as u32;
        raw_bytes += u64::from(len);
        let id = packer.add_frame(buf).await?;
        frames.push(FrameRef { id, raw_length: len });
    }
    let blake3 = ObjectId(*hasher.finalize().as_bytes());
    Ok((DumpFile { name, frames, raw_bytes, blake3 }, reader))
}

/// Fetch stream `file` of dump `id` into `dest` (created; must not exist): every frame read by range and verified
/// (size and blake3), then the whole stream's size and blake3 checked against the manifest. `stream_name` names
/// the stream in errors (`database "app" custom-format archive`). Errors: [`Error::MissingFrame`],
/// [`Error::Damaged`] (a corrupt frame or a pack that is gone, named), storage errors.
pub(super) async fn fetch(
    storage: &dyn Storage,
    index: &FrameIndex,
    id: &DumpId,
    stream_name: &str,
    file: &DumpFile,
    dest: &Path,
) -> Result<(), crate::Error> {
    let mut locations = Vec::with_capacity(file.frames.len());
    for f in &file.frames {
        let Some((pack, loc)) = index.get(&f.id) else {
            return Err(Error::MissingFrame {
                id: id.clone(),
                stream: stream_name.to_owned(),
                frame: f.id,
                backend: storage.to_string(),
            }
            .into());
        };
        if loc.raw_length != f.raw_length {
            return Err(damaged(
                id,
                stream_name,
                format!("frame {} holds {} bytes, not {}", f.id, loc.raw_length, f.raw_length),
            ));
        }
        locations.push((*pack, *loc));
    }
    let out = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(dest)
        .map_err(|source| Error::Io { path: dest.to_path_buf(), source })?;
    let out = Arc::new(std::sync::Mutex::new(std::io::BufWriter::with_capacity(1 << 20, out)));
    let mut hasher = blake3::Hasher::new();
    let mut written = 0u64;
    let mut frames = stream::iter(locations.iter().map(|(pack, loc)| packstore::read_frame(storage, pack, loc)))
        .buffered(FETCH_PARALLEL);
    while let Some(raw) = frames.next().await {
        // A damaged or vanished pack is named with the dump and stream it breaks (dump-restore's error).
        let raw = raw.map_err(|e| match e {
            store::Error::Corrupt { .. } | store::Error::Malformed { .. } => damaged(id, stream_name, e.to_string()),
            store::Error::Storage(s) if s.is_not_found() => damaged(id, stream_name, format!("{s}")),
            e => e.into(),
        })?;
        hasher.update(&raw);
        written += raw.len() as u64;
        let (out, path) = (out.clone(), dest.to_path_buf());
        blocking(move || {
            let mut w = out.lock().map_err(|_| crate::Error::Task("fetch writer poisoned".into()))?;
            w.write_all(&raw).map_err(|source| Error::Io { path, source }.into())
        })
        .await?;
    }
    let path = dest.to_path_buf();
    blocking(move || {
        let mut w = out.lock().map_err(|_| crate::Error::Task("fetch writer poisoned".into()))?;
        w.flush().map_err(|source| Error::Io { path, source }.into())
    })
    .await?;
    let digest = ObjectId(*hasher.finalize().as_bytes());
    if written != file.raw_bytes || digest != file.blake3 {
        return Err(damaged(
            id,
            stream_name,
            format!(
                "{written} bytes with blake3 {digest}, manifest says {} bytes with blake3 {}",
                file.raw_bytes, file.blake3
            ),
        ));
    }
    Ok(())
}

fn damaged(id: &DumpId, stream: &str, what: String) -> crate::Error {
    Error::Damaged { id: id.clone(), stream: stream.to_owned(), what }.into()
}
