//! The identity of an output: the content hash of the settings and inputs that produced it. An output
//! directory's manifest records it; a rerun with the same identity reuses the output, one with another
//! identity is refused (see `dapt_core::OutputDir::open`).
use serde::Serialize;

use crate::{Error, Result};

/// sha256 (hex) of the JSON serialisation of `value`; `what` names it in the error when it cannot be
/// serialised (a map with non-string keys, a float that is not finite).
pub fn identity(what: &str, value: &impl Serialize) -> Result<String> {
    let json = serde_json::to_vec(value).map_err(|source| Error::Identity {
        what: what.to_string(),
        source,
    })?;
    Ok(dapt_core::hash::sha256_hex(&json))
}

/// Files as resolved now: URL and size of each, in listing order.
pub type ResolvedFiles = Vec<(String, u64)>;

/// The data the tables of a sources file read, as resolved now: each source's files (URL and size),
/// by source name. Part of the identity of what reads them, so that an output is bound to the files it
/// came from, not only to the URLs that named them. Call it outside an async runtime.
pub fn sources_data(sources: &dapt_sql::SourcesOptions) -> Result<Vec<(String, ResolvedFiles)>> {
    let runtime = crate::runtime()?;
    sources
        .sources
        .iter()
        .map(|(name, source)| {
            let objects = runtime.block_on(dapt_core::location::expand_inputs(
                std::slice::from_ref(&source.url),
                &sources.storage,
            ))?;
            let files = objects
                .iter()
                .map(|(location, meta)| (location.url_of(&meta.location), meta.size))
                .collect();
            Ok((name.clone(), files))
        })
        .collect()
}

/// sha256 (hex) of a file's bytes, streamed; an unreadable file is an error naming it.
pub fn file_identity(path: &std::path::Path) -> Result<String> {
    let file = std::fs::File::open(path).map_err(crate::error::io_error(path))?;
    dapt_core::hash::sha256_reader(std::io::BufReader::new(file))
        .map_err(crate::error::io_error(path))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn identity_changes_with_the_value_and_names_what_cannot_be_hashed() {
        let a = identity("a", &("query", 1u64)).unwrap();
        assert_eq!(a, identity("a", &("query", 1u64)).unwrap());
        assert_ne!(a, identity("a", &("query", 2u64)).unwrap());
        let mut bad = BTreeMap::new();
        bad.insert((1, 2), 3);
        let err = identity("the pack settings", &bad).unwrap_err().to_string();
        assert!(err.contains("the pack settings"), "{err}");
    }
}
