//! Deduplication as a job: the rows of a query compared exactly or by MinHash, the duplicates written
//! as one Parquet table `(id, cluster_id, kept)` that mixes join against.
use std::collections::BTreeMap;

use dapt_core::Location;
use dapt_mixer::{Duplicate, NearOptions};
use dapt_sql::{SourcesOptions, SqlSession};

use crate::error::{setting, Error, Result};
use crate::work::{job_status, read_done, settle};

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
    // The output's place is checked before the work.
    split_out(&settings.out)?;
    let session = SqlSession::over_sources(&settings.sources, None).await?;
    let input = session.query(&settings.query).await?;
    let duplicates = match &settings.near {
        None => dapt_mixer::exact_duplicates(input, &settings.key, &settings.text).await?,
        Some(options) => {
            dapt_mixer::near_duplicates(input, &settings.key, &settings.text, options).await?
        }
    };
    write_duplicates(
        &settings.query,
        settings.near.as_ref(),
        &settings.out,
        &settings.sources.storage,
        &duplicates,
    )
    .await
}

/// `out` as its parent location's URL and the file's name.
fn split_out(out: &str) -> Result<(&str, &str)> {
    out.trim_end_matches('/').rsplit_once('/').ok_or_else(|| {
        setting(
            "--out",
            format!("{out}: expected a file URL such as s3://bucket/dedup/duplicates.parquet"),
        )
    })
}

/// Writes the duplicates table to `out` with the query (and near-duplicate settings) in the file's
/// key-value metadata.
async fn write_duplicates(
    query: &str,
    near: Option<&NearOptions>,
    out: &str,
    storage: &BTreeMap<String, String>,
    duplicates: &[Duplicate],
) -> Result<DedupSummary> {
    let (parent, name) = split_out(out)?;
    let location = Location::parse_with(parent, storage)?;
    let clusters = duplicates.iter().filter(|d| d.kept).count();
    let batch = Duplicate::to_batch(duplicates)?;
    let mut metadata = BTreeMap::new();
    metadata.insert("dapt.query".to_string(), query.to_string());
    if let Some(options) = near {
        let json = serde_json::to_string(options).map_err(|source| Error::Json {
            what: "the near-duplicate settings".into(),
            source,
        })?;
        metadata.insert("dapt.near_options".to_string(), json);
    }
    let bytes = dapt_core::parquet_io::encode(batch.schema(), &[batch], &metadata, out)?;
    location.write(name, bytes).await?;
    Ok(DedupSummary {
        documents: duplicates.len(),
        clusters,
    })
}

// ---------------------------------------------------------------------------------------------
// Near dedup as an array of processes: signatures per shard → band records partitioned by bucket →
// links per partition → clusters. The result equals `dedup` with `near` for any shard and partition
// counts (both apply `dapt_mixer::link_bucket` to the same buckets).

/// Settings every stage of a sharded near dedup shares; the first shard writes them to
/// `WORK/_settings.json` and every later stage checks that it works for the same ones.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NearWork {
    /// Read-only SQL whose rows are compared.
    pub query: String,
    /// Column with the stable (unique) key.
    pub key: String,
    /// Column with the text.
    pub text: String,
    /// MinHash/LSH settings.
    pub near: NearOptions,
    /// Signature shards (jobs of the first array).
    pub shards: usize,
    /// Bucket partitions (jobs of the second array).
    pub partitions: usize,
}

const WORK_SETTINGS: &str = "_settings.json";

fn signatures_name(shard: usize, shards: usize) -> String {
    format!("signatures/{shard:05}-of-{shards:05}.bin")
}

fn bands_name(partition: usize, partitions: usize, shard: usize, shards: usize) -> String {
    format!("bands/{partition:05}-of-{partitions:05}/{shard:05}-of-{shards:05}.bin")
}

fn links_name(partition: usize, partitions: usize) -> String {
    format!("links/{partition:05}-of-{partitions:05}.bin")
}

/// What one job of a stage did (its completion record, `WORK/_done/STAGE-I-of-N.json`).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct NearJobRecord {
    /// `signatures`, `links` or `clusters`.
    pub stage: String,
    /// This job's index.
    pub index: usize,
    /// Jobs of the stage.
    pub count: usize,
    /// Documents signed (`signatures`), band records read (`links`), clustered documents
    /// (`clusters`).
    pub items: u64,
    /// Candidate pairs verified (`links`), links written (`links`), clusters (`clusters`).
    pub pairs: u64,
    /// Whether an earlier run had done it (nothing was redone).
    #[serde(skip)]
    pub reused: bool,
}

fn open_work(work: &str, storage: &BTreeMap<String, String>) -> Result<Location> {
    Ok(Location::parse_with(work.trim_end_matches('/'), storage)?)
}

fn json_bytes(what: &str, value: &impl serde::Serialize) -> Result<bytes::Bytes> {
    serde_json::to_vec_pretty(value)
        .map(bytes::Bytes::from)
        .map_err(|source| Error::Json {
            what: what.into(),
            source,
        })
}

fn parse_json<T: serde::de::DeserializeOwned>(what: &str, bytes: &[u8]) -> Result<T> {
    serde_json::from_slice(bytes).map_err(|source| Error::Json {
        what: what.into(),
        source,
    })
}

/// The work directory's settings, which a stage needs to exist.
async fn read_work(location: &Location) -> Result<NearWork> {
    let bytes = location
        .read_optional(WORK_SETTINGS)
        .await?
        .ok_or_else(|| Error::Data {
            what: location.url(),
            reason: format!(
                "no {WORK_SETTINGS}: run `dapt dedup near-signatures --work {}` first",
                location.url()
            ),
        })?;
    parse_json(&location.url_of(&location.child(WORK_SETTINGS)), &bytes)
}

/// Fails, naming the indices, unless every one of the `count` jobs of `stage` has its completion
/// record; `jobs` and `flag` say them in the message (`signature jobs … --shard I/N`).
async fn require_done(
    location: &Location,
    stage: &str,
    count: usize,
    jobs: &str,
    flag: &str,
) -> Result<()> {
    let mut absent = Vec::new();
    for index in 0..count {
        if read_done::<NearJobRecord>(location, stage, index, count)
            .await?
            .is_none()
        {
            absent.push(index);
        }
    }
    if absent.is_empty() {
        return Ok(());
    }
    Err(Error::Data {
        what: location.url(),
        reason: format!(
            "{jobs} jobs {absent:?} of {count} have not finished (rerun them with {flag} I/{count})"
        ),
    })
}

/// An intermediate file of the work directory and its URL (for messages).
async fn read_intermediate(location: &Location, name: &str) -> Result<(bytes::Bytes, String)> {
    let bytes = location.read(name).await?;
    Ok((bytes, location.url_of(&location.child(name))))
}

fn put_u32(out: &mut Vec<u8>, value: u32) {
    out.extend_from_slice(&value.to_le_bytes());
}

fn put_key(out: &mut Vec<u8>, key: &str) {
    put_u32(out, key.len() as u32);
    out.extend_from_slice(key.as_bytes());
}

/// Reads the little-endian records of an intermediate file, naming the file when it is cut short.
struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
    what: &'a str,
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8]> {
        let end = self.at + n;
        if end > self.bytes.len() {
            return Err(Error::Data {
                what: self.what.into(),
                reason: format!("cut short at byte {} (a record needs {n} more)", self.at),
            });
        }
        let slice = &self.bytes[self.at..end];
        self.at = end;
        Ok(slice)
    }

    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(
            self.take(4)?.try_into().unwrap_or_default(),
        ))
    }

    fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(
            self.take(8)?.try_into().unwrap_or_default(),
        ))
    }

    fn key(&mut self) -> Result<String> {
        let n = self.u32()? as usize;
        let what = self.what;
        String::from_utf8(self.take(n)?.to_vec()).map_err(|_| Error::Data {
            what: what.into(),
            reason: "a key is not UTF-8".into(),
        })
    }

    fn done(&self) -> bool {
        self.at >= self.bytes.len()
    }
}

/// Signature job `job` of a sharded near dedup: runs the query, keeps the rows whose key hashes to
/// this shard (`xxh3(key) % shards`), and writes their MinHash signatures (in key order) and, per
/// bucket partition, their LSH band records. The first job records `near` in `WORK/_settings.json`;
/// a job whose completion record exists does nothing. Memory holds this shard's keys (signatures and
/// band records go through local temporary files, uploaded streamed).
pub async fn near_signatures(
    settings: &DedupSettings,
    work: &str,
    shard: dapt_ingest::Job,
    partitions: usize,
) -> Result<NearJobRecord> {
    let near = settings
        .near
        .clone()
        .ok_or_else(|| setting("near", "sharded dedup is for near duplicates"))?;
    near.validate()?;
    if partitions == 0 {
        return Err(setting("--partitions", "must be at least 1"));
    }
    let location = open_work(work, &settings.sources.storage)?;
    let wanted = NearWork {
        query: settings.query.clone(),
        key: settings.key.clone(),
        text: settings.text.clone(),
        near,
        shards: shard.count,
        partitions,
    };
    match location.read_optional(WORK_SETTINGS).await? {
        None => {
            location
                .write(WORK_SETTINGS, json_bytes(WORK_SETTINGS, &wanted)?)
                .await?;
        }
        Some(bytes) => {
            let found: NearWork = parse_json(WORK_SETTINGS, &bytes)?;
            if found != wanted {
                return Err(Error::Data {
                    what: location.url(),
                    reason: format!(
                        "holds a near dedup of other settings ({}); use another --work or remove it",
                        String::from_utf8_lossy(&bytes).split_whitespace().collect::<Vec<_>>().join(" ")
                    ),
                });
            }
        }
    }
    let (mut record, reused) = crate::work::once(
        &location,
        "signatures",
        shard.index,
        shard.count,
        sign_shard(settings, &wanted, &location, shard),
    )
    .await?;
    record.reused = reused;
    Ok(record)
}

async fn sign_shard(
    settings: &DedupSettings,
    wanted: &NearWork,
    location: &Location,
    shard: dapt_ingest::Job,
) -> Result<NearJobRecord> {
    let partitions = wanted.partitions;
    let options = &wanted.near;
    let num_perm = options.bands * options.rows;
    let hasher = dapt_sql::functions::minhash::MinHasher::new(options.k, num_perm, options.seed);
    let session = SqlSession::over_sources(&settings.sources, None).await?;
    let mut stream = session
        .query(&shard.restrict(&settings.query, &settings.key))
        .await?;
    // Signatures go to a local spill as they come (memory holds the keys); then, in key order, to
    // the shard's signature file and its band records to one local file per partition; each file is
    // uploaded streamed.
    let spill_error = |path: &std::path::Path| crate::error::io_error(path.to_path_buf());
    let spill_dir = tempfile::tempdir().map_err(spill_error(&std::env::temp_dir()))?;
    let spill_path = spill_dir.path().join("signatures.spill");
    let mut spill = std::io::BufWriter::new(
        std::fs::File::create(&spill_path).map_err(spill_error(&spill_path))?,
    );
    let mut keys: Vec<(String, u32)> = Vec::new();
    use futures::StreamExt;
    use rayon::prelude::*;
    use std::io::Write;
    while let Some(batch) = stream.next().await {
        let batch = batch.map_err(|source| dapt_sql::Error::DataFusion {
            what: format!("running the query {:?}", settings.query.trim()),
            source,
        })?;
        let (ids, texts) = dapt_mixer::key_text_columns(&batch, &settings.key, &settings.text)?;
        let mine: Vec<(String, String)> = ids
            .into_iter()
            .zip(texts)
            .filter_map(|(k, t)| Some((k?, t?)))
            .filter(|(k, _)| shard.takes(k))
            .collect();
        let signatures: Vec<Vec<u64>> = mine.par_iter().map(|(_, t)| hasher.signature(t)).collect();
        for ((key, _), signature) in mine.into_iter().zip(signatures) {
            for value in signature {
                spill
                    .write_all(&value.to_le_bytes())
                    .map_err(spill_error(&spill_path))?;
            }
            let ordinal = u32::try_from(keys.len()).map_err(|_| {
                setting(
                    "--shard",
                    "a shard holds at most 2^32 documents; use more shards",
                )
            })?;
            keys.push((key, ordinal));
        }
    }
    spill.flush().map_err(spill_error(&spill_path))?;
    drop(spill);
    keys.sort_unstable();
    if let Some(pair) = keys.windows(2).find(|pair| pair[0].0 == pair[1].0) {
        return Err(setting(
            &settings.key,
            format!("the key {:?} is not unique", pair[0].0),
        ));
    }
    let spilled = std::fs::File::open(&spill_path).map_err(spill_error(&spill_path))?;
    let signatures_path = spill_dir.path().join("signatures.bin");
    let mut signatures = std::io::BufWriter::new(
        std::fs::File::create(&signatures_path).map_err(spill_error(&signatures_path))?,
    );
    let band_paths: Vec<std::path::PathBuf> = (0..partitions)
        .map(|p| spill_dir.path().join(format!("bands-{p}.bin")))
        .collect();
    let mut bands = band_paths
        .iter()
        .map(|path| {
            std::fs::File::create(path)
                .map(std::io::BufWriter::new)
                .map_err(spill_error(path))
        })
        .collect::<Result<Vec<_>>>()?;
    let signature_bytes = num_perm * 8;
    let band_bytes = options.rows * 8;
    let mut signature = vec![0u8; signature_bytes];
    let mut record = Vec::new();
    for (row, (key, ordinal)) in keys.iter().enumerate() {
        std::os::unix::fs::FileExt::read_exact_at(
            &spilled,
            &mut signature,
            u64::from(*ordinal) * signature_bytes as u64,
        )
        .map_err(spill_error(&spill_path))?;
        signatures
            .write_all(&signature)
            .map_err(spill_error(&signatures_path))?;
        for band in 0..options.bands {
            let slice = &signature[band * band_bytes..(band + 1) * band_bytes];
            let bucket = dapt_mixer::band_bucket(slice, band);
            let partition = (bucket % partitions as u64) as usize;
            record.clear();
            record.extend_from_slice(&bucket.to_le_bytes());
            put_u32(&mut record, band as u32);
            put_u32(&mut record, row as u32);
            put_key(&mut record, key);
            bands[partition]
                .write_all(&record)
                .map_err(spill_error(&band_paths[partition]))?;
        }
    }
    signatures.flush().map_err(spill_error(&signatures_path))?;
    drop(signatures);
    upload(
        location,
        &signatures_name(shard.index, shard.count),
        &signatures_path,
    )
    .await?;
    for (partition, (mut writer, path)) in bands.into_iter().zip(&band_paths).enumerate() {
        writer.flush().map_err(spill_error(path))?;
        drop(writer);
        upload(
            location,
            &bands_name(partition, partitions, shard.index, shard.count),
            path,
        )
        .await?;
    }
    let rows = keys;
    let record = NearJobRecord {
        stage: "signatures".into(),
        index: shard.index,
        count: shard.count,
        items: rows.len() as u64,
        pairs: 0,
        reused: false,
    };
    Ok(record)
}

/// Uploads the local file `file` as the object `name` below `location`, streamed (object_store's
/// buffered writer: one put for a small file, a multipart upload for a large one; the object appears
/// whole or not at all).
async fn upload(location: &Location, name: &str, file: &std::path::Path) -> Result<()> {
    use tokio::io::AsyncWriteExt;
    let path = location.child(name);
    location.remove_stale_staging(&path)?;
    let mut writer = object_store::buffered::BufWriter::new(location.store().clone(), path.clone());
    let mut input = tokio::fs::File::open(file)
        .await
        .map_err(crate::error::io_error(file.to_path_buf()))?;
    let failed = |source: std::io::Error| Error::Io {
        path: std::path::PathBuf::from(location.url_of(&path)),
        source,
    };
    tokio::io::copy(&mut input, &mut writer)
        .await
        .map_err(failed)?;
    writer.shutdown().await.map_err(failed)?;
    Ok(())
}

/// Link job `partition` of a sharded near dedup: reads every shard's band records of this partition,
/// groups them into LSH buckets, verifies candidates by their signatures (fetched by range from the
/// shards' signature files) and writes the links (key pairs). Needs every signature job done.
/// Memory holds this partition's band records and the signatures of its candidates.
pub async fn near_links(
    work: &str,
    storage: &BTreeMap<String, String>,
    partition: dapt_ingest::Job,
) -> Result<NearJobRecord> {
    let location = open_work(work, storage)?;
    let settings = read_work(&location).await?;
    if partition.count != settings.partitions {
        return Err(setting(
            "--partition",
            format!(
                "{}/{}, but the signature jobs wrote {} partitions",
                partition.index, partition.count, settings.partitions
            ),
        ));
    }
    let (mut record, reused) = crate::work::once(
        &location,
        "links",
        partition.index,
        partition.count,
        link_partition(&location, &settings, partition),
    )
    .await?;
    record.reused = reused;
    Ok(record)
}

async fn link_partition(
    location: &Location,
    settings: &NearWork,
    partition: dapt_ingest::Job,
) -> Result<NearJobRecord> {
    require_done(
        location,
        "signatures",
        settings.shards,
        "signature",
        "--shard",
    )
    .await?;
    // (band, bucket, key, shard, row)
    let mut records: Vec<(u32, u64, String, u32, u32)> = Vec::new();
    for shard in 0..settings.shards {
        let name = bands_name(partition.index, partition.count, shard, settings.shards);
        let (bytes, what) = read_intermediate(location, &name).await?;
        let mut reader = Reader {
            bytes: &bytes,
            at: 0,
            what: &what,
        };
        while !reader.done() {
            let bucket = reader.u64()?;
            let band = reader.u32()?;
            let row = reader.u32()?;
            let key = reader.key()?;
            records.push((band, bucket, key, shard as u32, row));
        }
    }
    let items = records.len() as u64;
    records.sort_unstable_by(|a, b| (a.0, a.1, &a.2).cmp(&(b.0, b.1, &b.2)));
    // Buckets of two or more: the candidates, whose signatures are fetched once each.
    let mut groups: Vec<std::ops::Range<usize>> = Vec::new();
    let mut start = 0;
    while start < records.len() {
        let mut end = start + 1;
        while end < records.len()
            && (records[end].0, records[end].1) == (records[start].0, records[start].1)
        {
            end += 1;
        }
        if end - start > 1 {
            groups.push(start..end);
        }
        start = end;
    }
    let signature_bytes = settings.near.bands * settings.near.rows * 8;
    let mut wanted: BTreeMap<u32, std::collections::BTreeSet<u32>> = BTreeMap::new();
    for group in &groups {
        for record in &records[group.clone()] {
            wanted.entry(record.3).or_default().insert(record.4);
        }
    }
    let mut signatures: std::collections::HashMap<(u32, u32), Vec<u64>> = Default::default();
    for (shard, rows) in wanted {
        let path = location.child(&signatures_name(shard as usize, settings.shards));
        let ranges: Vec<std::ops::Range<u64>> = rows
            .iter()
            .map(|&r| {
                let (r, size) = (u64::from(r), signature_bytes as u64);
                r * size..(r + 1) * size
            })
            .collect();
        let parts = location
            .store()
            .get_ranges(&path, &ranges)
            .await
            .map_err(|e| location.error(&path, e))?;
        for (&row, bytes) in rows.iter().zip(parts) {
            if bytes.len() != signature_bytes {
                return Err(Error::Data {
                    what: location.url_of(&path),
                    reason: format!("row {row} is cut short"),
                });
            }
            let values = bytes
                .chunks_exact(8)
                .map(|c| u64::from_le_bytes(c.try_into().unwrap_or_default()))
                .collect();
            signatures.insert((shard, row), values);
        }
    }
    // Documents as (shard, row); a pair verified once.
    type Doc = (u32, u32);
    let mut verified: std::collections::HashMap<(Doc, Doc), bool> = Default::default();
    let mut links: Vec<(String, String)> = Vec::new();
    for group in &groups {
        let members = &records[group.clone()];
        if let Some(pair) = members.windows(2).find(|p| p[0].2 == p[1].2) {
            return Err(setting(
                &settings.key,
                format!("the key {:?} is not unique", pair[0].2),
            ));
        }
        let found = dapt_mixer::link_bucket(members.len(), |earlier, later| {
            let (a, b) = (
                (members[earlier].3, members[earlier].4),
                (members[later].3, members[later].4),
            );
            let pair = (a.min(b), a.max(b));
            if let Some(&d) = verified.get(&pair) {
                return Ok(d);
            }
            let similarity =
                dapt_sql::functions::minhash::estimated_jaccard(&signatures[&a], &signatures[&b]);
            let d = similarity >= settings.near.threshold;
            verified.insert(pair, d);
            Ok(d)
        })?;
        for (earlier, later) in found {
            links.push((members[earlier].2.clone(), members[later].2.clone()));
        }
    }
    links.sort_unstable();
    links.dedup();
    let mut bytes = Vec::new();
    for (a, b) in &links {
        put_key(&mut bytes, a);
        put_key(&mut bytes, b);
    }
    location
        .write(&links_name(partition.index, partition.count), bytes.into())
        .await?;
    let record = NearJobRecord {
        stage: "links".into(),
        index: partition.index,
        count: partition.count,
        items,
        pairs: links.len() as u64,
        reused: false,
    };
    Ok(record)
}

/// The last step of a sharded near dedup: the links of every partition joined into clusters and
/// written to `out` as the same table (and the same bytes) as [`dedup`] writes for the query. Needs
/// every link job done. Memory holds the linked keys and their links (reported per document).
pub async fn near_clusters(
    work: &str,
    storage: &BTreeMap<String, String>,
    out: &str,
) -> Result<DedupSummary> {
    let location = open_work(work, storage)?;
    let settings = read_work(&location).await?;
    require_done(
        &location,
        "links",
        settings.partitions,
        "link",
        "--partition",
    )
    .await?;
    let mut links: Vec<(String, String)> = Vec::new();
    let mut link_bytes = 0usize;
    for partition in 0..settings.partitions {
        let (bytes, what) =
            read_intermediate(&location, &links_name(partition, settings.partitions)).await?;
        link_bytes += bytes.len();
        let mut reader = Reader {
            bytes: &bytes,
            at: 0,
            what: &what,
        };
        while !reader.done() {
            let a = reader.key()?;
            let b = reader.key()?;
            links.push((a, b));
        }
    }
    let duplicates = dapt_mixer::clusters_of_links(&links);
    tracing::info!(
        links = links.len(),
        documents = duplicates.len(),
        bytes_per_document = link_bytes as f64 / duplicates.len().max(1) as f64,
        "near clusters"
    );
    let result = write_duplicates(
        &settings.query,
        Some(&settings.near),
        out,
        storage,
        &duplicates,
    )
    .await
    .map(|summary| NearJobRecord {
        stage: "clusters".into(),
        index: 0,
        count: 1,
        items: summary.documents as u64,
        pairs: summary.clusters as u64,
        reused: false,
    });
    let record = settle(&location, "clusters", 0, 1, result).await?;
    Ok(DedupSummary {
        documents: record.items as usize,
        clusters: record.pairs as usize,
    })
}

/// Where one job of a sharded near dedup stands.
pub type NearJobStatus = crate::work::JobStatus<NearJobRecord>;

/// Every job of the sharded near dedup whose work directory is `location`, step by step; `None` when
/// it holds none.
pub async fn near_status(location: &Location) -> Result<Option<(NearWork, Vec<NearJobStatus>)>> {
    if location.read_optional(WORK_SETTINGS).await?.is_none() {
        return Ok(None);
    }
    let settings = read_work(location).await?;
    let mut jobs = Vec::new();
    for (step, count) in [
        ("signatures", settings.shards),
        ("links", settings.partitions),
        ("clusters", 1),
    ] {
        for index in 0..count {
            jobs.push(job_status(location, step, index, count).await?);
        }
    }
    Ok(Some((settings, jobs)))
}
