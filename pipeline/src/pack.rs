//! `dapt pack` as a job: documents from a query (or a Document Parquet directory) are tokenised and
//! packed into fixed-length rows. CPT orders documents by the packing order of
//! [`dapt_core::order`] with the packer's external sort (so `dapt pack` and `dapt run` give the same
//! row order for the same documents and seed) and streams them through the packer; SFT renders chats
//! with a chat template, loss on assistant turns, packed whole. The output's identity covers the
//! input (query, sources file contents or input directory), the tokenizer's bytes, the settings and
//! the seed.
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{Array, AsArray};
use dapt_core::{Location, OutputDir};
use dapt_packer::{
    ChatTemplate, DocumentSorter, EncoderChoice, Message, Overlong, PackDocument, PackSettings,
    PackStats, SftStats, TokenizerFile, CHATML,
};
use dapt_sql::{SourcesOptions, SqlSession};
use futures::StreamExt;
use serde::Serialize;

use crate::error::setting;
use crate::{Error, Result};

/// Where the documents come from.
#[derive(Clone, Debug, Serialize)]
pub enum PackInput {
    /// A read-only query (returning `id`, `text` and optionally `component` or `source`) over the
    /// sources of a sources file (or none).
    Query {
        /// The query.
        query: String,
        /// The sources file its tables come from.
        sources: Option<PathBuf>,
        /// The `df://HOST:PORT` scheduler of the Ballista cluster that runs the query, or none (not
        /// part of the identity: the rows are the same wherever it ran).
        #[serde(skip)]
        cluster: Option<String>,
    },
    /// A Document Parquet directory (a `dapt ingest` output), packed whole.
    Documents {
        /// The directory's URL.
        url: String,
    },
    /// A read-only query over sources given in place (a recipe's own `[sources]`).
    Inline {
        /// The query.
        query: String,
        /// The sources its tables come from.
        sources: SourcesOptions,
    },
}

/// How documents become rows.
#[derive(Clone, Debug, Serialize)]
pub enum PackMode {
    /// Continual pretraining: documents EOS-separated, split across rows.
    Cpt,
    /// Supervised fine-tuning: chats (a `messages` column of JSON `[{role, content}]`, or `prompt` and
    /// `response` columns), packed whole with best-fit-decreasing over `window` examples.
    Sft {
        /// A `tokenizer_config.json` with the chat template, or `chatml`; `None`: the
        /// `tokenizer_config.json` beside the tokenizer.
        chat_template: Option<String>,
        /// Examples packed together by best-fit-decreasing.
        window: usize,
        /// What an example longer than a row does.
        overlong: Overlong,
    },
    /// Preference pairs for DPO/SimPO: `prompt`, `chosen` and `rejected` columns (the prompt as a
    /// user turn or a JSON list of messages, the responses as assistant turns), or `chosen` and
    /// `rejected` as JSON message lists that share every message but the last (assistant) one.
    /// Each pair becomes two adjacent segments of a row (`chosen`, `rejected`), loss on the final
    /// response only; pairs longer than a row are left out.
    Preference {
        /// As for SFT.
        chat_template: Option<String>,
        /// Pairs packed together by best-fit-decreasing.
        window: usize,
    },
}

/// A pack job.
#[derive(Clone, Debug)]
pub struct PackJob {
    /// Where the documents come from.
    pub input: PackInput,
    /// The `tokenizer.json`.
    pub tokenizer: PathBuf,
    /// Encoder backend.
    pub encoder: EncoderChoice,
    /// Row length, held-out share, special tokens.
    pub settings: PackSettings,
    /// Seed of the document order and the held-out split.
    pub seed: u64,
    /// Output directory (URL).
    pub out: String,
    /// Replace an output already there (of any identity) instead of refusing or reusing it.
    pub overwrite: bool,
    /// CPT or SFT.
    pub mode: PackMode,
    /// This job of an array (CPT only): the job packs the documents of the Document shards whose
    /// name hashes to its index (`--input DIR`), or the query's rows whose id does (`xxh3(id) %
    /// count`), into its own shards and manifest; the last to finish merges the manifests.
    /// [`dapt_ingest::Job::ALL`] packs everything.
    pub shard: dapt_ingest::Job,
}

/// What a pack job did.
#[derive(Clone, Debug)]
pub enum PackOutcome {
    /// A CPT packing.
    Cpt {
        /// What it packed.
        stats: PackStats,
        /// The encoder that tokenised (`fast` or `hf`).
        encoder: String,
        /// Whether this job completed the merged manifest of an array (always true for one job).
        merged: bool,
    },
    /// An SFT packing and what it packed.
    Sft(SftStats),
    /// A preference packing (`examples` counts pairs).
    Preference(SftStats),
}

/// The query a Document directory is packed with.
const WHOLE_DIRECTORY: &str = "SELECT * FROM documents";

/// The manifest of the Document directory at `url` (`--input DIR`).
fn input_manifest(url: &str) -> Result<dapt_core::Manifest> {
    let location = Location::parse(url)?;
    let name = dapt_core::manifest::MANIFEST_NAME;
    let bytes = crate::runtime()?.block_on(location.read(name))?;
    serde_json::from_slice(&bytes).map_err(|source| Error::Json {
        what: location.url_of(&location.child(name)),
        source,
    })
}

impl PackJob {
    /// The query and the sources the documents are read with.
    fn sources(&self) -> Result<(String, SourcesOptions)> {
        match &self.input {
            PackInput::Query {
                query,
                sources,
                cluster,
            } => {
                let mut options = match sources {
                    Some(path) => SourcesOptions::load(path)?,
                    None => SourcesOptions::default(),
                };
                options.cluster.clone_from(cluster);
                Ok((query.clone(), options))
            }
            PackInput::Documents { url } => {
                let mut options = SourcesOptions::default();
                let url = url.trim_end_matches('/');
                options.sources.insert(
                    "documents".into(),
                    dapt_sql::SourceOptions {
                        url: format!("{url}/"),
                        ..Default::default()
                    },
                );
                if self.shard.count <= 1 {
                    return Ok((WHOLE_DIRECTORY.to_string(), options));
                }
                // A job of an array reads only the directory's shards whose name hashes to it.
                let manifest = input_manifest(url)?;
                let mut parts = Vec::new();
                for shard in &manifest.shards {
                    if !self.shard.takes(&shard.name) {
                        continue;
                    }
                    let table = format!("documents_{}", parts.len());
                    options.sources.insert(
                        table.clone(),
                        dapt_sql::SourceOptions {
                            url: format!("{url}/{}", shard.name),
                            ..Default::default()
                        },
                    );
                    parts.push(format!("SELECT * FROM {table}"));
                }
                let query = if parts.is_empty() {
                    format!("{WHOLE_DIRECTORY} WHERE false")
                } else {
                    parts.join(" UNION ALL ")
                };
                Ok((query, options))
            }
            PackInput::Inline { query, sources } => Ok((query.clone(), sources.clone())),
        }
    }

    /// The output's identity: the input (the sources file's bytes and the files its tables resolve
    /// to with their sizes, or the input directory's manifest, which lists its shards and the
    /// identity of what wrote them), the tokenizer's bytes,
    /// the settings and the seed.
    pub fn identity(&self, tokenizer: &TokenizerFile) -> Result<String> {
        let sources_file = match &self.input {
            PackInput::Query {
                sources: Some(path),
                ..
            } => {
                let options = dapt_sql::SourcesOptions::load(path)?;
                Some(crate::identity::identity(
                    "the sources",
                    &(
                        crate::identity::file_identity(path)?,
                        crate::identity::sources_data(&options)?,
                    ),
                )?)
            }
            PackInput::Documents { url } => {
                let manifest = input_manifest(url)?;
                Some(crate::identity::identity(
                    "the input directory",
                    &(&manifest.config_hash, &manifest.shards, manifest.complete),
                )?)
            }
            _ => None,
        };
        crate::identity::identity(
            "the pack settings",
            &(
                &self.input,
                sources_file,
                tokenizer.sha256(),
                &self.settings,
                self.seed,
                &self.mode,
                // An array's jobs share one identity; how many there are changes the rows.
                (self.shard.count > 1).then_some(self.shard.count),
            ),
        )
    }

    /// Runs the job; `progress(documents, bytes)` as CPT documents are tokenised.
    pub fn run(&self, progress: dapt_packer::PackProgress) -> Result<PackOutcome> {
        let tokenizer = TokenizerFile::load_with(&self.tokenizer, self.encoder)?;
        let hash = self.identity(&tokenizer)?;
        let runtime = crate::runtime()?;
        let (query, sources) = self.sources()?;
        let job = self.shard;
        // SFT and preference examples: a job of an array packs the examples whose id hashes to it
        // (a Document directory is split by its files, in `sources`).
        let examples_query = match self.input {
            PackInput::Documents { .. } => query.clone(),
            _ => job.restrict(&query, "id"),
        };
        if job.count > 1 && self.overwrite {
            return Err(setting(
                "--overwrite",
                "cannot replace an output from one job of an array (the others write into it); \
                 remove the output directory first, then run the jobs",
            ));
        }
        match &self.mode {
            PackMode::Cpt => {
                let tokenizer = Arc::new(tokenizer);
                let (stats, merged) = runtime.block_on(async {
                    let location = Location::parse(&self.out)?;
                    let mut settings = self.settings.clone();
                    if job.count > 1 {
                        settings.shard_stem = format!("part-{:05}-of-{:05}", job.index, job.count);
                    }
                    let mut output = OutputDir::open_with(
                        location.clone(),
                        &dapt_core::manifest::manifest_name_of_job(job.index, job.count),
                        "pack",
                        &hash,
                        self.overwrite,
                    )
                    .await?;
                    // From here on this job writes the output: a failure is recorded for
                    // `dapt status` (and cleared by a later success).
                    let result = async {
                        // A Document directory is split by its files (above); a query by ids.
                        let by_id = match self.input {
                            PackInput::Documents { .. } => dapt_ingest::Job::ALL,
                            _ => job,
                        };
                        let documents =
                            ordered_documents(&sources, &query, self.seed, by_id).await?;
                        let stats = dapt_packer::pack_stream(
                            &mut output,
                            tokenizer.clone(),
                            documents,
                            &settings,
                            self.seed,
                            &hash,
                            progress,
                        )
                        .await?;
                        let merged = if job.count > 1 {
                            OutputDir::merge_job_manifests(&location, job.count, "pack", &hash)
                                .await?
                                .is_some()
                        } else {
                            true
                        };
                        Ok::<_, Error>((stats, merged))
                    }
                    .await;
                    dapt_core::status::record_outcome(&location, job.index, job.count, &result)
                        .await?;
                    result
                })?;
                Ok(PackOutcome::Cpt {
                    stats,
                    encoder: tokenizer.encoder_name().to_string(),
                    merged,
                })
            }
            PackMode::Sft {
                chat_template,
                window,
                overlong,
            } => {
                let stats =
                    self.pack_whole(&tokenizer, &hash, "pack-sft", |tokenizer, pad_id| {
                        let template = self.chat_template(chat_template.as_deref())?;
                        let examples = ordered(
                            runtime.block_on(chats(&sources, &examples_query))?,
                            self.seed,
                        );
                        use rayon::prelude::*;
                        let tokenized: Vec<(Vec<u32>, Vec<bool>)> = examples
                            .par_iter()
                            .map(|(id, messages)| {
                                template.tokenize(tokenizer, messages).map_err(|source| {
                                    Error::Example {
                                        id: id.clone(),
                                        source,
                                    }
                                })
                            })
                            .collect::<Result<_>>()?;
                        Ok(dapt_packer::pack_sft(
                            &tokenized,
                            &[],
                            pad_id,
                            self.settings.seq_len,
                            *window,
                            *overlong,
                        ))
                    })?;
                Ok(PackOutcome::Sft(stats))
            }
            PackMode::Preference {
                chat_template,
                window,
            } => {
                let stats =
                    self.pack_whole(&tokenizer, &hash, "pack-preference", |tokenizer, pad_id| {
                        let template = self.chat_template(chat_template.as_deref())?;
                        let pairs = ordered(
                            runtime.block_on(pairs(&sources, &examples_query))?,
                            self.seed,
                        );
                        use rayon::prelude::*;
                        let tokenized = pairs
                            .par_iter()
                            .map(|(id, (chosen, rejected))| {
                                let side = |messages: &[Message]| {
                                    template
                                        .tokenize(tokenizer, messages)
                                        .map(|(ids, mask)| (ids, last_run(mask)))
                                        .map_err(|source| Error::Example {
                                            id: id.clone(),
                                            source,
                                        })
                                };
                                Ok((side(chosen)?, side(rejected)?))
                            })
                            .collect::<Result<Vec<_>>>()?;
                        Ok(dapt_packer::pack_pairs(
                            &tokenized,
                            pad_id,
                            self.settings.seq_len,
                            *window,
                        ))
                    })?;
                Ok(PackOutcome::Preference(stats))
            }
        }
    }

    /// Packs examples whole (SFT chats, preference pairs): a finished output of this identity is
    /// reused as it is, without reading or tokenising again; otherwise `pack` makes the rows.
    fn pack_whole(
        &self,
        tokenizer: &TokenizerFile,
        hash: &str,
        writer: &str,
        pack: impl FnOnce(&TokenizerFile, u32) -> Result<(Vec<dapt_core::PackedRow>, SftStats)>,
    ) -> Result<SftStats> {
        let runtime = crate::runtime()?;
        let job = self.shard;
        let location = Location::parse(&self.out)?;
        let mut output = runtime.block_on(OutputDir::open_with(
            location.clone(),
            &dapt_core::manifest::manifest_name_of_job(job.index, job.count),
            writer,
            hash,
            self.overwrite,
        ))?;
        // A job of an array merges the job manifests once every job is done (the last to finish
        // writes `_manifest.json`; a rerun of a finished job merges again, to the same bytes).
        let merge = |runtime: &tokio::runtime::Runtime| -> Result<()> {
            if job.count > 1 {
                runtime.block_on(OutputDir::merge_job_manifests(
                    &location, job.count, writer, hash,
                ))?;
            }
            Ok(())
        };
        if output.manifest().complete {
            let stats = serde_json::from_value(output.manifest().summary.clone())
                .map_err(|e| setting("--out", format!("{}: {e}", self.out)))?;
            merge(&runtime)?;
            return Ok(stats);
        }
        let result = (|| {
            let pad_id = tokenizer.id_of(&self.settings.pad_token)?;
            let (rows, stats) = pack(tokenizer, pad_id)?;
            let summary = serde_json::to_value(&stats).map_err(|source| Error::Json {
                what: "the packing statistics".into(),
                source,
            })?;
            let stem = if job.count > 1 {
                format!("part-{:05}-of-{:05}", job.index, job.count)
            } else {
                "part".to_string()
            };
            runtime.block_on(dapt_packer::write_packed(
                &mut output,
                &rows,
                &stem,
                self.settings.rows_per_shard,
                self.settings.seq_len,
                pad_id,
                tokenizer.sha256(),
                self.seed,
                hash,
                summary,
            ))?;
            merge(&runtime)?;
            Ok(stats)
        })();
        // Recorded for `dapt status` (and cleared by a later success).
        runtime.block_on(dapt_core::status::record_outcome(
            &location, job.index, job.count, &result,
        ))?;
        result
    }

    fn chat_template(&self, chat_template: Option<&str>) -> Result<ChatTemplate> {
        let eos = &self.settings.eos_token;
        Ok(match chat_template {
            Some("chatml") => ChatTemplate::new(CHATML, "", eos)?,
            Some(path) => ChatTemplate::from_tokenizer_config(Path::new(path))?,
            None => {
                let beside = self.tokenizer.with_file_name("tokenizer_config.json");
                ChatTemplate::from_tokenizer_config(&beside).map_err(|e| {
                    setting(
                        "--chat-template",
                        format!("{e}; give --chat-template PATH or --chat-template chatml"),
                    )
                })?
            }
        })
    }
}

/// The query's documents as a stream of chunks in the packing order, through the packer's external
/// sort (memory bounded by one bucket). Segments are labelled with the query's `component` or
/// `source` column, when it has one.
async fn ordered_documents(
    sources: &SourcesOptions,
    query: &str,
    seed: u64,
    job: dapt_ingest::Job,
) -> Result<
    impl futures::Stream<Item = dapt_packer::Result<Vec<PackDocument>>> + Unpin + Send + 'static,
> {
    let session = SqlSession::over_sources(sources, None).await?;
    let query = query.trim().trim_end_matches(';');
    let mut stream = session.query(&job.restrict(query, "id")).await?;
    let schema = stream.schema();
    for column in ["id", "text"] {
        if schema.field_with_name(column).is_err() {
            return Err(setting(
                "query",
                format!("the query must return the columns `id`, `text`: {query}"),
            ));
        }
    }
    let label = ["component", "source"]
        .into_iter()
        .find(|c| schema.field_with_name(c).is_ok());
    let phase = std::time::Instant::now();
    let mut sorter = DocumentSorter::new(seed, None)?;
    while let Some(batch) = stream.next().await {
        let batch = batch.map_err(|source| dapt_sql::Error::Query {
            query: query.to_string(),
            source,
        })?;
        let ids = dapt_sql::rows::string_column(&batch, "id", query)?;
        let texts = dapt_sql::rows::string_column(&batch, "text", query)?;
        let labels = label
            .map(|l| dapt_sql::rows::string_column(&batch, l, query))
            .transpose()?;
        let (ids, texts) = (ids.as_string::<i32>(), texts.as_string::<i32>());
        let labels = labels.as_ref().map(arrow::array::AsArray::as_string::<i32>);
        for i in 0..batch.num_rows() {
            if !(ids.is_valid(i) && texts.is_valid(i)) {
                continue;
            }
            if !job.takes(ids.value(i)) {
                continue;
            }
            sorter.push(&PackDocument {
                id: ids.value(i).to_string(),
                text: texts.value(i).to_string(),
                source: labels
                    .filter(|l| l.is_valid(i))
                    .map(|l| l.value(i).to_string()),
            })?;
        }
    }
    tracing::debug!(
        seconds = phase.elapsed().as_secs_f64(),
        documents = sorter.len(),
        "documents written to the sort's buckets"
    );
    Ok(sorter.finish()?)
}

/// Examples in the packing order of their ids (never the order the rows arrived in).
fn ordered<T>(mut examples: Vec<(String, T)>, seed: u64) -> Vec<(String, T)> {
    let stage = dapt_core::order::stage_seed(seed, dapt_packer::PACK_ORDER, 0);
    examples.sort_by_cached_key(|(id, _)| (dapt_core::order::key_with(stage, id), id.clone()));
    examples
}

/// `mask` with only its last run of set flags kept: the final assistant turn of a chat.
fn last_run(mut mask: Vec<bool>) -> Vec<bool> {
    if let Some(end) = mask.iter().rposition(|m| *m) {
        let start = mask[..end].iter().rposition(|m| !*m).map_or(0, |i| i + 1);
        mask[..start].iter_mut().for_each(|m| *m = false);
    }
    mask
}

/// The (chosen, rejected) chats of a preference query: `prompt`, `chosen`, `rejected` columns, or
/// `chosen` and `rejected` as JSON message lists sharing all but their last message.
async fn pairs(
    sources: &SourcesOptions,
    query: &str,
) -> Result<Vec<(String, (Vec<Message>, Vec<Message>))>> {
    let session = SqlSession::over_sources(sources, None).await?;
    let (layout, rows) = dapt_sql::string_rows(
        &session,
        query,
        &[
            &["id", "prompt", "chosen", "rejected"],
            &["id", "chosen", "rejected"],
        ],
    )
    .await?;
    let messages = |id: &str, column: &str, text: &str| -> Result<Vec<Message>> {
        serde_json::from_str(text).map_err(|source| Error::Json {
            what: format!("row {id}: {column} must be a JSON list of {{role, content}}"),
            source,
        })
    };
    let assistant = |content: &str| Message {
        role: "assistant".into(),
        content: content.to_string(),
    };
    rows.into_iter()
        .map(|row| {
            let id = row[0].clone();
            let (chosen, rejected) = if layout == 0 {
                let prompt = if row[1].trim_start().starts_with('[') {
                    messages(&id, "prompt", &row[1])?
                } else {
                    vec![Message {
                        role: "user".into(),
                        content: row[1].clone(),
                    }]
                };
                // A response: the assistant's text, or (TRL's conversational layout) a JSON list
                // of the messages that follow the prompt.
                let response = |text: &str| -> Vec<Message> {
                    text.trim_start()
                        .starts_with('[')
                        .then(|| serde_json::from_str::<Vec<Message>>(text).ok())
                        .flatten()
                        .unwrap_or_else(|| vec![assistant(text)])
                };
                let mut chosen = prompt.clone();
                chosen.extend(response(&row[2]));
                let mut rejected = prompt;
                rejected.extend(response(&row[3]));
                (chosen, rejected)
            } else {
                let chosen = messages(&id, "chosen", &row[1])?;
                let rejected = messages(&id, "rejected", &row[2])?;
                let shared = |m: &[Message]| m[..m.len().saturating_sub(1)].to_vec();
                let last_is_answer =
                    |m: &[Message]| m.last().is_some_and(|m| m.role == "assistant");
                if !(last_is_answer(&chosen) && last_is_answer(&rejected))
                    || shared(&chosen) != shared(&rejected)
                {
                    return Err(setting(
                        "query",
                        format!(
                            "row {id}: chosen and rejected must share every message but the last, an assistant turn"
                        ),
                    ));
                }
                (chosen, rejected)
            };
            Ok((id, (chosen, rejected)))
        })
        .collect()
}

/// Chats from the query: a `messages` column (JSON) or `prompt` and `response` columns.
async fn chats(sources: &SourcesOptions, query: &str) -> Result<Vec<(String, Vec<Message>)>> {
    let session = SqlSession::over_sources(sources, None).await?;
    let (layout, rows) = dapt_sql::string_rows(
        &session,
        query,
        &[&["id", "messages"], &["id", "prompt", "response"]],
    )
    .await?;
    rows.into_iter()
        .map(|row| {
            let messages = if layout == 0 {
                serde_json::from_str(&row[1]).map_err(|source| Error::Json {
                    what: format!(
                        "row {}: messages must be a JSON list of {{role, content}}",
                        row[0]
                    ),
                    source,
                })?
            } else {
                vec![
                    Message {
                        role: "user".into(),
                        content: row[1].clone(),
                    },
                    Message {
                        role: "assistant".into(),
                        content: row[2].clone(),
                    },
                ]
            };
            Ok((row[0].clone(), messages))
        })
        .collect()
}
