//! Atomic, self-describing outputs: shards published under fixed names plus a `_manifest.json` that
//! lists the finished ones. A shard is written whole with one atomic `put`, then the manifest is
//! rewritten; a rerun reads the manifest and skips what is already published. An output directory is
//! bound to the hash of the settings that produced it: reusing it with other settings is an error, so
//! outputs of two configurations never mix.
use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::{Error, Location, Result};

/// File name of the manifest in every output directory.
pub const MANIFEST_NAME: &str = "_manifest.json";

/// One published shard.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardEntry {
    /// File name below the output directory.
    pub name: String,
    /// Rows (documents, packed sequences) in the shard.
    pub rows: u64,
    /// Size in bytes.
    pub bytes: u64,
    /// sha256 of the shard's bytes.
    pub sha256: String,
}

/// A record that was skipped under the `skip` error policy.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct SkipRecord {
    /// URL of the object the record came from.
    pub object: String,
    /// 1-based line (JSON lines) or row (Parquet) number, when the problem is in one record.
    pub line: Option<u64>,
    /// Why the record was skipped.
    pub reason: String,
}

/// The manifest of one output directory.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// What produced the directory (`ingest`, `pack`, …).
    pub kind: String,
    /// sha256 of the settings that produced it.
    pub config_hash: String,
    /// Published shards, sorted by name.
    pub shards: Vec<ShardEntry>,
    /// Stage-specific facts (counts, token totals); free-form JSON.
    #[serde(default)]
    pub summary: serde_json::Value,
    /// True once the producing stage finished all its shards.
    #[serde(default)]
    pub complete: bool,
    /// Records skipped under the `skip` error policy, sorted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub skipped: Vec<SkipRecord>,
    /// The tool and version that wrote the manifest (`dapt 0.1.0`); recorded, not checked.
    #[serde(default)]
    pub producer: String,
}

impl Manifest {
    /// An empty, unfinished manifest of `kind` and `config_hash`, written by this version.
    pub fn new(kind: &str, config_hash: &str) -> Self {
        Self {
            kind: kind.to_string(),
            config_hash: config_hash.to_string(),
            shards: Vec::new(),
            summary: serde_json::Value::Null,
            complete: false,
            skipped: Vec::new(),
            producer: PRODUCER.to_string(),
        }
    }
}

/// What [`Manifest::producer`] says of this build.
pub const PRODUCER: &str = concat!("dapt ", env!("CARGO_PKG_VERSION"));

/// The manifest name of job `index` of `count` jobs that share one output directory
/// (`_manifest-00003-of-00008.json`).
pub fn job_manifest_name(index: usize, count: usize) -> String {
    format!("_manifest-{index:05}-of-{count:05}.json")
}

/// The manifest job `index` of `count` writes: `_manifest.json` for an output's only job, else its
/// job manifest.
pub fn manifest_name_of_job(index: usize, count: usize) -> String {
    if count <= 1 {
        MANIFEST_NAME.to_string()
    } else {
        job_manifest_name(index, count)
    }
}

/// `(index, count)` of a name `{prefix}-IIIII-of-NNNNN.json`, as [`job_manifest_name`] (prefix
/// `_manifest`) and the failure records of `status` (prefix `_failed`) make them.
pub fn job_numbers(name: &str, prefix: &str) -> Option<(usize, usize)> {
    let (index, count) = name
        .strip_prefix(prefix)?
        .strip_prefix('-')?
        .strip_suffix(".json")?
        .split_once("-of-")?;
    let number = |n: &str| {
        (!n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
            .then(|| n.parse().ok())
            .flatten()
    };
    Some((number(index)?, number(count)?))
}

/// Whether `name` is a job manifest's name (as [`job_manifest_name`] makes them).
fn is_job_manifest_name(name: &str) -> bool {
    job_numbers(name, "_manifest").is_some()
}

/// The lock file of a local output's manifest `manifest_name` (held by its writer).
pub(crate) fn lock_file_name(manifest_name: &str) -> String {
    format!(".{manifest_name}.lock")
}

impl Manifest {
    /// The manifest `name` of `location`, or `None` where there is none; an unreadable one is an
    /// error naming its URL.
    pub async fn read_optional(location: &Location, name: &str) -> Result<Option<Self>> {
        let Some(bytes) = location.read_optional(name).await? else {
            return Ok(None);
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|source| Error::Json {
                what: format!(
                    "manifest {} is unreadable",
                    location.url_of(&location.child(name))
                ),
                source,
            })
    }
}

/// An output directory with its manifest, opened by its one writer.
///
/// A local (`file://`) output is locked while it is written: the writer holds an exclusive `flock`
/// on the empty file `.MANIFEST_NAME.lock` beside the manifest from `open` until `finish`, so a
/// second writer of the same manifest is refused while the first lives, and the lock ends with the
/// process that held it (a killed writer's rerun is not blocked). An output in an object store is
/// leased instead: a lease object `.MANIFEST_NAME.lease` with owner and heartbeat, created and renewed
/// by conditional puts (see the `lease` module); a writer that loses its lease fails its next write.
/// A finished output is opened without a lock or lease. Jobs of an array keep their own manifests,
/// locks and leases.
#[derive(Debug)]
pub struct OutputDir {
    location: Location,
    manifest: Manifest,
    manifest_name: String,
    /// The held lock file (local outputs); released when dropped.
    lock: Option<std::fs::File>,
    /// The held lease (object stores); released at `finish`, renewal stopped when dropped.
    lease: Option<crate::lease::Lease>,
}

/// Takes the writer's lock of a local output (none for other stores).
fn lock_output(location: &Location, manifest_name: &str) -> Result<Option<std::fs::File>> {
    let Some(dir) = location.local_path() else {
        return Ok(None);
    };
    let io = |path: &std::path::Path| {
        let path = path.to_path_buf();
        move |source| Error::Io { path, source }
    };
    std::fs::create_dir_all(&dir).map_err(io(&dir))?;
    let path = dir.join(lock_file_name(manifest_name));
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(io(&path))?;
    match file.try_lock() {
        Ok(()) => Ok(Some(file)),
        Err(std::fs::TryLockError::WouldBlock) => Err(Error::Manifest {
            url: location.url(),
            reason: format!(
                "another process is writing this output now (it holds {}); wait for it to finish, or choose another output directory",
                path.display()
            ),
        }),
        Err(std::fs::TryLockError::Error(source)) => Err(Error::Io { path, source }),
    }
}

impl OutputDir {
    /// Opens (or starts) an output directory. An existing manifest of another kind or configuration is
    /// an error naming both hashes.
    pub async fn open(location: Location, kind: &str, config_hash: &str) -> Result<Self> {
        Self::open_named(location, MANIFEST_NAME, kind, config_hash).await
    }

    /// Like [`OutputDir::open`], with a manifest of another name (one job of several writing into the
    /// same directory keeps its own, see [`job_manifest_name`]).
    pub async fn open_named(
        location: Location,
        manifest_name: &str,
        kind: &str,
        config_hash: &str,
    ) -> Result<Self> {
        Self::open_with(location, manifest_name, kind, config_hash, false).await
    }

    /// [`OutputDir::open_named`], or, with `replace` (`--overwrite`), an output directory opened to be
    /// written anew: an output already there, of any identity, finished or not, is removed first,
    /// its manifest before its shards, so that readers find the old output, no output, or the new
    /// one, never a mix. Only what the manifests list is removed (and the manifests of a job array's
    /// jobs); other files in the directory stay.
    pub async fn open_with(
        location: Location,
        manifest_name: &str,
        kind: &str,
        config_hash: &str,
        replace: bool,
    ) -> Result<Self> {
        // A local output is locked before its manifest is read.
        let lock = lock_output(&location, manifest_name)?;
        if replace {
            let lease = crate::lease::Lease::acquire(&location, manifest_name).await?;
            Self::remove_output(&location, manifest_name).await?;
            return Ok(Self {
                manifest: Manifest::new(kind, config_hash),
                location,
                manifest_name: manifest_name.to_string(),
                lock,
                lease,
            });
        }
        let manifest = Self::read_manifest(&location, manifest_name, kind, config_hash).await?;
        let mut output = Self {
            location,
            manifest,
            manifest_name: manifest_name.to_string(),
            lock,
            lease: None,
        };
        // A finished output is only read: no lock or lease is kept for it.
        if output.manifest.complete {
            output.lock = None;
            return Ok(output);
        }
        output.lease = crate::lease::Lease::acquire(&output.location, manifest_name).await?;
        if output.lease.is_some() {
            // Another writer may have written (or finished) the output before this one took the
            // lease over (a local lock is taken before the first read).
            output.manifest =
                Self::read_manifest(&output.location, manifest_name, kind, config_hash).await?;
            if output.manifest.complete {
                output.release().await?;
            }
        }
        Ok(output)
    }

    /// Removes the output that manifest `manifest_name` (and the job manifests beside it) describe:
    /// each manifest first, then the shards it lists.
    async fn remove_output(location: &Location, manifest_name: &str) -> Result<()> {
        let mut manifests = vec![manifest_name.to_string()];
        if manifest_name == MANIFEST_NAME {
            for object in location.list_objects().await? {
                let name = object.location.filename().unwrap_or_default();
                if is_job_manifest_name(name) && object.location == location.child(name) {
                    manifests.push(name.to_string());
                }
            }
        }
        for manifest in manifests {
            let Some(bytes) = location.read_optional(&manifest).await? else {
                continue;
            };
            // An unreadable manifest lists nothing; it is removed all the same.
            let listed = serde_json::from_slice::<Manifest>(&bytes)
                .map(|m| m.shards)
                .unwrap_or_default();
            location.delete(&manifest).await?;
            for shard in &listed {
                location.delete(&shard.name).await?;
            }
            tracing::warn!(
                manifest = %location.url_of(&location.child(&manifest)),
                shards = listed.len(),
                "removed the output being overwritten"
            );
        }
        Ok(())
    }

    /// The manifest `manifest_name` in `location` (a fresh one where there is none), checked to be of
    /// `kind` and `config_hash`; takes no lock.
    async fn read_manifest(
        location: &Location,
        manifest_name: &str,
        kind: &str,
        config_hash: &str,
    ) -> Result<Manifest> {
        let manifest_url = location.url_of(&location.child(manifest_name));
        let manifest = match Manifest::read_optional(location, manifest_name).await? {
            None => Manifest::new(kind, config_hash),
            Some(manifest) => {
                if manifest.kind != kind || manifest.config_hash != config_hash {
                    return Err(Error::Manifest {
                        url: manifest_url,
                        reason: format!(
                            "the directory holds {} output of configuration {}, not {kind} output of {config_hash}; \
                             choose another output directory or remove this one",
                            manifest.kind, manifest.config_hash
                        ),
                    });
                }
                Manifest {
                    producer: PRODUCER.to_string(),
                    ..manifest
                }
            }
        };
        Ok(manifest)
    }

    /// Where the output lives.
    pub fn location(&self) -> &Location {
        &self.location
    }

    /// The manifest as published so far.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// True when a shard of this name is already published.
    pub fn is_published(&self, name: &str) -> bool {
        self.manifest.shards.iter().any(|s| s.name == name)
    }

    /// Publishes a shard: writes it whole, then records it in the manifest. Publishing a name twice
    /// is an error (a rerun must skip published shards instead).
    pub async fn publish(&mut self, name: &str, bytes: Bytes, rows: u64) -> Result<()> {
        if self.is_published(name) {
            return Err(Error::Manifest {
                url: self.location.url(),
                reason: format!("shard {name} is already published"),
            });
        }
        let entry = ShardEntry {
            name: name.to_string(),
            rows,
            bytes: bytes.len() as u64,
            sha256: crate::hash::sha256_hex(&bytes),
        };
        self.check_lease().await?;
        self.location.write(name, bytes).await?;
        self.record(entry, Vec::new()).await
    }

    /// Records a shard that was already written whole (e.g. by a
    /// [`ShardWriter`](crate::shard_writer::ShardWriter)), with the records skipped while making it.
    pub async fn record(&mut self, entry: ShardEntry, skipped: Vec<SkipRecord>) -> Result<()> {
        if self.is_published(&entry.name) {
            return Err(Error::Manifest {
                url: self.location.url(),
                reason: format!("shard {} is already published", entry.name),
            });
        }
        self.manifest.shards.push(entry);
        self.manifest.shards.sort_by(|a, b| a.name.cmp(&b.name));
        self.manifest.skipped.extend(skipped);
        self.manifest.skipped.sort();
        self.write_manifest().await
    }

    /// Marks the output complete with a summary.
    pub async fn finish(&mut self, summary: serde_json::Value) -> Result<()> {
        self.manifest.summary = summary;
        self.manifest.complete = true;
        self.write_manifest().await?;
        // A finished output is read-only: the next writer may open it (and find it done).
        self.release().await
    }

    /// Gives up the lock and the lease.
    async fn release(&mut self) -> Result<()> {
        self.lock = None;
        match self.lease.take() {
            Some(lease) => lease.release().await,
            None => Ok(()),
        }
    }

    /// An error when this writer lost its output's lease to another writer.
    async fn check_lease(&self) -> Result<()> {
        match &self.lease {
            Some(lease) => lease.check().await,
            None => Ok(()),
        }
    }

    async fn write_manifest(&self) -> Result<()> {
        self.check_lease().await?;
        let mut json = serde_json::to_vec_pretty(&self.manifest).map_err(|source| Error::Json {
            what: format!("manifest {}", self.location.url()),
            source,
        })?;
        json.push(b'\n');
        self.location
            .write(&self.manifest_name, Bytes::from(json))
            .await
    }

    /// When every one of `count` job manifests in this directory is complete, writes their union as
    /// `_manifest.json` (shards, skipped records, `summary` summed over numeric fields, and a packed
    /// output's metadata, see [`PackedMetadata::merge`](crate::packed::PackedMetadata::merge)) and
    /// returns it. Any job may call this when it finishes: the merged bytes are the same whoever writes them.
    pub async fn merge_job_manifests(
        location: &Location,
        count: usize,
        kind: &str,
        config_hash: &str,
    ) -> Result<Option<Manifest>> {
        let mut merged = Manifest {
            summary: serde_json::Value::Object(Default::default()),
            complete: true,
            ..Manifest::new(kind, config_hash)
        };
        for index in 0..count {
            // Read only: other jobs may still be writing (and hold their locks).
            let job = Self::read_manifest(
                location,
                &job_manifest_name(index, count),
                kind,
                config_hash,
            )
            .await?;
            if !job.complete {
                return Ok(None);
            }
            merged.shards.extend(job.shards);
            merged.skipped.extend(job.skipped);
            if let (serde_json::Value::Object(total), serde_json::Value::Object(part)) =
                (&mut merged.summary, job.summary)
            {
                for (key, value) in part {
                    // A packed output's metadata: the same for every job but the highest token id.
                    if key == crate::packed::PackedMetadata::SUMMARY_KEY {
                        let url =
                            location.url_of(&location.child(&job_manifest_name(index, count)));
                        let packed = crate::packed::PackedMetadata::merge(
                            total.get(&key).cloned(),
                            value,
                            &url,
                        )?;
                        total.insert(key, packed);
                        continue;
                    }
                    if let Some(n) = value.as_u64() {
                        let sum = total
                            .get(&key)
                            .and_then(serde_json::Value::as_u64)
                            .unwrap_or(0)
                            + n;
                        total.insert(key, sum.into());
                    }
                }
            }
        }
        merged.shards.sort_by(|a, b| a.name.cmp(&b.name));
        merged.skipped.sort();
        let mut json = serde_json::to_vec_pretty(&merged).map_err(|source| Error::Json {
            what: format!("manifest {}", location.url()),
            source,
        })?;
        json.push(b'\n');
        location.write(MANIFEST_NAME, Bytes::from(json)).await?;
        Ok(Some(merged))
    }

    /// Reads every published shard (in name order).
    pub async fn read_shards(&self) -> Result<Vec<(String, Bytes)>> {
        let mut out = Vec::with_capacity(self.manifest.shards.len());
        for shard in &self.manifest.shards {
            out.push((shard.name.clone(), self.location.read(&shard.name).await?));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn one_writer_per_local_output_and_the_lock_ends_with_it() {
        let dir = tempfile::tempdir().unwrap();
        let location = Location::parse(dir.path().to_str().unwrap()).unwrap();
        let first = OutputDir::open(location.clone(), "pack", "h")
            .await
            .unwrap();
        let err = OutputDir::open(location.clone(), "pack", "h")
            .await
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("another process is writing this output now")
                && err.contains("._manifest.json.lock"),
            "{err}"
        );
        // Another configuration is refused too while the first writer lives (no manifest yet).
        assert!(OutputDir::open(location.clone(), "pack", "other")
            .await
            .is_err());
        // Jobs of an array hold their own manifests' locks, and merging only reads.
        let job0 = OutputDir::open_named(location.clone(), &job_manifest_name(0, 2), "ingest", "j")
            .await
            .unwrap();
        let job1 = OutputDir::open_named(location.clone(), &job_manifest_name(1, 2), "ingest", "j")
            .await
            .unwrap();
        assert!(OutputDir::merge_job_manifests(&location, 2, "ingest", "j")
            .await
            .unwrap()
            .is_none());
        drop((job0, job1));
        drop(first);
        let again = OutputDir::open(location.clone(), "pack", "h")
            .await
            .unwrap();
        assert!(again.manifest().shards.is_empty());
        // The lock file is empty, so reruns leave identical bytes.
        assert_eq!(
            std::fs::read(dir.path().join("._manifest.json.lock")).unwrap(),
            b""
        );
    }

    #[tokio::test]
    async fn publish_skip_and_refuse_other_config() {
        let dir = tempfile::tempdir().unwrap();
        let location = Location::parse(dir.path().to_str().unwrap()).unwrap();
        let mut out = OutputDir::open(location.clone(), "pack", "h1")
            .await
            .unwrap();
        out.publish("b.parquet", Bytes::from_static(b"bb"), 2)
            .await
            .unwrap();
        out.publish("a.parquet", Bytes::from_static(b"a"), 1)
            .await
            .unwrap();
        assert!(out
            .publish("a.parquet", Bytes::from_static(b"a"), 1)
            .await
            .is_err());
        out.finish(serde_json::json!({"rows": 3})).await.unwrap();

        let again = OutputDir::open(location.clone(), "pack", "h1")
            .await
            .unwrap();
        assert!(again.manifest().complete);
        assert!(again.is_published("a.parquet") && again.is_published("b.parquet"));
        let names: Vec<_> = again
            .manifest()
            .shards
            .iter()
            .map(|s| s.name.as_str())
            .collect();
        assert_eq!(names, ["a.parquet", "b.parquet"]);
        let shards = again.read_shards().await.unwrap();
        assert_eq!(&shards[1].1[..], b"bb");

        let err = OutputDir::open(location, "pack", "h2")
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("h1") && err.contains("h2"), "{err}");
    }

    /// `--overwrite`: the output of another identity (here a job array's, finished) goes, manifests
    /// first; files the manifests do not list stay; the new output lists only its own shards.
    #[tokio::test]
    async fn an_output_is_replaced_manifest_first_and_only_what_it_listed() {
        let dir = tempfile::tempdir().unwrap();
        let location = Location::parse(dir.path().to_str().unwrap()).unwrap();
        for (index, shard) in ["a.parquet", "b.parquet"].into_iter().enumerate() {
            let mut job = OutputDir::open_named(
                location.clone(),
                &job_manifest_name(index, 2),
                "ingest",
                "old",
            )
            .await
            .unwrap();
            job.publish(shard, Bytes::from_static(b"old"), 1)
                .await
                .unwrap();
            job.finish(serde_json::json!({"documents": 1}))
                .await
                .unwrap();
        }
        OutputDir::merge_job_manifests(&location, 2, "ingest", "old")
            .await
            .unwrap()
            .unwrap();
        std::fs::write(dir.path().join("notes.txt"), b"mine").unwrap();

        let mut new = OutputDir::open_with(location.clone(), MANIFEST_NAME, "ingest", "new", true)
            .await
            .unwrap();
        let mut left: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
            .filter(|n| !n.starts_with('.'))
            .collect();
        left.sort();
        assert_eq!(
            left,
            ["notes.txt"],
            "the old output is gone, other files stay"
        );
        new.publish("c.parquet", Bytes::from_static(b"new"), 1)
            .await
            .unwrap();
        new.finish(serde_json::Value::Null).await.unwrap();
        let reread = OutputDir::open(location, "ingest", "new").await.unwrap();
        assert!(reread.manifest().complete);
        let written: Manifest =
            serde_json::from_slice(&std::fs::read(dir.path().join(MANIFEST_NAME)).unwrap())
                .unwrap();
        assert_eq!(
            written.producer,
            format!("dapt {}", env!("CARGO_PKG_VERSION"))
        );
        let names: Vec<_> = reread.manifest().shards.iter().map(|s| &s.name).collect();
        assert_eq!(names, ["c.parquet"]);
    }

    #[tokio::test]
    async fn job_manifests_merge_once_all_are_complete() {
        let dir = tempfile::tempdir().unwrap();
        let location = Location::parse(dir.path().to_str().unwrap()).unwrap();
        let mut jobs = Vec::new();
        for index in 0..2 {
            let name = job_manifest_name(index, 2);
            jobs.push(
                OutputDir::open_named(location.clone(), &name, "ingest", "h")
                    .await
                    .unwrap(),
            );
        }
        jobs[1]
            .publish("b.parquet", Bytes::from_static(b"b"), 2)
            .await
            .unwrap();
        jobs[1]
            .finish(serde_json::json!({"documents": 2}))
            .await
            .unwrap();
        assert!(OutputDir::merge_job_manifests(&location, 2, "ingest", "h")
            .await
            .unwrap()
            .is_none());
        let skip = SkipRecord {
            object: "x".into(),
            line: Some(3),
            reason: "bad".into(),
        };
        let entry = ShardEntry {
            name: "a.parquet".into(),
            rows: 1,
            bytes: 1,
            sha256: "s".into(),
        };
        jobs[0].record(entry, vec![skip.clone()]).await.unwrap();
        jobs[0]
            .finish(serde_json::json!({"documents": 1}))
            .await
            .unwrap();
        let merged = OutputDir::merge_job_manifests(&location, 2, "ingest", "h")
            .await
            .unwrap()
            .unwrap();
        let names: Vec<_> = merged.shards.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["a.parquet", "b.parquet"]);
        assert_eq!(merged.skipped, [skip]);
        assert_eq!(merged.summary["documents"], 3);
        let reopened = OutputDir::open(location, "ingest", "h").await.unwrap();
        assert_eq!(reopened.manifest(), &merged);
    }
}
