//! Ingest settings: the options a user writes (`[ingest]` or command-line flags), validated once into
//! the settings every reader and the job runner use.
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::{Error, Format, Result};

/// What to do with a record that cannot be read.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ErrorPolicy {
    /// Stop with an error naming object, line and reason.
    #[default]
    Fail,
    /// Count the record, list it (object, line, reason) in the manifest, and go on.
    Skip,
}

/// Column layouts of well-known datasets.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Preset {
    /// FineWeb / FineWeb-Edu / FineWeb-2 Parquet: `text, id, dump, url, date, file_path, language,
    /// language_score, token_count` (fields other than text, id and url go to `meta`).
    Fineweb,
    /// C4 (`*.json.gz`): `text, timestamp, url`; ids are content ids.
    C4,
}

/// Ingest options as written in a config file (`[ingest]`) or given on the command line.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IngestOptions {
    /// Input URLs: objects, prefixes or globs (`s3://bucket/c4/en/*.json.gz`); at least one is
    /// required (no default). Relative local paths in a config file are resolved against the config
    /// file's directory.
    pub inputs: Vec<String>,
    /// Force one format (`jsonl`, `jsonl.gz`, `jsonl.zst`, `parquet`) instead of detecting it from
    /// each object's name (default: detect; `auto` says the same).
    pub format: Option<String>,
    /// Column layout of a known dataset (default: none); explicit field names below win over it.
    pub preset: Option<Preset>,
    /// Field that holds the document text (default `text`).
    pub text_field: Option<String>,
    /// Field that holds the document id (default `id`); documents without one get a content id
    /// (xxhash64 of source and text).
    pub id_field: Option<String>,
    /// Field that holds the source name (default `source`); without it, the object's file name
    /// without extensions.
    pub source_field: Option<String>,
    /// Field that holds the document URL (default `url`).
    pub url_field: Option<String>,
    /// Documents per Arrow batch (default 4096).
    pub batch_size: usize,
    /// What a record that cannot be read does: `fail` (default) or `skip`.
    pub on_error: ErrorPolicy,
    /// Files read at once (default: the number of cores).
    pub concurrency: Option<usize>,
    /// Object-store settings for the inputs (object_store keys: `aws_endpoint`, `aws_region`,
    /// `timeout`, …), over the environment (default: none).
    pub storage: BTreeMap<String, String>,
    /// Replace an output already in the output directory (of any settings, finished or not) instead
    /// of resuming it or refusing it (default: false; not with a job array).
    pub overwrite: bool,
}

impl Default for IngestOptions {
    fn default() -> Self {
        Self {
            inputs: Vec::new(),
            format: None,
            preset: None,
            text_field: None,
            id_field: None,
            source_field: None,
            url_field: None,
            batch_size: 4096,
            on_error: ErrorPolicy::Fail,
            concurrency: None,
            storage: BTreeMap::new(),
            overwrite: false,
        }
    }
}

/// Validated ingest settings (made from [`IngestOptions`] by `TryFrom`, defaults filled in). Their
/// serialisation is the part of the output's identity that settings contribute.
#[derive(Clone, Debug, Serialize)]
pub struct IngestSettings {
    /// Input URLs, objects, prefixes or globs (at least one).
    pub inputs: Vec<String>,
    /// The one format of every input, or `None`: detected per object from its name.
    pub format: Option<Format>,
    /// Field of the document text.
    pub text_field: String,
    /// Field of the document id; `None`: content ids.
    pub id_field: Option<String>,
    /// Field of the source name (the object's file name where a record has none).
    pub source_field: String,
    /// Field of the document URL.
    pub url_field: String,
    /// Documents per Arrow batch (positive).
    pub batch_size: usize,
    /// What a record that cannot be read does.
    pub on_error: ErrorPolicy,
    /// Files read at once (positive); not part of what the output depends on.
    #[serde(skip)]
    pub concurrency: usize,
    /// Where and how to reach the inputs, not what they hold (and may carry credentials): not hashed.
    #[serde(skip)]
    pub storage: BTreeMap<String, String>,
    /// Replace what the output directory holds (see [`IngestOptions::overwrite`]); not hashed.
    #[serde(skip)]
    pub overwrite: bool,
}

impl TryFrom<IngestOptions> for IngestSettings {
    type Error = Error;

    fn try_from(options: IngestOptions) -> Result<Self> {
        let setting = |key: &str, reason: String| Error::Setting {
            key: format!("ingest.{key}"),
            reason,
        };
        if options.inputs.is_empty() {
            return Err(setting(
                "inputs",
                "at least one input URL is required".into(),
            ));
        }
        let format = match options.format.as_deref() {
            None | Some("auto") => None,
            Some(name) => Some(Format::parse(name).ok_or_else(|| {
                setting(
                    "format",
                    format!("{name:?} is not one of auto, jsonl, jsonl.gz, jsonl.zst, parquet"),
                )
            })?),
        };
        let (text, id) = match options.preset {
            Some(Preset::Fineweb) => ("text", Some("id")),
            Some(Preset::C4) => ("text", None),
            None => ("text", Some("id")),
        };
        let text_field = options.text_field.unwrap_or_else(|| text.into());
        if text_field.is_empty() {
            return Err(setting("text_field", "must not be empty".into()));
        }
        let id_field = match options.id_field {
            Some(field) if field.is_empty() => None,
            Some(field) => Some(field),
            None => id.map(str::to_string),
        };
        if options.batch_size == 0 {
            return Err(setting("batch_size", "must be positive".into()));
        }
        let concurrency = options.concurrency.unwrap_or_else(|| {
            std::thread::available_parallelism().map_or(2, std::num::NonZero::get)
        });
        if concurrency == 0 {
            return Err(setting("concurrency", "must be positive".into()));
        }
        Ok(Self {
            inputs: options.inputs,
            format,
            text_field,
            id_field,
            source_field: options.source_field.unwrap_or_else(|| "source".into()),
            url_field: options.url_field.unwrap_or_else(|| "url".into()),
            batch_size: options.batch_size,
            on_error: options.on_error,
            concurrency,
            storage: options.storage,
            overwrite: options.overwrite,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_and_explicit_fields() {
        let settings = |options: IngestOptions| IngestSettings::try_from(options).unwrap();
        let base = IngestOptions {
            inputs: vec!["x".into()],
            ..Default::default()
        };
        let c4 = settings(IngestOptions {
            preset: Some(Preset::C4),
            ..base.clone()
        });
        assert_eq!(c4.id_field, None);
        let custom = settings(IngestOptions {
            preset: Some(Preset::Fineweb),
            text_field: Some("content".into()),
            ..base.clone()
        });
        assert_eq!(
            (custom.text_field.as_str(), custom.id_field.as_deref()),
            ("content", Some("id"))
        );
        let err = IngestSettings::try_from(IngestOptions {
            format: Some("csv".into()),
            ..base
        })
        .unwrap_err()
        .to_string();
        assert!(err.contains("ingest.format"), "{err}");
    }
}
