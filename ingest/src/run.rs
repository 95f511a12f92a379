//! The ingest job: expand inputs, read each shard, write one normalised Parquet shard per input file.
use std::collections::BTreeMap;
use std::sync::Arc;

use dapt_core::schema::document_schema;
use dapt_core::{hash, parquet_io, Location, OutputDir};
use serde::{Deserialize, Serialize};

use crate::jsonl::{DocumentReader, Format};
use crate::{Error, Result};

/// Ingest options as written in a config file (`[ingest]`).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IngestOptions {
    /// Input URLs: objects, prefixes or globs (`s3://bucket/c4/*.json.gz`). Relative local paths are
    /// resolved against the config file's directory.
    pub inputs: Vec<String>,
    /// Field that holds the document text.
    pub text_field: String,
    /// Field that holds the document id; documents without one get a content id (xxhash64 of source
    /// and text).
    pub id_field: Option<String>,
    /// Field that holds the source name; defaults to the shard's file name without extensions.
    pub source_field: String,
    /// Field that holds the document URL, if any.
    pub url_field: String,
    /// Documents per Arrow batch.
    pub batch_size: usize,
}

impl Default for IngestOptions {
    fn default() -> Self {
        Self {
            inputs: Vec::new(),
            text_field: "text".into(),
            id_field: Some("id".into()),
            source_field: "source".into(),
            url_field: "url".into(),
            batch_size: 4096,
        }
    }
}

/// Validated ingest settings.
#[derive(Clone, Debug, Serialize)]
pub struct IngestSettings {
    pub inputs: Vec<String>,
    pub text_field: String,
    pub id_field: Option<String>,
    pub source_field: String,
    pub url_field: String,
    pub batch_size: usize,
}

impl TryFrom<IngestOptions> for IngestSettings {
    type Error = Error;

    fn try_from(options: IngestOptions) -> Result<Self> {
        let setting = |key: &str, reason: &str| Error::Setting {
            key: format!("ingest.{key}"),
            reason: reason.into(),
        };
        if options.inputs.is_empty() {
            return Err(setting("inputs", "at least one input URL is required"));
        }
        if options.text_field.is_empty() {
            return Err(setting("text_field", "must not be empty"));
        }
        if options.batch_size == 0 {
            return Err(setting("batch_size", "must be positive"));
        }
        Ok(Self {
            inputs: options.inputs,
            text_field: options.text_field,
            id_field: options.id_field.filter(|f| !f.is_empty()),
            source_field: options.source_field,
            url_field: options.url_field,
            batch_size: options.batch_size,
        })
    }
}

/// What an ingest run did.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IngestSummary {
    /// Input files found.
    pub files: u64,
    /// Files read in this run (the others were published by an earlier run).
    pub files_read: u64,
    /// Documents written in this run.
    pub documents: u64,
    /// Input bytes read in this run (compressed size).
    pub bytes: u64,
}

/// Ingests every input into `out` (one Parquet shard per input file, plus `_manifest.json`).
/// `config_hash` binds the output directory to these settings; `on_file` is called after each file
/// with (input URL, documents, bytes).
pub async fn ingest(
    settings: &IngestSettings,
    out: Location,
    config_hash: &str,
    mut on_file: impl FnMut(&str, u64, u64),
) -> Result<IngestSummary> {
    let settings = Arc::new(settings.clone());
    let inputs = dapt_core::location::expand_inputs(&settings.inputs).await?;
    let mut files = Vec::new();
    for (location, meta) in inputs {
        let name = meta.location.filename().unwrap_or_default().to_string();
        // Inputs named by a prefix may hold other files (READMEs, checksums): skip what is not a shard.
        match Format::detect(&name) {
            Some(format) => files.push((location, meta, format)),
            None => tracing::debug!(file = %name, "skipping a file that is not a JSON-lines shard"),
        }
    }
    if files.is_empty() {
        return Err(Error::Format {
            url: settings.inputs.join(", "),
            reason: "no .jsonl, .jsonl.gz or .jsonl.zst shards found".into(),
        });
    }
    let mut output = OutputDir::open(out, "ingest", config_hash).await?;
    let mut summary = IngestSummary {
        files: files.len() as u64,
        ..Default::default()
    };
    for (location, meta, format) in files {
        let url = location.url_of(&meta.location);
        let stem = meta
            .location
            .filename()
            .unwrap_or_default()
            .split('.')
            .next()
            .unwrap_or_default()
            .to_string();
        let shard_name = format!("{stem}-{}.parquet", &hash::content_id("ingest", &url)[..8]);
        if output.is_published(&shard_name) {
            tracing::info!(%url, shard = %shard_name, "already ingested, skipping");
            continue;
        }
        let mut reader = DocumentReader::new(
            location,
            meta.location.clone(),
            format,
            Arc::clone(&settings),
        );
        let mut batches = Vec::new();
        let mut documents = 0;
        while let Some(batch) = reader.next_batch().await? {
            documents += batch.num_rows() as u64;
            batches.push(batch);
        }
        let mut metadata = BTreeMap::new();
        metadata.insert("dapt.input_url".to_string(), url.clone());
        metadata.insert(
            dapt_core::schema::metadata::CONFIG_HASH.to_string(),
            config_hash.to_string(),
        );
        let bytes = parquet_io::encode(document_schema(), &batches, &metadata, &url)?;
        output.publish(&shard_name, bytes, documents).await?;
        summary.files_read += 1;
        summary.documents += documents;
        summary.bytes += meta.size;
        on_file(&url, documents, meta.size);
    }
    let total_documents: u64 = output.manifest().shards.iter().map(|s| s.rows).sum();
    output
        .finish(serde_json::json!({ "files": summary.files, "documents": total_documents }))
        .await?;
    Ok(summary)
}
