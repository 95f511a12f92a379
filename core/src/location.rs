//! Object-store locations: one type for every place dapt reads from or writes to.
//!
//! Accepted forms: `s3://bucket/prefix`, `gs://bucket/prefix`, `az://container/prefix` (also `abfs://`,
//! `azure://`), `http(s)://host/path`, `file:///abs/path`, and plain local paths (relative ones are made
//! absolute against the working directory). S3, GCS and Azure settings come from the usual environment
//! variables (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_REGION`, `AWS_ENDPOINT_URL`,
//! `AWS_ALLOW_HTTP`, `GOOGLE_SERVICE_ACCOUNT`, `AZURE_STORAGE_ACCOUNT_NAME`, …); a custom S3 endpoint uses
//! path-style addressing, and an `http://` endpoint is allowed without further settings. Options given
//! to [`Location::parse_with`] (object_store configuration keys such as `aws_endpoint`, `timeout`,
//! `connect_timeout`) win over the environment.
//!
//! Requests that fail with a server error (5xx) or time out are retried with exponential backoff
//! (object_store's retry: up to 10 retries within 3 minutes, backoff from 100 ms doubling to 15 s).
use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use futures::TryStreamExt;
use object_store::path::Path;
use object_store::{ObjectMeta, ObjectStore, ObjectStoreExt, PutPayload};
use url::Url;

use crate::{Error, Result};

/// A local path made absolute against the working directory, with `.` and `..` taken out: the longest
/// part of it that exists is resolved by the file system (so `link/..` is the link target's parent, as
/// the shell's `cd -P` sees it, and linked directories are listed through their targets), the rest —
/// names still to be created, glob patterns — is joined as written with `..` removing the name before it.
pub fn resolve_local(path: &std::path::Path) -> std::path::PathBuf {
    use std::path::{Component, PathBuf};
    let absolute = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    let mut out = PathBuf::new();
    let mut existing = true;
    for part in absolute.components() {
        match part {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            other => {
                out.push(other);
                if existing {
                    match std::fs::canonicalize(&out) {
                        Ok(real) => out = real,
                        Err(_) => existing = false,
                    }
                }
            }
        }
    }
    out
}

/// A store plus a prefix inside it, remembered with the URL it came from (for messages).
#[derive(Clone, Debug)]
pub struct Location {
    store: Arc<dyn ObjectStore>,
    prefix: Path,
    /// URL of the store's root, e.g. `s3://bucket` or `file://`.
    root_url: String,
}

impl Location {
    /// Parses a URL or a local path with settings from the environment. Builds the store client; does
    /// no I/O.
    pub fn parse(input: &str) -> Result<Self> {
        Self::parse_with(input, &BTreeMap::new())
    }

    /// Parses a URL or a local path; `options` are object_store configuration keys for the store
    /// (`aws_endpoint`, `aws_region`, `timeout`, `google_service_account`, …), applied over the
    /// environment. An unknown key is an error naming it.
    pub fn parse_with(input: &str, options: &BTreeMap<String, String>) -> Result<Self> {
        let invalid = |reason: String| Error::InvalidLocation {
            url: input.to_string(),
            reason,
        };
        if input.is_empty() {
            return Err(invalid("empty location".into()));
        }
        let url = match Url::parse(input) {
            Ok(url) if url.scheme().len() > 1 => url,
            // A plain path (or a Windows drive letter, which parses as a one-letter scheme).
            _ => {
                let absolute = resolve_local(std::path::Path::new(input));
                Url::from_file_path(&absolute)
                    .map_err(|()| invalid("not an absolute local path".into()))?
            }
        };
        let store_error = |source: object_store::Error| Error::ObjectStore {
            url: input.to_string(),
            source,
        };
        let (store, root_url): (Arc<dyn ObjectStore>, String) = match url.scheme() {
            "file" => (
                Arc::new(object_store::local::LocalFileSystem::new()),
                "file://".into(),
            ),
            "s3" | "s3a" => {
                let bucket = host_of(&url).ok_or_else(|| invalid("no bucket".into()))?;
                let mut builder =
                    object_store::aws::AmazonS3Builder::from_env().with_bucket_name(bucket);
                let endpoint = std::env::var("AWS_ENDPOINT_URL")
                    .or_else(|_| std::env::var("AWS_ENDPOINT"))
                    .ok();
                let endpoint = options
                    .iter()
                    .find(|(k, _)| {
                        matches!(
                            k.as_str(),
                            "aws_endpoint" | "aws_endpoint_url" | "endpoint" | "endpoint_url"
                        )
                    })
                    .map(|(_, v)| v.clone())
                    .or(endpoint);
                if let Some(endpoint) = endpoint {
                    builder = builder
                        .with_endpoint(&endpoint)
                        .with_virtual_hosted_style_request(false)
                        .with_allow_http(endpoint.starts_with("http://"));
                }
                for (key, value) in options {
                    let key = key
                        .parse::<object_store::aws::AmazonS3ConfigKey>()
                        .map_err(|e| invalid(format!("storage option {key:?}: {e}")))?;
                    builder = builder.with_config(key, value);
                }
                let store = builder.build().map_err(store_error)?;
                (Arc::new(store), format!("s3://{bucket}"))
            }
            "gs" => {
                let bucket = host_of(&url).ok_or_else(|| invalid("no bucket".into()))?;
                let mut builder = object_store::gcp::GoogleCloudStorageBuilder::from_env()
                    .with_bucket_name(bucket);
                for (key, value) in options {
                    let key = key
                        .parse::<object_store::gcp::GoogleConfigKey>()
                        .map_err(|e| invalid(format!("storage option {key:?}: {e}")))?;
                    builder = builder.with_config(key, value);
                }
                let store = builder.build().map_err(store_error)?;
                (Arc::new(store), format!("gs://{bucket}"))
            }
            "az" | "abfs" | "abfss" | "azure" => {
                let mut builder =
                    object_store::azure::MicrosoftAzureBuilder::from_env().with_url(url.as_str());
                for (key, value) in options {
                    let key = key
                        .parse::<object_store::azure::AzureConfigKey>()
                        .map_err(|e| invalid(format!("storage option {key:?}: {e}")))?;
                    builder = builder.with_config(key, value);
                }
                let store = builder.build().map_err(store_error)?;
                let container = host_of(&url).ok_or_else(|| invalid("no container".into()))?;
                (Arc::new(store), format!("{}://{container}", url.scheme()))
            }
            "http" | "https" => {
                let root = format!(
                    "{}://{}",
                    url.scheme(),
                    &url[url::Position::BeforeHost..url::Position::BeforePath]
                );
                let mut builder = object_store::http::HttpBuilder::new().with_url(&root);
                for (key, value) in options {
                    let key = key
                        .parse::<object_store::ClientConfigKey>()
                        .map_err(|e| invalid(format!("storage option {key:?}: {e}")))?;
                    builder = builder.with_config(key, value);
                }
                let store = builder.build().map_err(store_error)?;
                (Arc::new(store), root)
            }
            other => return Err(invalid(format!("unsupported scheme {other:?}"))),
        };
        let prefix = Path::from_url_path(url.path()).map_err(|source| Error::InvalidPath {
            url: input.to_string(),
            source: Box::new(source),
        })?;
        Ok(Self {
            store,
            prefix,
            root_url,
        })
    }

    /// A location in a store built elsewhere (tests use object_store's in-memory store).
    #[cfg(test)]
    pub(crate) fn from_store(store: Arc<dyn ObjectStore>, prefix: Path, root_url: &str) -> Self {
        Self {
            store,
            prefix,
            root_url: root_url.to_string(),
        }
    }

    /// The same store with another prefix.
    pub fn with_prefix(&self, prefix: Path) -> Self {
        Self {
            store: Arc::clone(&self.store),
            prefix,
            root_url: self.root_url.clone(),
        }
    }

    /// The local directory or file this location names, for `file://` locations.
    pub fn local_path(&self) -> Option<std::path::PathBuf> {
        (self.root_url == "file://").then(|| std::path::Path::new("/").join(self.prefix.as_ref()))
    }

    /// The object store client.
    pub fn store(&self) -> &Arc<dyn ObjectStore> {
        &self.store
    }

    /// The path inside the store that this location names.
    pub fn prefix(&self) -> &Path {
        &self.prefix
    }

    /// URL of the store's root (`s3://bucket`, `file://`, `https://host`).
    pub fn root_url(&self) -> &str {
        &self.root_url
    }

    /// The full URL of a path in this store, for messages and for registering with query engines.
    pub fn url_of(&self, path: &Path) -> String {
        if self.root_url == "file://" {
            format!("file:///{path}")
        } else {
            format!("{}/{path}", self.root_url)
        }
    }

    /// The URL this location stands for.
    pub fn url(&self) -> String {
        self.url_of(&self.prefix)
    }

    /// The path of `name` (which may hold `/`-separated components) below this location's prefix.
    pub fn child(&self, name: &str) -> Path {
        name.split('/')
            .filter(|part| !part.is_empty())
            .fold(self.prefix.clone(), object_store::path::Path::join)
    }

    /// Reads a whole object below this location.
    pub async fn read(&self, name: &str) -> Result<Bytes> {
        let path = self.child(name);
        let result = self
            .store
            .get(&path)
            .await
            .map_err(|e| self.error(&path, e))?;
        result.bytes().await.map_err(|e| self.error(&path, e))
    }

    /// Reads a whole object below this location, or `None` when it does not exist.
    pub async fn read_optional(&self, name: &str) -> Result<Option<Bytes>> {
        match self.read(name).await {
            Ok(bytes) => Ok(Some(bytes)),
            Err(Error::ObjectStore {
                source: object_store::Error::NotFound { .. },
                ..
            }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Writes a whole object below this location. The write is atomic: readers see the old object, no
    /// object, or all of the new one (object_store's contract for `put`).
    pub async fn write(&self, name: &str, bytes: Bytes) -> Result<()> {
        let path = self.child(name);
        self.remove_stale_staging(&path)?;
        self.store
            .put(&path, PutPayload::from(bytes))
            .await
            .map_err(|e| self.error(&path, e))?;
        Ok(())
    }

    /// The objects this location names: itself when it is an object, otherwise every object below it
    /// (recursively), sorted by path so that the order is the same on every run and store.
    pub async fn list_objects(&self) -> Result<Vec<ObjectMeta>> {
        if !self.prefix.as_ref().is_empty() {
            match self.store.head(&self.prefix).await {
                Ok(meta) => return Ok(vec![meta]),
                Err(object_store::Error::NotFound { .. }) => {}
                // Local directories answer `head` with an error of their own; listing decides.
                Err(_) => {}
            }
        }
        let mut objects: Vec<ObjectMeta> = self
            .store
            .list(Some(&self.prefix))
            .try_collect()
            .await
            .map_err(|e| self.error(&self.prefix, e))?;
        objects.sort_by(|a, b| a.location.cmp(&b.location));
        Ok(objects)
    }

    /// Deletes an object below this location; one that is not there is no error.
    pub async fn delete(&self, name: &str) -> Result<()> {
        let path = self.child(name);
        match self.store.delete(&path).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.error(&path, e)),
        }
    }

    /// Removes the staging files a killed local write of `path` left behind. object_store writes a
    /// local file as `NAME#1` (`#2`, … when that exists) and renames it into place, so a writer killed
    /// mid-write leaves `NAME#1`, which no later write removes. A writer about to write `path` owns
    /// it (outputs are locked, jobs of an array write disjoint names), so the files are stale. Other
    /// stores keep nothing that readers or listings see.
    pub fn remove_stale_staging(&self, path: &Path) -> Result<()> {
        if self.root_url != "file://" {
            return Ok(());
        }
        let file = std::path::Path::new("/").join(path.as_ref());
        for suffix in 1.. {
            let mut staged = file.clone().into_os_string();
            staged.push(format!("#{suffix}"));
            let staged = std::path::PathBuf::from(staged);
            match std::fs::remove_file(&staged) {
                Ok(()) => {
                    tracing::info!(path = %staged.display(), "removed a killed write's staging file");
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => break,
                Err(source) => {
                    return Err(Error::Io {
                        path: staged,
                        source,
                    })
                }
            }
        }
        Ok(())
    }

    /// Wraps an object-store error with the URL of the path it concerns.
    pub fn error(&self, path: &Path, source: object_store::Error) -> Error {
        Error::ObjectStore {
            url: self.url_of(path),
            source,
        }
    }
}

fn host_of(url: &Url) -> Option<&str> {
    url.host_str().filter(|h| !h.is_empty())
}

/// Expands input URLs into the objects they name, in a deterministic order. An input is an object, a
/// prefix (all objects below it), or a glob whose last path components hold `*`, `?` or `**`
/// (e.g. `s3://bucket/c4/en/*.json.gz`, `data/**/*.jsonl`). An input that names nothing is an error.
pub async fn expand_inputs(
    inputs: &[String],
    options: &BTreeMap<String, String>,
) -> Result<Vec<(Location, ObjectMeta)>> {
    let mut out = Vec::new();
    for input in inputs {
        let (base, pattern) = split_glob(input);
        let location = Location::parse_with(&base, options)?;
        let objects = location.list_objects().await?;
        let before = out.len();
        for meta in objects {
            let keep = match &pattern {
                None => true,
                Some(pattern) => {
                    let full = meta.location.as_ref();
                    let relative = full
                        .strip_prefix(location.prefix().as_ref())
                        .unwrap_or(full)
                        .trim_start_matches('/');
                    glob_match(pattern, relative)
                }
            };
            if keep {
                out.push((location.clone(), meta));
            }
        }
        if out.len() == before {
            return Err(Error::InvalidLocation {
                url: input.clone(),
                reason: "names no object".into(),
            });
        }
    }
    Ok(out)
}

/// Splits `base/dir/*.jsonl` into (`base/dir`, `*.jsonl`); inputs without wildcards have no pattern.
pub fn split_glob(input: &str) -> (String, Option<String>) {
    let Some(first) = input.find(['*', '?']) else {
        return (input.to_string(), None);
    };
    let cut = input[..first].rfind('/').map(|i| i + 1).unwrap_or(0);
    let base = input[..cut].trim_end_matches('/');
    let base = if base.is_empty() { "." } else { base };
    (base.to_string(), Some(input[cut..].to_string()))
}

/// Glob matching over `/`-separated paths: `*` and `?` stay inside one component, `**` spans several.
pub fn glob_match(pattern: &str, path: &str) -> bool {
    fn matches(p: &[u8], s: &[u8]) -> bool {
        match p.first() {
            None => s.is_empty(),
            Some(b'*') if p.get(1) == Some(&b'*') => match p[2..].strip_prefix(b"/") {
                // `**/`: zero or more whole directories.
                Some(rest) => {
                    (0..=s.len()).any(|i| (i == 0 || s[i - 1] == b'/') && matches(rest, &s[i..]))
                }
                // `**` elsewhere: anything, `/` included.
                None => (0..=s.len()).any(|i| matches(&p[2..], &s[i..])),
            },
            Some(b'*') => {
                let rest = &p[1..];
                for i in 0..=s.len() {
                    if matches(rest, &s[i..]) {
                        return true;
                    }
                    if i < s.len() && s[i] == b'/' {
                        break;
                    }
                }
                false
            }
            Some(b'?') => !s.is_empty() && s[0] != b'/' && matches(&p[1..], &s[1..]),
            Some(&c) => !s.is_empty() && s[0] == c && matches(&p[1..], &s[1..]),
        }
    }
    matches(pattern.as_bytes(), path.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// #18.5: a killed local write leaves `NAME#1`; the next write of NAME removes it (and only it).
    #[tokio::test]
    async fn a_write_removes_the_staging_files_of_a_killed_write() {
        let dir = tempfile::tempdir().unwrap();
        for name in [
            "part-0.parquet#1",
            "part-0.parquet#2",
            "part-1.parquet#1",
            "keep#notes",
        ] {
            std::fs::write(dir.path().join(name), b"half").unwrap();
        }
        let location = Location::parse(dir.path().to_str().unwrap()).unwrap();
        location
            .write("part-0.parquet", Bytes::from_static(b"whole"))
            .await
            .unwrap();
        let mut left: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
            .collect();
        left.sort();
        assert_eq!(left, ["keep#notes", "part-0.parquet", "part-1.parquet#1"]);
        assert_eq!(
            std::fs::read(dir.path().join("part-0.parquet")).unwrap(),
            b"whole"
        );
    }

    #[test]
    fn globs() {
        assert!(glob_match("*.jsonl", "a.jsonl"));
        assert!(!glob_match("*.jsonl", "d/a.jsonl"));
        assert!(glob_match("**/*.jsonl", "d/e/a.jsonl"));
        assert!(glob_match("**/*.jsonl", "a.jsonl"));
        assert!(glob_match("part-?.parquet", "part-1.parquet"));
        assert!(!glob_match("part-?.parquet", "part-12.parquet"));
        assert!(glob_match("en/**", "en/x/y.json.gz"));
    }

    #[test]
    fn split() {
        assert_eq!(
            split_glob("s3://b/c4/*.json.gz"),
            ("s3://b/c4".into(), Some("*.json.gz".into()))
        );
        assert_eq!(split_glob("data/x.jsonl"), ("data/x.jsonl".into(), None));
        assert_eq!(split_glob("*.jsonl"), (".".into(), Some("*.jsonl".into())));
    }

    #[test]
    fn parse_forms() {
        let s3 = Location::parse("s3://bucket/a/b").unwrap();
        assert_eq!(s3.url(), "s3://bucket/a/b");
        let local = Location::parse("/tmp/x/y").unwrap();
        assert_eq!(local.url(), "file:///tmp/x/y");
        let file = Location::parse("file:///tmp/x").unwrap();
        assert_eq!(file.prefix().as_ref(), "tmp/x");
        assert!(Location::parse("ftp://host/x").is_err());
        let options = BTreeMap::from([("no_such_key".to_string(), "1".to_string())]);
        let err = Location::parse_with("s3://b/x", &options)
            .unwrap_err()
            .to_string();
        assert!(err.contains("no_such_key"), "{err}");
        assert!(Location::parse("").is_err());
    }

    #[test]
    fn local_paths_lose_dots_and_follow_links() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().canonicalize().unwrap();
        std::fs::create_dir_all(real.join("data/en")).unwrap();
        std::fs::create_dir_all(real.join("elsewhere/inner")).unwrap();
        std::os::unix::fs::symlink(real.join("elsewhere/inner"), real.join("data/link")).unwrap();

        let p = |s: &str| resolve_local(&real.join(s));
        assert_eq!(p("data/en/../en/./x.jsonl"), real.join("data/en/x.jsonl"));
        // Through an existing link, `..` is the target's parent (as `cd -P` sees it).
        assert_eq!(p("data/link/../y"), real.join("elsewhere/y"));
        // Names still to be created and glob patterns are kept as written, `..` still applied.
        assert_eq!(p("out/new/../run/*.jsonl"), real.join("out/run/*.jsonl"));
        assert_eq!(
            resolve_local(std::path::Path::new("/../../x")),
            std::path::PathBuf::from("/x")
        );

        // A location with `..` in it works where object_store's paths refuse the sequence.
        let parsed = Location::parse(real.join("data/en/../en").to_str().unwrap()).unwrap();
        assert_eq!(
            parsed.url(),
            format!("file://{}", real.join("data/en").display())
        );
    }

    #[tokio::test]
    async fn local_write_read_list_and_expand() {
        let dir = tempfile::tempdir().unwrap();
        let root = Location::parse(dir.path().to_str().unwrap()).unwrap();
        root.write("a/one.jsonl", Bytes::from_static(b"1"))
            .await
            .unwrap();
        root.write("a/two.jsonl", Bytes::from_static(b"22"))
            .await
            .unwrap();
        root.write("a/skip.txt", Bytes::from_static(b"3"))
            .await
            .unwrap();
        assert_eq!(&root.read("a/two.jsonl").await.unwrap()[..], b"22");
        assert!(root.read_optional("nope").await.unwrap().is_none());

        let all = root.list_objects().await.unwrap();
        assert_eq!(all.len(), 3);
        let pattern = format!("{}/a/*.jsonl", dir.path().display());
        let found = expand_inputs(&[pattern], &BTreeMap::new()).await.unwrap();
        let names: Vec<_> = found
            .iter()
            .map(|(_, m)| m.location.filename().unwrap().to_string())
            .collect();
        assert_eq!(names, ["one.jsonl", "two.jsonl"]);
        let single = format!("{}/a/one.jsonl", dir.path().display());
        assert_eq!(
            expand_inputs(&[single], &BTreeMap::new())
                .await
                .unwrap()
                .len(),
            1
        );
        let dotted = format!("{}/a/../a/./*.jsonl", dir.path().display());
        assert_eq!(
            expand_inputs(&[dotted], &BTreeMap::new())
                .await
                .unwrap()
                .len(),
            2
        );
        let missing = format!("{}/a/*.parquet", dir.path().display());
        let err = expand_inputs(&[missing], &BTreeMap::new())
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("names no object"), "{err}");
    }
}
