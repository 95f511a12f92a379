//! Shard formats: detected from object names, or forced by the user.
use serde::{Deserialize, Serialize};

/// A shard format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Format {
    /// JSON lines, one object per line (`.jsonl`, `.json`, `.ndjson`).
    #[serde(rename = "jsonl")]
    Jsonl,
    /// Gzip-compressed JSON lines.
    #[serde(rename = "jsonl.gz")]
    JsonlGz,
    /// Zstandard-compressed JSON lines.
    #[serde(rename = "jsonl.zst")]
    JsonlZst,
    /// Parquet, read row group by row group.
    #[serde(rename = "parquet")]
    Parquet,
}

impl Format {
    /// The format of an object by its name: `.parquet`, or `.jsonl`/`.json`/`.ndjson` optionally
    /// followed by `.gz` or `.zst`. Other names (READMEs, checksums) are not shards.
    pub fn detect(name: &str) -> Option<Self> {
        if name.ends_with(".parquet") {
            return Some(Self::Parquet);
        }
        let (stem, format) = if let Some(stem) = name.strip_suffix(".gz") {
            (stem, Self::JsonlGz)
        } else if let Some(stem) = name.strip_suffix(".zst") {
            (stem, Self::JsonlZst)
        } else {
            (name, Self::Jsonl)
        };
        [".jsonl", ".json", ".ndjson"]
            .iter()
            .any(|ext| stem.ends_with(ext))
            .then_some(format)
    }

    /// Parses a user's format name.
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "jsonl" | "json" | "ndjson" => Some(Self::Jsonl),
            "jsonl.gz" | "json.gz" | "gz" => Some(Self::JsonlGz),
            "jsonl.zst" | "json.zst" | "zst" => Some(Self::JsonlZst),
            "parquet" => Some(Self::Parquet),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_by_name() {
        assert_eq!(Format::detect("a.jsonl"), Some(Format::Jsonl));
        assert_eq!(
            Format::detect("c4-train.00001-of-01024.json.gz"),
            Some(Format::JsonlGz)
        );
        assert_eq!(Format::detect("x.jsonl.zst"), Some(Format::JsonlZst));
        assert_eq!(Format::detect("000_00000.parquet"), Some(Format::Parquet));
        assert_eq!(Format::detect("README.md"), None);
        assert_eq!(Format::detect("x.tar.gz"), None);
        assert_eq!(Format::parse("jsonl.zst"), Some(Format::JsonlZst));
        assert_eq!(Format::parse("csv"), None);
    }
}
