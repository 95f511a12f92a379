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
}

/// An output directory with its manifest.
#[derive(Debug)]
pub struct OutputDir {
    location: Location,
    manifest: Manifest,
}

impl OutputDir {
    /// Opens (or starts) an output directory. An existing manifest of another kind or configuration is
    /// an error naming both hashes.
    pub async fn open(location: Location, kind: &str, config_hash: &str) -> Result<Self> {
        let manifest_url = location.url_of(&location.child(MANIFEST_NAME));
        let manifest = match location.read_optional(MANIFEST_NAME).await? {
            None => Manifest {
                kind: kind.to_string(),
                config_hash: config_hash.to_string(),
                shards: Vec::new(),
                summary: serde_json::Value::Null,
                complete: false,
            },
            Some(bytes) => {
                let manifest: Manifest =
                    serde_json::from_slice(&bytes).map_err(|e| Error::Manifest {
                        url: manifest_url.clone(),
                        reason: format!("unreadable: {e}"),
                    })?;
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
                manifest
            }
        };
        Ok(Self { location, manifest })
    }

    pub fn location(&self) -> &Location {
        &self.location
    }

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
        self.location.write(name, bytes).await?;
        self.manifest.shards.push(entry);
        self.manifest.shards.sort_by(|a, b| a.name.cmp(&b.name));
        self.write_manifest().await
    }

    /// Marks the output complete with a summary.
    pub async fn finish(&mut self, summary: serde_json::Value) -> Result<()> {
        self.manifest.summary = summary;
        self.manifest.complete = true;
        self.write_manifest().await
    }

    async fn write_manifest(&self) -> Result<()> {
        let mut json = serde_json::to_vec_pretty(&self.manifest).map_err(|e| Error::Manifest {
            url: self.location.url(),
            reason: e.to_string(),
        })?;
        json.push(b'\n');
        self.location.write(MANIFEST_NAME, Bytes::from(json)).await
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
}
