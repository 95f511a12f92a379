//! JSON lines, plain or compressed (gzip, zstd), decoded as the object's bytes arrive.
use std::pin::Pin;

use arrow::array::RecordBatch;
use async_compression::tokio::bufread::{GzipDecoder, ZstdDecoder};
use dapt_core::Location;
use futures::TryStreamExt;
use object_store::path::Path;
use object_store::ObjectStoreExt;
use serde_json::{Map, Value};
use tokio::io::{AsyncBufRead, AsyncBufReadExt, BufReader};
use tokio_util::io::StreamReader;

use crate::document::{DocumentBuilder, RawDocument, ReadContext};
use crate::error::storage_failure;
use crate::{Error, Format, Result};

type LineSource = Pin<Box<dyn AsyncBufRead + Send>>;

pub(crate) struct JsonlSource {
    location: Location,
    path: Path,
    format: Format,
    lines: Option<LineSource>,
    line_number: u64,
    buffer: Vec<u8>,
    done: bool,
}

impl JsonlSource {
    pub fn new(location: Location, path: Path, format: Format) -> Self {
        Self {
            location,
            path,
            format,
            lines: None,
            line_number: 0,
            buffer: Vec::new(),
            done: false,
        }
    }

    async fn open(&mut self) -> std::result::Result<LineSource, object_store::Error> {
        let result = self.location.store().get(&self.path).await?;
        let bytes = result.into_stream().map_err(std::io::Error::other);
        let raw = StreamReader::new(bytes);
        Ok(match self.format {
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
            _ => Box::pin(raw),
        })
    }

    pub async fn next_batch(&mut self, context: &mut ReadContext) -> Result<Option<RecordBatch>> {
        if self.done {
            return Ok(None);
        }
        if self.lines.is_none() {
            match self.open().await {
                Ok(lines) => self.lines = Some(lines),
                Err(e) => {
                    self.done = true;
                    let reason = match e {
                        object_store::Error::NotFound { .. } => {
                            format!("object vanished after listing: {e}")
                        }
                        e => {
                            return Err(Error::Storage {
                                url: context.url.clone(),
                                source: Box::new(e),
                            })
                        }
                    };
                    context.reject(None, reason)?;
                    return Ok(None);
                }
            }
        }
        let mut builder = DocumentBuilder::default();
        while builder.rows() < context.settings.batch_size {
            self.buffer.clear();
            let Some(lines) = self.lines.as_mut() else {
                break;
            };
            let read = match lines.read_until(b'\n', &mut self.buffer).await {
                Ok(read) => read,
                Err(e) => {
                    self.done = true;
                    if e.get_ref()
                        .and_then(|inner| storage_failure(inner))
                        .is_some()
                    {
                        return Err(Error::Storage {
                            url: context.url.clone(),
                            source: Box::new(e),
                        });
                    }
                    let what = match self.format {
                        Format::JsonlGz => "gzip stream",
                        Format::JsonlZst => "zstd stream",
                        _ => "object",
                    };
                    context.reject(
                        Some(self.line_number + 1),
                        format!("truncated or corrupt {what}: {e}"),
                    )?;
                    break;
                }
            };
            if read == 0 {
                self.done = true;
                break;
            }
            self.line_number += 1;
            let line = self.buffer.trim_ascii();
            if line.is_empty() {
                continue;
            }
            let line_number = self.line_number;
            let text = match std::str::from_utf8(line) {
                Ok(text) => text,
                Err(e) => {
                    context.reject(Some(line_number), format!("invalid UTF-8: {e}"))?;
                    continue;
                }
            };
            let mut object: Map<String, Value> = match serde_json::from_str(text) {
                Ok(object) => object,
                Err(e) => {
                    context.reject(Some(line_number), format!("malformed JSON: {e}"))?;
                    continue;
                }
            };
            let settings = context.settings.clone();
            let body = object.remove(&settings.text_field);
            let body = match &body {
                Some(Value::String(s)) => Some(s.as_str()),
                None | Some(Value::Null) => None,
                Some(_) => {
                    let reason = format!("{:?} is not a string", settings.text_field);
                    context.reject(Some(line_number), reason)?;
                    continue;
                }
            };
            let id = match settings.id_field.as_ref().and_then(|f| object.remove(f)) {
                Some(Value::String(s)) => Some(s),
                Some(Value::Number(n)) => Some(n.to_string()),
                _ => None,
            };
            let source = match object.remove(&settings.source_field) {
                Some(Value::String(s)) => Some(s),
                _ => None,
            };
            let url = match object.remove(&settings.url_field) {
                Some(Value::String(s)) => Some(s),
                _ => None,
            };
            let meta = (!object.is_empty()).then(|| Value::Object(object).to_string());
            builder.push(
                context,
                line_number,
                RawDocument {
                    text: body,
                    id,
                    source: source.as_deref(),
                    url: url.as_deref(),
                    meta: meta.as_deref(),
                },
            )?;
        }
        if builder.rows() == 0 {
            return Ok(None);
        }
        builder.finish(&context.url).map(Some)
    }
}
