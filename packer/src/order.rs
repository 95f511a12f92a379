//! Documents in the document order of [`dapt_core::order`] (stage [`PACK_ORDER`]) with bounded memory:
//! an external bucket sort. Documents (in whatever order they arrive) go to 256 temporary files by the
//! top byte of their order key; then each file is read and sorted in turn, so memory holds one bucket
//! (≈ 1/256 of the input) and the temporary files hold the input's text once.
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use futures::Stream;

use crate::write::PackDocument;
use crate::{Error, Result};

/// The stage name of the packing order: `dapt pack` and `dapt run` order documents by
/// `document_key(seed, PACK_ORDER, 0, id)`.
pub const PACK_ORDER: &str = "pack-order";

/// Hash buckets of the sort.
const BUCKETS: usize = 256;

/// Name prefix of a sort's spill directory; the owning process id follows.
const SPILL_PREFIX: &str = "dapt-sort-";

/// Removes `dapt-sort-PID-…` directories under `parent` whose process no longer runs (Linux: no
/// `/proc/PID`). Elsewhere, and for names of another form, nothing is removed.
fn remove_orphaned_spills(parent: &Path) {
    if !Path::new("/proc/self").exists() {
        return;
    }
    let Ok(entries) = std::fs::read_dir(parent) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix(SPILL_PREFIX))
            .and_then(|rest| rest.split_once('-'))
            .and_then(|(pid, _)| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if !Path::new("/proc").join(pid.to_string()).exists() && entry.path().is_dir() {
            match std::fs::remove_dir_all(entry.path()) {
                Ok(()) => {
                    tracing::info!(path = %entry.path().display(), "removed the spill of a killed sort");
                }
                Err(error) => {
                    tracing::warn!(path = %entry.path().display(), %error, "cannot remove the spill of a killed sort");
                }
            }
        }
    }
}

/// An external sort of documents into the packing order.
pub struct DocumentSorter {
    spill: tempfile::TempDir,
    buckets: Vec<BufWriter<File>>,
    stage_seed: u64,
    documents: u64,
}

impl DocumentSorter {
    /// A sorter for a run seeded with `seed`; its temporary files live in a fresh directory
    /// `dapt-sort-PID-…` under `spill_parent` (the system temporary directory when `None`), removed
    /// when the sorter (or the stream it becomes) is dropped. Directories there of sorts whose process
    /// is gone (killed before it could clean up) are removed first.
    pub fn new(seed: u64, spill_parent: Option<&Path>) -> Result<Self> {
        let parent = spill_parent.map_or_else(std::env::temp_dir, Path::to_path_buf);
        remove_orphaned_spills(&parent);
        let spill = tempfile::Builder::new()
            .prefix(&format!("{SPILL_PREFIX}{}-", std::process::id()))
            .tempdir_in(&parent)
            .map_err(|source| Error::Io {
                path: "the sort's temporary directory".into(),
                source,
            })?;
        let buckets = (0..BUCKETS)
            .map(|b| {
                let path = bucket_path(spill.path(), b);
                File::create(&path)
                    .map(BufWriter::new)
                    .map_err(|e| spill_error(&path, &e))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            spill,
            buckets,
            stage_seed: dapt_core::order::stage_seed(seed, PACK_ORDER, 0),
            documents: 0,
        })
    }

    /// Adds a document.
    pub fn push(&mut self, document: &PackDocument) -> Result<()> {
        let key = dapt_core::order::key_with(self.stage_seed, &document.id);
        let bucket = (key >> 56) as usize;
        write_record(&mut self.buckets[bucket], key, document)
            .map_err(|e| spill_error(&bucket_path(self.spill.path(), bucket), &e))?;
        self.documents += 1;
        Ok(())
    }

    /// Documents added so far.
    pub fn len(&self) -> u64 {
        self.documents
    }

    /// Whether no document was added.
    pub fn is_empty(&self) -> bool {
        self.documents == 0
    }

    /// The documents in order, as chunks (one per bucket), read and sorted on a thread of their own a
    /// few buckets ahead of the consumer.
    pub fn finish(
        mut self,
    ) -> Result<impl Stream<Item = Result<Vec<PackDocument>>> + Unpin + Send + 'static> {
        for (b, bucket) in self.buckets.iter_mut().enumerate() {
            bucket
                .flush()
                .map_err(|e| spill_error(&bucket_path(self.spill.path(), b), &e))?;
        }
        self.buckets.clear();
        let spill = self.spill;
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Vec<PackDocument>>>(2);
        std::thread::Builder::new()
            .name("pack-sort".into())
            .spawn(move || {
                for b in 0..BUCKETS {
                    let chunk = sorted_bucket(spill.path(), b);
                    let failed = chunk.is_err();
                    if tx.blocking_send(chunk).is_err() || failed {
                        break;
                    }
                }
                drop(spill);
            })
            .map_err(|source| Error::Io {
                path: "the sort's reader thread".into(),
                source,
            })?;
        Ok(Box::pin(futures::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|chunk| (chunk, rx))
        })))
    }
}

fn bucket_path(dir: &Path, b: usize) -> PathBuf {
    dir.join(format!("bucket-{b:03}"))
}

fn spill_error(path: &Path, e: &std::io::Error) -> Error {
    Error::Stopped(format!("the sort's temporary file {}: {e}", path.display()))
}

/// One record: key, then id, text and source, each as a length (`u64::MAX`: none) and UTF-8 bytes.
fn write_record(out: &mut impl Write, key: u64, doc: &PackDocument) -> std::io::Result<()> {
    out.write_all(&key.to_le_bytes())?;
    for field in [Some(&doc.id), Some(&doc.text), doc.source.as_ref()] {
        match field {
            Some(value) => {
                out.write_all(&(value.len() as u64).to_le_bytes())?;
                out.write_all(value.as_bytes())?;
            }
            None => out.write_all(&u64::MAX.to_le_bytes())?,
        }
    }
    Ok(())
}

fn read_records(bytes: &[u8]) -> Option<Vec<(u64, PackDocument)>> {
    let mut at = 0usize;
    let mut take = |n: usize| -> Option<&[u8]> {
        let slice = bytes.get(at..at.checked_add(n)?)?;
        at += n;
        Some(slice)
    };
    let mut out = Vec::new();
    while let Some(key) = take(8) {
        let key = u64::from_le_bytes(key.try_into().ok()?);
        let mut fields = Vec::with_capacity(3);
        for _ in 0..3 {
            let len = u64::from_le_bytes(take(8)?.try_into().ok()?);
            fields.push(if len == u64::MAX {
                None
            } else {
                Some(String::from_utf8(take(usize::try_from(len).ok()?)?.to_vec()).ok()?)
            });
        }
        let source = fields.pop()?;
        let text = fields.pop()??;
        let id = fields.pop()??;
        out.push((key, PackDocument { id, text, source }));
    }
    Some(out)
}

/// The documents of bucket `b` in order; the file is removed.
fn sorted_bucket(dir: &Path, b: usize) -> Result<Vec<PackDocument>> {
    let path = bucket_path(dir, b);
    let bytes = std::fs::read(&path).map_err(|e| spill_error(&path, &e))?;
    let _ = std::fs::remove_file(&path);
    let mut docs = read_records(&bytes)
        .ok_or_else(|| Error::Stopped(format!("{}: a damaged sort file", path.display())))?;
    docs.sort_by(|a, b| dapt_core::order::compare((a.0, &a.1.id), (b.0, &b.1.id)));
    Ok(docs.into_iter().map(|(_, d)| d).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;

    fn doc(i: usize) -> PackDocument {
        PackDocument {
            id: format!("doc-{i}"),
            text: format!("текст {i} with some words"),
            source: (!i.is_multiple_of(3)).then(|| format!("source-{}", i % 3)),
        }
    }

    async fn sorted(seed: u64, docs: &[PackDocument], spill: &Path) -> Vec<PackDocument> {
        let mut sorter = DocumentSorter::new(seed, Some(spill)).unwrap();
        for d in docs {
            sorter.push(d).unwrap();
        }
        assert_eq!(sorter.len(), docs.len() as u64);
        let chunks: Vec<_> = sorter.finish().unwrap().collect().await;
        chunks.into_iter().flat_map(|c| c.unwrap()).collect()
    }

    #[test]
    fn spills_of_killed_sorts_are_removed_and_live_ones_kept() {
        let parent = tempfile::tempdir().unwrap();
        // A pid far above any pid_max: that process is gone.
        let orphan = parent.path().join("dapt-sort-4294967294-abc");
        std::fs::create_dir_all(&orphan).unwrap();
        std::fs::write(orphan.join("bucket-000"), b"spilled").unwrap();
        let live = parent
            .path()
            .join(format!("dapt-sort-{}-xyz", std::process::id()));
        std::fs::create_dir_all(&live).unwrap();
        let other = parent.path().join("dapt-sort-notes");
        std::fs::create_dir_all(&other).unwrap();
        let sorter = DocumentSorter::new(1, Some(parent.path())).unwrap();
        assert!(!orphan.exists(), "the killed sort's spill is gone");
        assert!(
            live.exists() && other.exists(),
            "a live sort's spill and other names stay"
        );
        let own = sorter
            .spill
            .path()
            .file_name()
            .unwrap()
            .to_string_lossy()
            .to_string();
        assert!(
            own.starts_with(&format!("dapt-sort-{}-", std::process::id())),
            "{own}"
        );
    }

    #[tokio::test]
    async fn the_sort_gives_the_document_order_whatever_the_arrival_order() {
        let spill = tempfile::tempdir().unwrap();
        let docs: Vec<PackDocument> = (0..2000).map(doc).collect();
        let mut reversed = docs.clone();
        reversed.reverse();
        let a = sorted(11, &docs, spill.path()).await;
        let b = sorted(11, &reversed, spill.path()).await;
        assert_eq!(a.len(), docs.len());
        assert_eq!(
            a.iter()
                .map(|d| (&d.id, &d.text, &d.source))
                .collect::<Vec<_>>(),
            b.iter()
                .map(|d| (&d.id, &d.text, &d.source))
                .collect::<Vec<_>>()
        );
        // The order is the one core defines for the pack stage.
        let ids: Vec<&str> = docs.iter().map(|d| d.id.as_str()).collect();
        let expected: Vec<&str> = dapt_core::order::ordered(11, PACK_ORDER, 0, &ids)
            .into_iter()
            .map(|i| ids[i])
            .collect();
        assert_eq!(
            a.iter().map(|d| d.id.as_str()).collect::<Vec<_>>(),
            expected
        );
        // Another seed, another order.
        let c = sorted(12, &docs, spill.path()).await;
        assert_ne!(
            c.iter().map(|d| &d.id).collect::<Vec<_>>(),
            a.iter().map(|d| &d.id).collect::<Vec<_>>()
        );
        // Nothing is left in the spill directory.
        assert_eq!(std::fs::read_dir(spill.path()).unwrap().count(), 0);
    }

    #[test]
    fn records_round_trip_and_damage_is_seen() {
        let mut bytes = Vec::new();
        for i in 0..5 {
            write_record(&mut bytes, i as u64, &doc(i)).unwrap();
        }
        let back = read_records(&bytes).unwrap();
        assert_eq!(back.len(), 5);
        assert_eq!(back[3].1.text, doc(3).text);
        assert_eq!(back[3].1.source, doc(3).source);
        assert!(read_records(&bytes[..bytes.len() - 3]).is_none());
    }
}
