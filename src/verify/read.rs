//! Re-read objects and check them (the CPU part runs on blocking threads, a bounded number at a time).
//!
//! - A data object: decoded by the codec (size and blake3 of the whole content against its header), its header's
//!   digest equal to its name (the object is the one the manifests reference), and every piece a manifest cuts
//!   from it inside its content with the blake3 the manifest records.
//! - A WAL segment or `.partial`: decoded, `wal_segment_size` bytes whose long page header matches its name
//!   (`xlp_pageaddr`, segment size, magic: [`crate::wal::LongPageHeader::validate`]).
//! - A history file: decoded and parsed as PostgreSQL writes it; a `.backup` file: decoded.

use std::sync::Arc;

use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::Error;
use crate::archive::blocking;
use crate::codec;
use crate::repository::backup::ObjectId;
use crate::storage::{DynStorage, Key};
use crate::wal::{LongPageHeader, SegmentSize, TimelineHistory, WalFileName};

/// One range a manifest cuts from an object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PieceCheck {
    /// Offset in the object's content.
    pub offset: u64,
    /// Length.
    pub length: u64,
    /// Its blake3.
    pub blake3: ObjectId,
}

/// What to read.
#[derive(Debug, Clone)]
pub enum Job {
    /// A data object and the distinct pieces the manifests cut from it.
    Data(ObjectId, Vec<PieceCheck>),
    /// An archived WAL file.
    Wal(Key, WalFileName),
}

impl Job {
    /// The key read.
    pub fn key(&self) -> Key {
        match self {
            Job::Data(id, _) => id.key(),
            Job::Wal(key, _) => key.clone(),
        }
    }
}

/// What reading one object found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Sound; stored bytes read.
    Ok(u64),
    /// Absent from the repository.
    Missing,
    /// Present but damaged: why.
    Corrupt(String),
}

/// Read every job with at most `parallel` at once; returns each job with its outcome, in completion order.
/// Storage failures other than "not found" (after the backend's retries) are errors: a verification that could
/// not read is no verification.
pub async fn read_all(
    storage: DynStorage,
    jobs: Vec<Job>,
    parallel: usize,
    size: SegmentSize,
) -> Result<Vec<(Job, Outcome)>, Error> {
    let semaphore = Arc::new(Semaphore::new(parallel.max(1)));
    let mut tasks: JoinSet<Result<(Job, Outcome), Error>> = JoinSet::new();
    let mut out = Vec::with_capacity(jobs.len());
    for job in jobs {
        let permit = semaphore.clone().acquire_owned().await.map_err(|e| Error::Task(e.to_string()))?;
        while let Some(done) = tasks.try_join_next() {
            out.push(done.map_err(|e| Error::Task(e.to_string()))??);
        }
        let storage = storage.clone();
        tasks.spawn(async move {
            let _permit = permit;
            let object = match storage.get(&job.key()).await {
                Ok(o) => o,
                Err(e) if e.is_not_found() => return Ok((job, Outcome::Missing)),
                Err(e) => return Err(e.into()),
            };
            let stored = object.len() as u64;
            let job2 = job.clone();
            let outcome = blocking(move || {
                Ok(match check(&job2, &object, size) {
                    Ok(()) => Outcome::Ok(stored),
                    Err(why) => Outcome::Corrupt(why),
                })
            })
            .await?;
            Ok((job, outcome))
        });
    }
    while let Some(done) = tasks.join_next().await {
        out.push(done.map_err(|e| Error::Task(e.to_string()))??);
    }
    Ok(out)
}

/// Check one object's bytes; the error says what is wrong, in one line.
fn check(job: &Job, object: &[u8], size: SegmentSize) -> Result<(), String> {
    // Keep only what is checked after decoding: the pieces' bytes, or a segment's long page header (a segment
    // may be 1 GiB; decoding still hashes every byte).
    let keep = match job {
        Job::Data(_, pieces) if pieces.is_empty() => 0,
        Job::Wal(_, WalFileName::Segment(_) | WalFileName::Partial(_)) => crate::wal::LONG_HEADER_LEN,
        _ => usize::MAX,
    };
    let mut sink = Head { kept: Vec::new(), keep, len: 0 };
    let header = codec::decode(object, &mut sink).map_err(|e| e.to_string())?;
    let raw = sink.kept;
    match job {
        Job::Data(id, pieces) => {
            let expected = codec::Digest::Blake3(id.0);
            if header.digest != expected {
                return Err(format!("its content is {}, not the {} its name says", header.digest, expected));
            }
            for p in pieces {
                let end = p.offset.checked_add(p.length).ok_or("a piece's range overflows")?;
                let slice = usize::try_from(p.offset)
                    .ok()
                    .zip(usize::try_from(end).ok())
                    .and_then(|(a, b)| raw.get(a..b))
                    .ok_or_else(|| format!("a piece at {}..{end} lies outside its {} bytes", p.offset, raw.len()))?;
                if blake3::hash(slice).as_bytes() != &p.blake3.0 {
                    return Err(format!(
                        "the piece at {}..{end} is {}, the manifest says {}",
                        p.offset,
                        codec::Digest::of(slice),
                        codec::Digest::Blake3(p.blake3.0)
                    ));
                }
            }
            Ok(())
        }
        Job::Wal(_, name @ (WalFileName::Segment(seg) | WalFileName::Partial(seg))) => {
            let display = name.to_string();
            let page = LongPageHeader::parse(&display, &raw).map_err(|e| e.to_string())?;
            let found = page.validate(seg, &display, sink.len).map_err(|e| e.to_string())?;
            if found != size {
                return Err(format!(
                    "its segment size is {} bytes, the repository's is {}",
                    found.bytes(),
                    size.bytes()
                ));
            }
            Ok(())
        }
        Job::Wal(_, WalFileName::History(t)) => TimelineHistory::parse(*t, &String::from_utf8_lossy(&raw))
            .map(|_| ())
            .map_err(|e| format!("not a timeline history: {e}")),
        Job::Wal(_, WalFileName::BackupHistory(..)) => Ok(()),
    }
}

/// A writer that keeps the first `keep` bytes and counts the rest.
struct Head {
    kept: Vec<u8>,
    keep: usize,
    len: u64,
}

impl std::io::Write for Head {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let room = self.keep.saturating_sub(self.kept.len()).min(buf.len());
        self.kept.extend_from_slice(&buf[..room]);
        self.len += buf.len() as u64;
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn object(raw: &[u8]) -> Vec<u8> {
        codec::encode(raw, 1, raw.len() as u64, 1).expect("encode").0
    }

    #[test]
    fn data_objects_are_checked_whole_and_by_piece() {
        let raw: Vec<u8> = (0..10_000u32).flat_map(|i| i.to_le_bytes()).collect();
        let id = ObjectId::of(&raw);
        let piece = |a: usize, b: usize| PieceCheck {
            offset: a as u64,
            length: (b - a) as u64,
            blake3: ObjectId::of(&raw[a..b]),
        };
        let size = SegmentSize::DEFAULT;
        let good = Job::Data(id, vec![piece(0, 100), piece(100, raw.len())]);
        assert_eq!(check(&good, &object(&raw), size), Ok(()));
        // A flipped byte in the body: the codec's checksum or decompression fails.
        let mut bad = object(&raw);
        let last = bad.len() - 10;
        bad[last] ^= 0x40;
        assert!(check(&good, &bad, size).is_err());
        // A sound object under another object's name.
        let other = Job::Data(ObjectId::of(b"x"), vec![]);
        assert!(check(&other, &object(&raw), size).expect_err("wrong name").contains("not the"));
        // A piece whose recorded digest differs, and one outside the content.
        let mut wrong = piece(0, 100);
        wrong.blake3 = ObjectId::of(b"y");
        assert!(
            check(&Job::Data(id, vec![wrong]), &object(&raw), size).expect_err("piece").contains("the manifest says")
        );
        let outside = PieceCheck { offset: 39_990, length: 100, blake3: id };
        assert!(check(&Job::Data(id, vec![outside]), &object(&raw), size).expect_err("range").contains("outside"));
    }

    #[test]
    fn wal_files_are_checked_against_their_names() {
        let size = SegmentSize::new(1 << 20).expect("size");
        let name: WalFileName = "000000010000000000000003".parse().expect("name");
        let mut seg = vec![0u8; 1 << 20];
        seg[0..2].copy_from_slice(&0xD110u16.to_le_bytes());
        seg[2..4].copy_from_slice(&2u16.to_le_bytes());
        seg[4..8].copy_from_slice(&1u32.to_le_bytes());
        seg[8..16].copy_from_slice(&(3u64 << 20).to_le_bytes());
        seg[32..36].copy_from_slice(&(1u32 << 20).to_le_bytes());
        seg[36..40].copy_from_slice(&8192u32.to_le_bytes());
        let key = crate::repository::wal_key(&name);
        assert_eq!(check(&Job::Wal(key.clone(), name), &object(&seg), size), Ok(()));
        // The same content under the next segment's name: its page address says otherwise.
        let next: WalFileName = "000000010000000000000004".parse().expect("name");
        assert!(check(&Job::Wal(key.clone(), next), &object(&seg), size).is_err());
        let h: WalFileName = "00000002.history".parse().expect("name");
        assert_eq!(check(&Job::Wal(key.clone(), h.clone()), &object(b"1\t0/3000000\tx\n"), size), Ok(()));
        assert!(check(&Job::Wal(key, h), &object(b"garbage"), size).is_err());
    }
}
