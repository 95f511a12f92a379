//! Sources: named tables over shards in object storage, as configured in TOML (`[sources.NAME]`).
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// A sources file: tables and object-store settings.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SourcesOptions {
    /// Tables by name.
    pub sources: BTreeMap<String, SourceOptions>,
    /// Object-store settings over the environment (object_store keys: `aws_endpoint`, `timeout`, …).
    pub storage: BTreeMap<String, String>,
    /// Tokenizers for `token_count(text, 'name')`: name → path of an HF `tokenizer.json`.
    pub tokenizers: BTreeMap<String, std::path::PathBuf>,
    /// Encoder backend for `token_count`: `auto` (fast where it reproduces HF exactly), `hf`, `fast`.
    pub encoder: dapt_encoder::EncoderChoice,
    /// Classifiers for `classify(text, 'name')`: name → model file of `dapt classify train`.
    pub classifiers: BTreeMap<String, std::path::PathBuf>,
    /// Where queries run: `None` here, or the `df://HOST:PORT` scheduler of a Ballista cluster
    /// (`--cluster`). Not part of any output's identity: a result is the same wherever it ran.
    #[serde(skip)]
    pub cluster: Option<String>,
}

/// One table.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SourceOptions {
    /// A directory/prefix, an object, or a glob (`s3://bucket/fineweb/CC-MAIN-2024-10/*.parquet`).
    pub url: String,
    /// `parquet` or `jsonl` (plain JSON lines); default: from the URL's extension, else `parquet`.
    pub format: Option<String>,
    /// Renames: Document field → the source's column (`text = "content"`), so that SQL over every
    /// source can use the same names.
    pub columns: BTreeMap<String, String>,
}

/// Table formats a source can have.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SourceFormat {
    /// Parquet files.
    Parquet,
    /// JSON lines (plain, `.gz`, `.zst`).
    Jsonl,
}

impl SourcesOptions {
    /// Reads a sources TOML file; errors name the file and key.
    pub fn load(path: &std::path::Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let options: Self = toml::from_str(&text).map_err(|source| Error::Toml {
            path: path.to_path_buf(),
            source: Box::new(source),
        })?;
        let base = path.parent().unwrap_or(std::path::Path::new("."));
        let mut options = options;
        for file in options
            .tokenizers
            .values_mut()
            .chain(options.classifiers.values_mut())
        {
            *file = base.join(&*file);
        }
        for (name, source) in &options.sources {
            source.format(name)?;
            if source.url.is_empty() {
                return Err(Error::Config {
                    path: path.display().to_string(),
                    reason: format!("sources.{name}.url: missing"),
                });
            }
        }
        Ok(options)
    }
}

impl SourceOptions {
    /// The table format: given, or by extension.
    /// Whether `format` is set or the URL ends with a known file extension (otherwise the format of a
    /// directory or prefix is detected from the files in it).
    pub fn names_its_format(&self) -> bool {
        self.format.is_some()
            || [".parquet", ".jsonl", ".json", ".ndjson"]
                .iter()
                .any(|e| self.url.ends_with(e))
    }

    /// The format by `format` or the URL's extension; Parquet when neither says.
    pub fn format(&self, name: &str) -> Result<SourceFormat> {
        match self.format.as_deref() {
            Some("parquet") => Ok(SourceFormat::Parquet),
            Some("jsonl" | "json" | "ndjson") => Ok(SourceFormat::Jsonl),
            Some(other) => Err(Error::Config {
                path: format!("sources.{name}.format"),
                reason: format!("{other:?} is not parquet or jsonl (compressed JSON lines: run `dapt ingest` first)"),
            }),
            None => Ok(
                if [".jsonl", ".json", ".ndjson"].iter().any(|e| self.url.ends_with(e)) {
                    SourceFormat::Jsonl
                } else {
                    SourceFormat::Parquet
                },
            ),
        }
    }
}
/// The format of a directory's files by their names: Parquet when any is `.parquet`, else JSON lines
/// with the extension (`.jsonl`, `.json`, `.ndjson`) of the first such file; `None` when no name says.
pub fn detect_format<'a>(
    names: impl IntoIterator<Item = &'a str>,
) -> Option<(SourceFormat, &'static str)> {
    let mut json = None;
    for name in names {
        if name.ends_with(".parquet") {
            return Some((SourceFormat::Parquet, ".parquet"));
        }
        if json.is_none() {
            json = [".jsonl", ".json", ".ndjson"]
                .into_iter()
                .find(|e| name.ends_with(e));
        }
    }
    json.map(|e| (SourceFormat::Jsonl, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_directory_format_comes_from_its_files() {
        let detect = |names: &[&str]| detect_format(names.iter().copied());
        assert_eq!(
            detect(&["d/a.jsonl", "d/README"]),
            Some((SourceFormat::Jsonl, ".jsonl"))
        );
        assert_eq!(
            detect(&["d/x.ndjson"]),
            Some((SourceFormat::Jsonl, ".ndjson"))
        );
        assert_eq!(
            detect(&["d/_manifest.json", "d/part-0.parquet"]),
            Some((SourceFormat::Parquet, ".parquet"))
        );
        assert_eq!(detect(&["d/notes.txt"]), None);
    }
}
