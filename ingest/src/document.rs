//! What the format readers share: the reading context (URL, settings, rejected records under the
//! error policy) and the builder that validates documents into Document batches.
use std::sync::Arc;

use arrow::array::{RecordBatch, StringBuilder};
use dapt_core::schema::document_schema;
use dapt_core::SkipRecord;

use crate::settings::{ErrorPolicy, IngestSettings};
use crate::{Error, Result};

/// What a format reader needs to know and where it reports rejected records.
pub(crate) struct ReadContext {
    pub url: String,
    pub settings: Arc<IngestSettings>,
    /// Source name for documents without one: the object's file name without extensions.
    pub default_source: String,
    pub skipped: Vec<SkipRecord>,
}

impl ReadContext {
    /// A record (or, with `line: None`, the rest of the object) cannot be used: under `fail` this is the
    /// error; under `skip` it is recorded and reading goes on.
    pub fn reject(&mut self, line: Option<u64>, reason: String) -> Result<()> {
        match self.settings.on_error {
            ErrorPolicy::Fail => Err(match line {
                Some(line) => Error::Record {
                    url: self.url.clone(),
                    line,
                    reason,
                },
                None => Error::Object {
                    url: self.url.clone(),
                    reason,
                },
            }),
            ErrorPolicy::Skip => {
                tracing::warn!(url = %self.url, ?line, %reason, "skipped");
                self.skipped.push(SkipRecord {
                    object: self.url.clone(),
                    line,
                    reason,
                });
                Ok(())
            }
        }
    }
}

/// Collects documents into a Document batch.
#[derive(Default)]
pub(crate) struct DocumentBuilder {
    ids: StringBuilder,
    texts: StringBuilder,
    sources: StringBuilder,
    urls: StringBuilder,
    metas: StringBuilder,
    rows: usize,
}

/// One document's fields before validation.
pub(crate) struct RawDocument<'a> {
    pub text: Option<&'a str>,
    pub id: Option<String>,
    pub source: Option<&'a str>,
    pub url: Option<&'a str>,
    pub meta: Option<&'a str>,
}

impl DocumentBuilder {
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Validates and appends a document; a missing or empty text is rejected through `context`.
    pub fn push(
        &mut self,
        context: &mut ReadContext,
        line: u64,
        raw: RawDocument<'_>,
    ) -> Result<()> {
        let field = &context.settings.text_field;
        let text = match raw.text {
            Some(text) if !text.is_empty() => text,
            Some(_) => return context.reject(Some(line), format!("empty {field:?}")),
            None => return context.reject(Some(line), format!("no {field:?} field")),
        };
        let source = raw
            .source
            .filter(|s| !s.is_empty())
            .unwrap_or(&context.default_source);
        let id = match raw.id.filter(|id| !id.is_empty()) {
            Some(id) => id,
            None => dapt_core::hash::content_id(source, text),
        };
        self.ids.append_value(id);
        self.texts.append_value(text);
        self.sources.append_value(source);
        self.urls.append_option(raw.url);
        self.metas.append_option(raw.meta);
        self.rows += 1;
        Ok(())
    }

    /// The batch so far (builders are reset).
    pub fn finish(&mut self, url: &str) -> Result<RecordBatch> {
        self.rows = 0;
        RecordBatch::try_new(
            document_schema(),
            vec![
                Arc::new(self.ids.finish()),
                Arc::new(self.texts.finish()),
                Arc::new(self.sources.finish()),
                Arc::new(self.urls.finish()),
                Arc::new(self.metas.finish()),
            ],
        )
        .map_err(|source| {
            dapt_core::Error::Arrow {
                what: url.to_string(),
                source,
            }
            .into()
        })
    }
}
