//! Exact and near deduplication.
//!
//! Both read `(key, text)` rows and return the members of every cluster of two or more documents; in
//! each cluster the document with the smallest key is kept and names the cluster. Singletons are not
//! listed, so `LEFT JOIN duplicates USING (id) WHERE kept IS NOT FALSE` keeps one of each.
//!
//! Near dedup: MinHash signatures (the SQL `minhash` function's) are spilled to a temporary file;
//! locality-sensitive hashing over `bands × rows` puts documents in buckets band by band (only one
//! band's buckets are in memory at a time); in each bucket, taken in key order, a document is linked
//! to the first earlier one whose estimated Jaccard similarity with it reaches the threshold
//! ([`link_bucket`]); clusters are the connected components of the links. The rule looks at one
//! bucket at a time, so `dapt dedup near-signatures|near-links|near-clusters` (an array of processes
//! over partitions of the buckets) find exactly the same clusters. Keys must be unique.
use std::collections::HashMap;
use std::io::{BufWriter, Write};
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use arrow::array::{Array, AsArray, BooleanArray, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use dapt_sql::functions::minhash::{estimated_jaccard, MinHasher};
use futures::{Stream, StreamExt};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// One document that has duplicates.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Duplicate {
    /// The cluster's kept document's key.
    pub cluster_id: String,
    /// The document's key.
    pub id: String,
    /// True for the one document of the cluster that is kept.
    pub kept: bool,
}

/// Schema of the duplicates table.
pub fn duplicates_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("id", DataType::Utf8, false),
        Field::new("cluster_id", DataType::Utf8, false),
        Field::new("kept", DataType::Boolean, false),
    ]))
}

impl Duplicate {
    /// The duplicates table as one batch.
    pub fn to_batch(rows: &[Duplicate]) -> Result<RecordBatch> {
        RecordBatch::try_new(
            duplicates_schema(),
            vec![
                Arc::new(StringArray::from_iter_values(
                    rows.iter().map(|r| r.id.as_str()),
                )),
                Arc::new(StringArray::from_iter_values(
                    rows.iter().map(|r| r.cluster_id.as_str()),
                )),
                Arc::new(rows.iter().map(|r| Some(r.kept)).collect::<BooleanArray>()),
            ],
        )
        .map_err(|source| Error::Arrow {
            what: "the duplicates table".into(),
            source,
        })
    }
}

/// Text as exact dedup compares it: Unicode lower case, runs of whitespace as one space, trimmed.
pub fn normalise(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for word in text.split_whitespace() {
        if !out.is_empty() {
            out.push(' ');
        }
        out.extend(word.chars().flat_map(char::to_lowercase));
    }
    out
}

/// One column's values as owned strings (NULL as `None`).
pub type Column = Vec<Option<String>>;

/// Reads the `key` and `text` columns of a batch as strings (NULL as `None`), naming a column that
/// is missing (with the ones there are) or that cannot be read as text; other columns are ignored.
pub fn key_text_columns(batch: &RecordBatch, key: &str, text: &str) -> Result<(Column, Column)> {
    let read = |name: &str| -> Result<Column> {
        let column = batch.column_by_name(name).ok_or_else(|| Error::Column {
            column: name.into(),
            reason: format!(
                "the query returns {}",
                batch
                    .schema()
                    .fields()
                    .iter()
                    .map(|f| f.name().as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        })?;
        let column =
            arrow::compute::cast(column, &DataType::Utf8).map_err(|source| Error::ColumnType {
                column: name.into(),
                source,
            })?;
        let strings = column.as_string::<i32>();
        Ok((0..strings.len())
            .map(|i| strings.is_valid(i).then(|| strings.value(i).to_string()))
            .collect())
    };
    Ok((read(key)?, read(text)?))
}

/// Groups of member indices → duplicate rows, smallest key kept.
fn clusters_to_rows(keys: &[String], groups: Vec<Vec<usize>>) -> Vec<Duplicate> {
    let mut rows = Vec::new();
    for mut members in groups.into_iter().filter(|g| g.len() > 1) {
        members.sort_by(|&a, &b| keys[a].cmp(&keys[b]));
        let kept = keys[members[0]].clone();
        for (position, &m) in members.iter().enumerate() {
            rows.push(Duplicate {
                cluster_id: kept.clone(),
                id: keys[m].clone(),
                kept: position == 0,
            });
        }
    }
    rows.sort();
    rows
}

/// Exact duplicates: documents whose normalised texts are equal (compared by 128-bit xxh3 hash).
pub async fn exact_duplicates<S, E>(mut input: S, key: &str, text: &str) -> Result<Vec<Duplicate>>
where
    S: Stream<Item = std::result::Result<RecordBatch, E>> + Unpin,
    E: Into<crate::error::BoxError>,
{
    let mut keys = Vec::new();
    let mut groups: HashMap<u128, Vec<usize>> = HashMap::new();
    while let Some(batch) = input.next().await {
        let batch = batch.map_err(|e| Error::Input { source: e.into() })?;
        let (ids, texts) = key_text_columns(&batch, key, text)?;
        let hashes: Vec<Option<u128>> = texts
            .par_iter()
            .map(|t| {
                t.as_deref()
                    .map(|t| xxhash_rust::xxh3::xxh3_128(normalise(t).as_bytes()))
            })
            .collect();
        for (id, hash) in ids.into_iter().zip(hashes) {
            let (Some(id), Some(hash)) = (id, hash) else {
                continue;
            };
            groups.entry(hash).or_default().push(keys.len());
            keys.push(id);
        }
    }
    Ok(clusters_to_rows(&keys, groups.into_values().collect()))
}

/// Near-dedup settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NearOptions {
    /// Words per shingle.
    pub k: usize,
    /// LSH bands; `bands × rows` is the signature length.
    pub bands: usize,
    /// Signature values per band.
    pub rows: usize,
    /// Estimated Jaccard similarity from which two documents are duplicates.
    pub threshold: f64,
    /// Seed of the MinHash functions.
    pub seed: u64,
}

impl Default for NearOptions {
    /// 32 bands of 4 (128 permutations): a pair at Jaccard 0.8 becomes a candidate with probability
    /// 1 − (1 − 0.8⁴)³² > 0.9999; candidates are then verified at `threshold`.
    fn default() -> Self {
        Self {
            k: 5,
            bands: 32,
            rows: 4,
            threshold: 0.75,
            seed: 1,
        }
    }
}

impl NearOptions {
    /// Refuses settings that cannot work (no bands or rows, a threshold outside [0, 1]).
    pub fn validate(&self) -> Result<()> {
        let bad = |key: &str, reason: &str| Error::Setting {
            key: key.into(),
            reason: reason.into(),
        };
        if self.k == 0 || self.bands == 0 || self.rows == 0 {
            return Err(bad("k/bands/rows", "must be positive"));
        }
        if !(0.0..=1.0).contains(&self.threshold) {
            return Err(bad("threshold", "must be in [0, 1]"));
        }
        Ok(())
    }
}

/// Union-find with path halving; the root of a set is its smallest index.
struct Sets(Vec<u32>);

impl Sets {
    fn find(&mut self, mut x: u32) -> u32 {
        while self.0[x as usize] != x {
            let parent = self.0[x as usize];
            self.0[x as usize] = self.0[parent as usize];
            x = parent;
        }
        x
    }

    fn union(&mut self, a: u32, b: u32) {
        let (ra, rb) = (self.find(a), self.find(b));
        if ra != rb {
            let (low, high) = (ra.min(rb), ra.max(rb));
            self.0[high as usize] = low;
        }
    }
}

/// The LSH bucket of one band of a signature (`rows` little-endian values): the band's bytes hashed
/// with the band number as seed.
pub fn band_bucket(band_bytes: &[u8], band: usize) -> u64 {
    xxhash_rust::xxh3::xxh3_64_with_seed(band_bytes, band as u64)
}

/// The links of one LSH bucket whose `members` are in key order (given by their positions): each
/// member is linked to the first earlier member that `similar` confirms, if any. Near-duplicate
/// clusters are the connected components of every bucket's links, so the result depends on the
/// buckets alone, not on the order they are visited in nor on how they are split among processes.
pub fn link_bucket(
    members: usize,
    mut similar: impl FnMut(usize, usize) -> Result<bool>,
) -> Result<Vec<(usize, usize)>> {
    let mut links = Vec::new();
    for later in 1..members {
        for earlier in 0..later {
            if similar(earlier, later)? {
                links.push((earlier, later));
                break;
            }
        }
    }
    Ok(links)
}

/// The duplicates table of the clusters that `links` (pairs of keys) make: the connected components
/// with two or more keys, the smallest key of each kept. Memory holds the linked keys once.
pub fn clusters_of_links(links: &[(String, String)]) -> Vec<Duplicate> {
    let mut keys: Vec<&str> = links
        .iter()
        .flat_map(|(a, b)| [a.as_str(), b.as_str()])
        .collect();
    keys.sort_unstable();
    keys.dedup();
    let number = |key: &str| keys.binary_search(&key).unwrap_or_default() as u32;
    let mut sets = Sets((0..keys.len() as u32).collect());
    for (a, b) in links {
        sets.union(number(a), number(b));
    }
    let mut groups: HashMap<u32, Vec<usize>> = HashMap::new();
    for doc in 0..keys.len() as u32 {
        groups.entry(sets.find(doc)).or_default().push(doc as usize);
    }
    let owned: Vec<String> = keys.iter().map(|k| (*k).to_string()).collect();
    clusters_to_rows(&owned, groups.into_values().collect())
}

/// Near duplicates by MinHash + LSH.
pub async fn near_duplicates<S, E>(
    mut input: S,
    key: &str,
    text: &str,
    options: &NearOptions,
) -> Result<Vec<Duplicate>>
where
    S: Stream<Item = std::result::Result<RecordBatch, E>> + Unpin,
    E: Into<crate::error::BoxError>,
{
    options.validate()?;
    let num_perm = options.bands * options.rows;
    let hasher = MinHasher::new(options.k, num_perm, options.seed);
    let spill = tempfile::NamedTempFile::new().map_err(|source| Error::Spill {
        path: "(temporary file)".into(),
        source,
    })?;
    let spill_path = spill.path().display().to_string();
    let spill_error = |source| Error::Spill {
        path: spill_path.clone(),
        source,
    };
    let mut writer = BufWriter::new(spill.reopen().map_err(spill_error)?);
    let mut keys = Vec::new();
    while let Some(batch) = input.next().await {
        let batch = batch.map_err(|e| Error::Input { source: e.into() })?;
        let (ids, texts) = key_text_columns(&batch, key, text)?;
        let rows: Vec<(String, String)> = ids
            .into_iter()
            .zip(texts)
            .filter_map(|(id, text)| Some((id?, text?)))
            .collect();
        let signatures: Vec<Vec<u64>> = rows.par_iter().map(|(_, t)| hasher.signature(t)).collect();
        for ((id, _), signature) in rows.into_iter().zip(signatures) {
            for value in signature {
                writer
                    .write_all(&value.to_le_bytes())
                    .map_err(spill_error)?;
            }
            keys.push(id);
        }
    }
    writer.flush().map_err(spill_error)?;
    drop(writer);
    let file = spill.reopen().map_err(spill_error)?;
    let signature_bytes = num_perm * 8;
    let read_signature = |index: usize| -> Result<Vec<u64>> {
        let mut bytes = vec![0u8; signature_bytes];
        file.read_exact_at(&mut bytes, (index * signature_bytes) as u64)
            .map_err(spill_error)?;
        Ok(bytes
            .chunks_exact(8)
            .map(|c| u64::from_le_bytes(c.try_into().unwrap_or_default()))
            .collect())
    };
    // Visit documents in key order, so that candidates (and so clusters) do not depend on input order.
    let mut order: Vec<u32> = (0..keys.len() as u32).collect();
    order.sort_by(|&a, &b| keys[a as usize].cmp(&keys[b as usize]));
    if let Some(pair) = order
        .windows(2)
        .find(|pair| keys[pair[0] as usize] == keys[pair[1] as usize])
    {
        return Err(Error::Column {
            column: key.into(),
            reason: format!("the key {:?} is not unique", keys[pair[0] as usize]),
        });
    }
    let mut sets = Sets((0..keys.len() as u32).collect());
    let mut verified: HashMap<(u32, u32), bool> = HashMap::new();
    let band_bytes = options.rows * 8;
    for band in 0..options.bands {
        let mut buckets: HashMap<u64, Vec<u32>> = HashMap::new();
        let mut slice = vec![0u8; band_bytes];
        for &doc in &order {
            let offset = doc as usize * signature_bytes + band * band_bytes;
            file.read_exact_at(&mut slice, offset as u64)
                .map_err(spill_error)?;
            buckets
                .entry(band_bucket(&slice, band))
                .or_default()
                .push(doc);
        }
        for members in buckets.values().filter(|m| m.len() > 1) {
            let links = link_bucket(members.len(), |earlier, later| {
                let (a, b) = (members[earlier], members[later]);
                let pair = (a.min(b), a.max(b));
                if let Some(&d) = verified.get(&pair) {
                    return Ok(d);
                }
                let similarity =
                    estimated_jaccard(&read_signature(a as usize)?, &read_signature(b as usize)?);
                let d = similarity >= options.threshold;
                verified.insert(pair, d);
                Ok(d)
            })?;
            for (earlier, later) in links {
                sets.union(members[earlier], members[later]);
            }
        }
    }
    let mut groups: HashMap<u32, Vec<usize>> = HashMap::new();
    for doc in 0..keys.len() as u32 {
        let root = sets.find(doc);
        groups.entry(root).or_default().push(doc as usize);
    }
    tracing::info!(
        documents = keys.len(),
        candidates = verified.len(),
        "near dedup"
    );
    Ok(clusters_to_rows(&keys, groups.into_values().collect()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stream(
        rows: Vec<(&str, &str)>,
    ) -> impl Stream<Item = std::result::Result<RecordBatch, String>> + Unpin {
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Utf8, false),
            Field::new("text", DataType::Utf8, false),
        ]));
        let batch = RecordBatch::try_new(
            schema,
            vec![
                Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.0))),
                Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.1))),
            ],
        )
        .unwrap();
        futures::stream::iter(vec![Ok(batch)])
    }

    #[tokio::test]
    async fn exact_groups_normalised_texts_and_keeps_the_smallest_key() {
        let rows = exact_duplicates(
            stream(vec![
                ("b", "Hello  World"),
                ("a", "hello world\n"),
                ("c", "other"),
                ("d", "HELLO WORLD"),
            ]),
            "id",
            "text",
        )
        .await
        .unwrap();
        let expected = ["a", "b", "d"].map(|id| Duplicate {
            cluster_id: "a".into(),
            id: id.into(),
            kept: id == "a",
        });
        assert_eq!(rows, expected);
        assert_eq!(normalise("  Привет \t МИР "), "привет мир");
    }

    #[test]
    fn a_bucket_links_each_member_to_the_first_similar_earlier_one() {
        // Members 0..5; 2 is like 0 and 1, 3 like nobody, 4 like 3 only.
        let similar = |a: usize, b: usize| matches!((a.min(b), a.max(b)), (0, 2) | (1, 2) | (3, 4));
        let mut asked = Vec::new();
        let links = link_bucket(5, |earlier, later| {
            asked.push((earlier, later));
            Ok(similar(earlier, later))
        })
        .unwrap();
        assert_eq!(links, [(0, 2), (3, 4)]);
        // 2 stops at its first match; 3 is compared with all before it.
        assert!(!asked.contains(&(1, 2)) && asked.contains(&(2, 3)));
        let rows = clusters_of_links(&[
            ("b".into(), "c".into()),
            ("d".into(), "c".into()),
            ("x".into(), "y".into()),
        ]);
        let kept: Vec<(&str, &str, bool)> = rows
            .iter()
            .map(|r| (r.cluster_id.as_str(), r.id.as_str(), r.kept))
            .collect();
        assert_eq!(
            kept,
            [
                ("b", "b", true),
                ("b", "c", false),
                ("b", "d", false),
                ("x", "x", true),
                ("x", "y", false)
            ]
        );
    }

    #[tokio::test]
    async fn near_dedup_refuses_a_key_given_twice() {
        let err = near_duplicates(
            stream(vec![
                ("a", "one two three"),
                ("b", "x y z"),
                ("a", "four five six"),
            ]),
            "id",
            "text",
            &NearOptions::default(),
        )
        .await
        .unwrap_err()
        .to_string();
        assert!(err.contains("\"a\"") && err.contains("not unique"), "{err}");
    }

    #[tokio::test]
    async fn missing_column_is_named() {
        let err = exact_duplicates(stream(vec![("a", "x")]), "doc_id", "text")
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("doc_id") && err.contains("id, text"), "{err}");
    }
}
