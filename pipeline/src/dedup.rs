//! Deduplication as a job: the rows of a query compared exactly or by MinHash, the duplicates written
//! as one Parquet table `(id, cluster_id, kept)` that mixes join against.
use std::collections::BTreeMap;

use dapt_core::Location;
use dapt_mixer::{Duplicate, NearOptions};
use dapt_sql::{SourcesOptions, SqlSession};

use crate::error::{setting, Error, Result};

/// What [`dedup`] compares and where the table goes.
#[derive(Clone, Debug)]
pub struct DedupSettings {
    /// Read-only SQL whose rows are compared.
    pub query: String,
    /// The tables the query reads.
    pub sources: SourcesOptions,
    /// Column with the stable key; the smallest key of a cluster is kept.
    pub key: String,
    /// Column with the text.
    pub text: String,
    /// MinHash near-duplicate settings; `None`: exact duplicates of the normalised text.
    pub near: Option<NearOptions>,
    /// URL of the Parquet file written (e.g. `s3://bucket/dedup/duplicates.parquet`).
    pub out: String,
}

/// What [`dedup`] found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DedupSummary {
    /// Documents that belong to a cluster of duplicates.
    pub documents: usize,
    /// Clusters (one kept document each).
    pub clusters: usize,
}

impl DedupSummary {
    /// Documents to drop (every clustered document but the kept one of each cluster).
    pub fn to_drop(&self) -> usize {
        self.documents - self.clusters
    }
}

/// Runs the query, finds its duplicates and writes them, with the query (and near-duplicate
/// settings) in the file's key-value metadata.
pub async fn dedup(settings: &DedupSettings) -> Result<DedupSummary> {
    let Some((parent, name)) = settings.out.trim_end_matches('/').rsplit_once('/') else {
        return Err(setting(
            "--out",
            format!(
                "{}: expected a file URL such as s3://bucket/dedup/duplicates.parquet",
                settings.out
            ),
        ));
    };
    let location = Location::parse_with(parent, &settings.sources.storage)?;
    let session = SqlSession::over_sources(&settings.sources, None).await?;
    let stream = session.query(&settings.query).await?;
    let input = stream;
    let duplicates = match &settings.near {
        None => dapt_mixer::exact_duplicates(input, &settings.key, &settings.text).await?,
        Some(options) => {
            dapt_mixer::near_duplicates(input, &settings.key, &settings.text, options).await?
        }
    };
    let clusters = duplicates.iter().filter(|d| d.kept).count();
    let batch = Duplicate::to_batch(&duplicates)?;
    let mut metadata = BTreeMap::new();
    metadata.insert("dapt.query".to_string(), settings.query.clone());
    if let Some(options) = &settings.near {
        let json = serde_json::to_string(options).map_err(|source| Error::Json {
            what: "the near-duplicate settings".into(),
            source,
        })?;
        metadata.insert("dapt.near_options".to_string(), json);
    }
    let bytes = dapt_core::parquet_io::encode(batch.schema(), &[batch], &metadata, &settings.out)?;
    location.write(name, bytes).await?;
    Ok(DedupSummary {
        documents: duplicates.len(),
        clusters,
    })
}
