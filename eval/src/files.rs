//! Reading task and text files: the text (gunzipped for `.gz`), JSON lines with their line numbers,
//! and errors that name the file and line.
use std::io::Read;
use std::path::Path;

use serde_json::Value;

use crate::{Error, Result};

/// An error about `path` at line or row `row` (0: the file as a whole).
pub(crate) fn row_error(path: &Path, row: usize, reason: impl Into<String>) -> Error {
    Error::File {
        path: if row == 0 {
            path.display().to_string()
        } else {
            format!("{}:{row}", path.display())
        },
        reason: reason.into(),
    }
}

/// A file's text, gunzipped when its name ends in `.gz`.
pub(crate) fn read_text(path: &Path) -> Result<String> {
    let io = |source| Error::Io {
        path: path.to_path_buf(),
        source,
    };
    let bytes = std::fs::read(path).map_err(io)?;
    if path.extension().is_some_and(|e| e == "gz") {
        let mut text = String::new();
        flate2::read::GzDecoder::new(&bytes[..])
            .read_to_string(&mut text)
            .map_err(io)?;
        Ok(text)
    } else {
        String::from_utf8(bytes).map_err(|e| row_error(path, 0, format!("not UTF-8: {e}")))
    }
}

/// The JSON values of the non-empty lines of a JSONL text, with their line numbers (from 1).
pub(crate) fn jsonl_rows(path: &Path, text: &str) -> Result<Vec<(usize, Value)>> {
    let mut rows = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let value: Value = serde_json::from_str(line).map_err(|source| Error::Json {
            what: format!("{}:{}", path.display(), i + 1),
            source,
        })?;
        rows.push((i + 1, value));
    }
    Ok(rows)
}
