//! JSON lines under their usual extensions (`.jsonl`, `.ndjson`) for tables named by a file path in
//! SQL (`SELECT … FROM 'data/part-0.jsonl'`): DataFusion knows JSON lines only as `.json`.
use std::collections::HashMap;
use std::sync::Arc;

use datafusion::catalog::Session;
use datafusion::common::GetExt;
use datafusion::datasource::file_format::json::JsonFormatFactory;
use datafusion::datasource::file_format::{FileFormat, FileFormatFactory};
use datafusion::error::Result;
use datafusion::prelude::SessionContext;

/// DataFusion's JSON (newline-delimited) format under another extension.
#[derive(Debug)]
struct JsonLinesFormatFactory {
    extension: &'static str,
    json: JsonFormatFactory,
}

impl GetExt for JsonLinesFormatFactory {
    fn get_ext(&self) -> String {
        self.extension.to_string()
    }
}

impl FileFormatFactory for JsonLinesFormatFactory {
    fn create(
        &self,
        state: &dyn Session,
        format_options: &HashMap<String, String>,
    ) -> Result<Arc<dyn FileFormat>> {
        self.json.create(state, format_options)
    }

    fn default(&self) -> Arc<dyn FileFormat> {
        self.json.default()
    }
}

/// Lets file-path tables with the `.jsonl` and `.ndjson` extensions read as JSON lines.
pub(crate) fn register(context: &SessionContext) -> Result<()> {
    let state = context.state_ref();
    let mut state = state.write();
    for extension in ["jsonl", "ndjson"] {
        state.register_file_format(
            Arc::new(JsonLinesFormatFactory {
                extension,
                json: JsonFormatFactory::new(),
            }),
            false,
        )?;
    }
    Ok(())
}
