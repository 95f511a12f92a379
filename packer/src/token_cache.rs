//! Tokenised documents kept on disk so that later runs assemble training data from token ids without
//! tokenising again (`dapt sweep` keeps each mixture component this way). Schema: `id: utf8`,
//! `tokens: list<uint32>`, one row per document; the output directory's manifest records the
//! tokenizer's sha256, the document count and their UTF-8 bytes.
use std::sync::Arc;

use arrow::array::{AsArray, ListBuilder, RecordBatch, StringBuilder, UInt32Builder};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, UInt32Type};
use dapt_core::{parquet_io, OutputDir};

use crate::{Error, Result};

/// One tokenised document.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenisedDocument {
    /// Document id.
    pub id: String,
    /// Its token ids.
    pub tokens: Vec<u32>,
}

/// The schema of token-cache shards.
pub fn token_cache_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("id", DataType::Utf8, false),
        Field::new(
            "tokens",
            DataType::List(Arc::new(Field::new("item", DataType::UInt32, false))),
            false,
        ),
    ]))
}

/// Documents per shard.
const PER_SHARD: usize = 20_000;

/// Writes `documents` into `output` (skipping shards an earlier run published) and finishes it.
pub async fn write_token_cache(
    output: &mut OutputDir,
    documents: &[TokenisedDocument],
    tokenizer_sha256: &str,
    bytes: u64,
) -> Result<()> {
    let schema = token_cache_schema();
    for (index, chunk) in documents.chunks(PER_SHARD).enumerate() {
        let name = format!("part-{index:05}.parquet");
        if output.is_published(&name) {
            continue;
        }
        let mut ids = StringBuilder::new();
        let mut tokens = ListBuilder::new(UInt32Builder::new()).with_field(Arc::new(Field::new(
            "item",
            DataType::UInt32,
            false,
        )));
        for d in chunk {
            ids.append_value(&d.id);
            tokens.values().append_slice(&d.tokens);
            tokens.append(true);
        }
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![Arc::new(ids.finish()), Arc::new(tokens.finish())],
        )
        .map_err(|source| dapt_core::Error::Arrow {
            what: name.clone(),
            source,
        })?;
        let encoded = parquet_io::encode(schema.clone(), &[batch], &Default::default(), &name)?;
        output.publish(&name, encoded, chunk.len() as u64).await?;
    }
    output
        .finish(serde_json::json!({
            "documents": documents.len(),
            "bytes": bytes,
            "tokenizer_sha256": tokenizer_sha256,
        }))
        .await?;
    Ok(())
}

/// The documents of a finished token cache, in the order written, and the bytes of their texts.
pub async fn read_token_cache(output: &OutputDir) -> Result<(Vec<TokenisedDocument>, u64)> {
    let mut documents = Vec::new();
    for (name, bytes) in output.read_shards().await? {
        let (batches, _) = parquet_io::decode(bytes, &name)?;
        for batch in &batches {
            let bad = |reason: &str| Error::Stopped(format!("token cache {name}: {reason}"));
            let ids = batch
                .column_by_name("id")
                .and_then(|c| c.as_string_opt::<i32>())
                .ok_or_else(|| bad("no utf8 column `id`"))?;
            let tokens = batch
                .column_by_name("tokens")
                .and_then(|c| c.as_list_opt::<i32>())
                .ok_or_else(|| bad("no list column `tokens`"))?;
            for i in 0..batch.num_rows() {
                let list = tokens.value(i);
                let values = list
                    .as_primitive_opt::<UInt32Type>()
                    .ok_or_else(|| bad("`tokens` is not a list of uint32"))?;
                documents.push(TokenisedDocument {
                    id: ids.value(i).to_string(),
                    tokens: values.values().to_vec(),
                });
            }
        }
    }
    let bytes = output.manifest().summary["bytes"].as_u64().unwrap_or(0);
    Ok((documents, bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn documents_round_trip_through_the_cache() {
        let dir = tempfile::tempdir().unwrap();
        let location = dapt_core::Location::parse(&dir.path().display().to_string()).unwrap();
        let documents: Vec<TokenisedDocument> = (0..25_000u32)
            .map(|i| TokenisedDocument {
                id: format!("doc-{i}"),
                tokens: (0..(i % 7)).map(|t| t * 1000 + i).collect(),
            })
            .collect();
        let mut output = OutputDir::open(location.clone(), "token-cache", "h")
            .await
            .unwrap();
        write_token_cache(&mut output, &documents, "sha", 1234)
            .await
            .unwrap();
        drop(output);
        let output = OutputDir::open(location, "token-cache", "h").await.unwrap();
        assert!(output.manifest().complete);
        assert_eq!(output.manifest().shards.len(), 2);
        let (back, bytes) = read_token_cache(&output).await.unwrap();
        assert_eq!(bytes, 1234);
        assert_eq!(back, documents);
    }
}
