//! Streaming reader of JSON-lines shards (plain, gzip, zstd) into Document batches.
use std::pin::Pin;
use std::sync::Arc;

use arrow::array::{RecordBatch, StringBuilder};
use async_compression::tokio::bufread::{GzipDecoder, ZstdDecoder};
use dapt_core::schema::document_schema;
use dapt_core::Location;
use futures::TryStreamExt;
use object_store::path::Path;
use object_store::ObjectStoreExt;
use serde_json::{Map, Value};
use tokio::io::{AsyncBufRead, AsyncBufReadExt, BufReader};
use tokio_util::io::StreamReader;

use crate::run::IngestSettings;
use crate::{Error, Result};

/// Shard formats, detected from the object name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Jsonl,
    JsonlGz,
    JsonlZst,
}

impl Format {
    /// The format of an object by its name: `.jsonl`/`.json`/`.ndjson`, optionally followed by `.gz`
    /// or `.zst`.
    pub fn detect(name: &str) -> Option<Self> {
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
}

type LineSource = Pin<Box<dyn AsyncBufRead + Send>>;

/// Reads one shard as Document batches. Creating it does no I/O; the object is opened on the first
/// call to [`DocumentReader::next_batch`].
pub struct DocumentReader {
    location: Location,
    path: Path,
    format: Format,
    settings: Arc<IngestSettings>,
    /// Document source name: the object's file name without its extensions.
    default_source: String,
    lines: Option<LineSource>,
    line_number: u64,
    buffer: Vec<u8>,
    done: bool,
}

impl DocumentReader {
    pub fn new(
        location: Location,
        path: Path,
        format: Format,
        settings: Arc<IngestSettings>,
    ) -> Self {
        let file_name = path.filename().unwrap_or_default();
        let default_source = file_name.split('.').next().unwrap_or(file_name).to_string();
        Self {
            location,
            path,
            format,
            settings,
            default_source,
            lines: None,
            line_number: 0,
            buffer: Vec::new(),
            done: false,
        }
    }

    fn url(&self) -> String {
        self.location.url_of(&self.path)
    }

    async fn open(&mut self) -> Result<()> {
        let result = self
            .location
            .store()
            .get(&self.path)
            .await
            .map_err(|e| self.location.error(&self.path, e))?;
        let bytes = result
            .into_stream()
            .map_err(|e| std::io::Error::other(e.to_string()));
        let raw = StreamReader::new(bytes);
        let reader: LineSource = match self.format {
            Format::Jsonl => Box::pin(raw),
            Format::JsonlGz => {
                let mut decoder = GzipDecoder::new(raw);
                decoder.multiple_members(true);
                Box::pin(BufReader::new(decoder))
            }
            Format::JsonlZst => {
                let mut decoder = ZstdDecoder::new(raw);
                decoder.multiple_members(true);
                Box::pin(BufReader::new(decoder))
            }
        };
        self.lines = Some(reader);
        Ok(())
    }

    /// The next batch of at most `batch_size` documents, or `None` at the end of the shard.
    pub async fn next_batch(&mut self) -> Result<Option<RecordBatch>> {
        if self.done {
            return Ok(None);
        }
        if self.lines.is_none() {
            self.open().await?;
        }
        let mut ids = StringBuilder::new();
        let mut texts = StringBuilder::new();
        let mut sources = StringBuilder::new();
        let mut urls = StringBuilder::new();
        let mut metas = StringBuilder::new();
        let mut rows = 0;
        while rows < self.settings.batch_size {
            self.buffer.clear();
            let lines = self.lines.as_mut().expect("opened above");
            let read = lines
                .read_until(b'\n', &mut self.buffer)
                .await
                .map_err(|source| Error::Read {
                    url: self.location.url_of(&self.path),
                    source,
                })?;
            if read == 0 {
                self.done = true;
                break;
            }
            self.line_number += 1;
            let line = self.buffer.trim_ascii();
            if line.is_empty() {
                continue;
            }
            let record = self.parse(line)?;
            ids.append_value(&record.id);
            texts.append_value(&record.text);
            sources.append_value(&record.source);
            urls.append_option(record.url.as_deref());
            metas.append_option(record.meta.as_deref());
            rows += 1;
        }
        if rows == 0 {
            return Ok(None);
        }
        let batch = RecordBatch::try_new(
            document_schema(),
            vec![
                Arc::new(ids.finish()),
                Arc::new(texts.finish()),
                Arc::new(sources.finish()),
                Arc::new(urls.finish()),
                Arc::new(metas.finish()),
            ],
        )
        .map_err(|source| dapt_core::Error::Arrow {
            what: self.url(),
            source,
        })?;
        Ok(Some(batch))
    }

    fn parse(&self, line: &[u8]) -> Result<Record> {
        let bad = |reason: String| Error::Record {
            url: self.url(),
            line: self.line_number,
            reason,
        };
        let text = std::str::from_utf8(line).map_err(|e| bad(format!("invalid UTF-8: {e}")))?;
        let mut object: Map<String, Value> =
            serde_json::from_str(text).map_err(|e| bad(format!("malformed JSON: {e}")))?;
        let settings = &self.settings;
        let text = match object.remove(&settings.text_field) {
            Some(Value::String(s)) if !s.is_empty() => s,
            Some(Value::String(_)) => return Err(bad(format!("empty {:?}", settings.text_field))),
            Some(_) => return Err(bad(format!("{:?} is not a string", settings.text_field))),
            None => return Err(bad(format!("no {:?} field", settings.text_field))),
        };
        let source = match object.remove(&settings.source_field) {
            Some(Value::String(s)) if !s.is_empty() => s,
            _ => self.default_source.clone(),
        };
        let id = match settings.id_field.as_ref().and_then(|f| object.remove(f)) {
            Some(Value::String(s)) if !s.is_empty() => s,
            Some(Value::Number(n)) => n.to_string(),
            _ => dapt_core::hash::content_id(&source, &text),
        };
        let url = match object.remove(&settings.url_field) {
            Some(Value::String(s)) => Some(s),
            _ => None,
        };
        let meta = (!object.is_empty()).then(|| Value::Object(object).to_string());
        Ok(Record {
            id,
            text,
            source,
            url,
            meta,
        })
    }
}

struct Record {
    id: String,
    text: String,
    source: String,
    url: Option<String>,
    meta: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_by_name() {
        assert_eq!(Format::detect("a.jsonl"), Some(Format::Jsonl));
        assert_eq!(Format::detect("c4-00001.json.gz"), Some(Format::JsonlGz));
        assert_eq!(Format::detect("x.jsonl.zst"), Some(Format::JsonlZst));
        assert_eq!(Format::detect("x.parquet"), None);
        assert_eq!(Format::detect("README.md"), None);
    }
}
