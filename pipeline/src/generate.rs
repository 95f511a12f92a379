//! `dapt generate`: one chat request per row of a query to an OpenAI-compatible endpoint (vLLM, TGI,
//! llama.cpp's server, `dapt serve`), the row's columns rendered into the user message by a Jinja
//! template. Requests run with bounded concurrency and are retried with exponential backoff on 429, 5xx,
//! timeouts and dropped connections. Every response is kept in a cache keyed by the model name, the
//! rendered messages and the generation parameters, so that a rerun makes no request for what it has
//! and an interrupted run resumes. The output is Parquet shards (rows sorted by id) with the row's
//! `id`, `prompt`, `response`, `finish_reason` and token usage, bound to the identity of the query,
//! its data, the template and the parameters. The API key comes from the environment and is sent,
//! never logged, cached or written.
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arrow::array::{ArrayRef, RecordBatch, StringArray, UInt64Array};
use arrow::datatypes::{DataType, Field, Schema};
use bytes::Bytes;
use dapt_core::{Location, OutputDir};
use dapt_sql::{SourcesOptions, SqlSession};
use futures::{StreamExt, TryStreamExt};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use crate::{Error, Result};

/// Generation parameters sent with every request (part of the cache key and the output's identity).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GenerateParams {
    /// `max_tokens` of each completion.
    pub max_tokens: u64,
    /// Sampling temperature (0: greedy).
    pub temperature: f64,
    /// Nucleus sampling mass.
    pub top_p: f64,
    /// Sampling seed, for servers that take one.
    pub seed: u64,
    /// Stop strings.
    pub stop: Vec<String>,
}

impl Default for GenerateParams {
    fn default() -> Self {
        Self {
            max_tokens: 256,
            temperature: 0.0,
            top_p: 1.0,
            seed: 0,
            stop: Vec::new(),
        }
    }
}

/// How requests are sent and retried (not part of any identity: they change how, not what).
#[derive(Clone, Debug)]
pub struct RequestPolicy {
    /// Requests in flight at once.
    pub concurrency: usize,
    /// Retries of a request after its first attempt.
    pub retries: u32,
    /// Time limit of one attempt.
    pub timeout: Duration,
    /// The first retry's wait; each next one doubles it (at most 30 s; a `Retry-After` header wins).
    pub backoff: Duration,
    /// Environment variable holding the API key (sent as a bearer token when set).
    pub api_key_env: String,
}

impl Default for RequestPolicy {
    fn default() -> Self {
        Self {
            concurrency: 4,
            retries: 5,
            timeout: Duration::from_secs(120),
            backoff: Duration::from_millis(500),
            api_key_env: "OPENAI_API_KEY".into(),
        }
    }
}

/// A `dapt generate` job.
#[derive(Clone, Debug)]
pub struct GenerateJob {
    /// The query returning the rows (an `id` column and whatever the template reads).
    pub query: String,
    /// Sources file the query reads (tables, tokenizers, classifiers, storage settings).
    pub sources: Option<PathBuf>,
    /// Jinja template rendering a row (its columns by name) into the user message.
    pub template: PathBuf,
    /// System message sent before it.
    pub system: Option<String>,
    /// Base URL of the server (`http://host:port/v1`) or its chat-completions URL.
    pub endpoint: String,
    /// Model name sent in each request.
    pub model: String,
    /// Output directory (URL).
    pub out: String,
    /// Response cache (URL of a directory, local or object store).
    pub cache: String,
    /// Generation parameters.
    pub params: GenerateParams,
    /// Rows per output shard.
    pub rows_per_shard: usize,
    /// Replace an output of other settings instead of refusing it.
    pub overwrite: bool,
    /// USD per million prompt and completion tokens, for the cost estimate.
    pub prices: Option<(f64, f64)>,
    /// The Ballista cluster (`df://HOST:PORT`) that runs the query, or none (here); not part of
    /// the output's identity: the rows are the same.
    pub cluster: Option<String>,
}

/// What a run did.
#[derive(Clone, Debug, Default, Serialize)]
pub struct GenerateReport {
    /// Rows of the output.
    pub rows: u64,
    /// Rows answered from the cache.
    pub cached: u64,
    /// HTTP requests sent (retries included).
    pub requests: u64,
    /// Requests that failed and were retried.
    pub retried: u64,
    /// Prompt tokens of all rows (from the responses' usage).
    pub prompt_tokens: u64,
    /// Completion tokens of all rows.
    pub completion_tokens: u64,
    /// Rows that ended at `max_tokens`.
    pub truncated: u64,
    /// Estimated cost in USD, when prices were given.
    pub cost_usd: Option<f64>,
    /// Shards written by this run (the rest were published before).
    pub shards_written: usize,
}

/// One response as cached and written.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Answer {
    content: String,
    finish_reason: String,
    prompt_tokens: u64,
    completion_tokens: u64,
}

/// A row to ask about.
struct Row {
    id: String,
    prompt: String,
    body: Value,
    key: String,
}

fn setting(key: &str, reason: impl Into<String>) -> Error {
    Error::Setting {
        key: key.into(),
        reason: reason.into(),
    }
}

fn data(what: impl Into<String>, reason: impl Into<String>) -> Error {
    Error::Data {
        what: what.into(),
        reason: reason.into(),
    }
}

/// The chat-completions URL of an endpoint given as a base URL (`…/v1` or the server's root) or as
/// that URL itself.
pub fn chat_url(endpoint: &str) -> String {
    let base = endpoint.trim_end_matches('/');
    if base.ends_with("/chat/completions") {
        base.to_string()
    } else if base.ends_with("/v1") {
        format!("{base}/chat/completions")
    } else {
        format!("{base}/v1/chat/completions")
    }
}

impl GenerateJob {
    fn check(&self) -> Result<()> {
        if !self.endpoint.starts_with("http://") && !self.endpoint.starts_with("https://") {
            return Err(setting(
                "--endpoint",
                format!("{:?} is not an http(s) URL", self.endpoint),
            ));
        }
        if self.model.is_empty() {
            return Err(setting("--model", "is empty"));
        }
        if self.rows_per_shard == 0 {
            return Err(setting("--rows-per-shard", "must be positive"));
        }
        if self.params.max_tokens == 0 {
            return Err(setting("--max-tokens", "must be positive"));
        }
        Ok(())
    }

    /// The rows of the query with their rendered prompts and request bodies, sorted by id.
    async fn rows(&self, sources: &SourcesOptions, template: &str) -> Result<Vec<Row>> {
        let session = SqlSession::over_sources(sources, None).await?;
        let stream = session.query(&self.query).await?;
        if stream.schema().field_with_name("id").is_err() {
            return Err(dapt_sql::Error::Columns {
                query: self.query.clone(),
                reason: "the query must return an `id` column (and the columns the template reads)"
                    .into(),
            }
            .into());
        }
        let batches: Vec<RecordBatch> =
            stream
                .try_collect()
                .await
                .map_err(|source| dapt_sql::Error::Query {
                    query: self.query.clone(),
                    source,
                })?;
        let mut env = minijinja::Environment::new();
        env.set_undefined_behavior(minijinja::UndefinedBehavior::Strict);
        let name = self.template.display().to_string();
        env.add_template(&name, template)
            .map_err(|e| setting("--template", format!("{name}: {e}")))?;
        let compiled = env
            .get_template(&name)
            .map_err(|e| setting("--template", format!("{name}: {e}")))?;
        let mut rows = Vec::new();
        for batch in &batches {
            for object in json_rows(batch)? {
                let id = match object.get("id") {
                    Some(Value::String(s)) => s.clone(),
                    Some(Value::Null) | None => {
                        return Err(data(
                            format!("query {:?}", self.query),
                            "a row has a NULL id",
                        ))
                    }
                    Some(other) => other.to_string(),
                };
                let prompt = compiled
                    .render(minijinja::value::Serde(&object))
                    .map_err(|e| data(format!("row {id}"), format!("template {name}: {e}")))?;
                if prompt.trim().is_empty() {
                    return Err(data(
                        format!("row {id}"),
                        format!("template {name} renders an empty message"),
                    ));
                }
                let mut messages = Vec::new();
                if let Some(system) = &self.system {
                    messages.push(json!({"role": "system", "content": system}));
                }
                messages.push(json!({"role": "user", "content": prompt}));
                let p = &self.params;
                let mut body = json!({
                    "model": self.model,
                    "messages": messages,
                    "max_tokens": p.max_tokens,
                    "temperature": p.temperature,
                    "top_p": p.top_p,
                    "seed": p.seed,
                });
                if !p.stop.is_empty() {
                    body["stop"] = json!(p.stop);
                }
                let key = dapt_core::hash::sha256_hex(body.to_string().as_bytes());
                rows.push(Row {
                    id,
                    prompt,
                    body,
                    key,
                });
            }
        }
        rows.sort_by(|a, b| a.id.cmp(&b.id));
        if let Some(pair) = rows.windows(2).find(|w| w[0].id == w[1].id) {
            return Err(data(
                format!("query {:?}", self.query),
                format!("id {} appears more than once", pair[0].id),
            ));
        }
        if rows.is_empty() {
            return Err(data(format!("query {:?}", self.query), "returned no rows"));
        }
        Ok(rows)
    }

    /// The output's identity: the query and the data its tables resolve to, the template, the
    /// system message, the model name and the parameters (not the endpoint, the cache or how requests
    /// are sent).
    fn identity(&self, template: &str) -> Result<String> {
        let sources = match &self.sources {
            Some(path) => {
                let options = SourcesOptions::load(path)?;
                Some((
                    crate::identity::file_identity(path)?,
                    crate::identity::sources_data(&options)?,
                ))
            }
            None => None,
        };
        crate::identity::identity(
            "the generate settings",
            &(
                &self.query,
                sources,
                dapt_core::hash::sha256_hex(template.as_bytes()),
                &self.system,
                &self.model,
                &self.params,
            ),
        )
    }

    /// Runs the job; `progress(done, total)` after each row.
    pub fn run(
        &self,
        policy: &RequestPolicy,
        progress: &(dyn Fn(u64, u64) + Sync),
    ) -> Result<GenerateReport> {
        self.check()?;
        let template = std::fs::read_to_string(&self.template)
            .map_err(crate::error::io_error(&self.template))?;
        let hash = self.identity(&template)?;
        let mut sources = match &self.sources {
            Some(path) => SourcesOptions::load(path)?,
            None => SourcesOptions::default(),
        };
        sources.cluster = self.cluster.clone();
        let runtime = crate::runtime()?;
        runtime.block_on(self.run_async(&sources, &template, &hash, policy, progress))
    }

    async fn run_async(
        &self,
        sources: &SourcesOptions,
        template: &str,
        hash: &str,
        policy: &RequestPolicy,
        progress: &(dyn Fn(u64, u64) + Sync),
    ) -> Result<GenerateReport> {
        let rows = self.rows(sources, template).await?;
        let mut output = OutputDir::open_with(
            Location::parse(&self.out)?,
            dapt_core::manifest::MANIFEST_NAME,
            "generate",
            hash,
            self.overwrite,
        )
        .await?;
        let client = Client::new(&self.endpoint, policy)?;
        let cache = Location::parse(&self.cache)?;
        let total = rows.len() as u64;
        let done = AtomicU64::new(0);
        let mut report = GenerateReport {
            rows: total,
            ..Default::default()
        };
        for (index, chunk) in rows.chunks(self.rows_per_shard).enumerate() {
            let name = format!("part-{index:05}.parquet");
            if output.is_published(&name) {
                done.fetch_add(chunk.len() as u64, Ordering::Relaxed);
                progress(done.load(Ordering::Relaxed), total);
                continue;
            }
            let answers: Vec<(Answer, bool)> = futures::stream::iter(chunk)
                .map(|row| {
                    let (client, cache, done) = (&client, &cache, &done);
                    async move {
                        let answer = cached_or_asked(client, cache, row).await?;
                        let n = done.fetch_add(1, Ordering::Relaxed) + 1;
                        progress(n, total);
                        Ok::<_, Error>(answer)
                    }
                })
                .buffered(policy.concurrency.max(1))
                .try_collect()
                .await?;
            for (answer, was_cached) in &answers {
                report.cached += u64::from(*was_cached);
                report.truncated += u64::from(answer.finish_reason == "length");
            }
            let batch = shard_batch(chunk, &answers)?;
            let bytes = dapt_core::parquet_io::encode(
                batch.schema(),
                &[batch],
                &BTreeMap::from([("dapt.generate.identity".to_string(), hash.to_string())]),
                &name,
            )?;
            output.publish(&name, bytes, chunk.len() as u64).await?;
            report.shards_written += 1;
        }
        // Usage of every row, from the published shards (this run's and earlier ones').
        for (_, bytes) in output.read_shards().await? {
            let (batches, _) = dapt_core::parquet_io::decode(bytes, "a generate shard")?;
            for batch in batches {
                for (column, total) in [
                    ("prompt_tokens", &mut report.prompt_tokens),
                    ("completion_tokens", &mut report.completion_tokens),
                ] {
                    if let Some(values) = batch
                        .column_by_name(column)
                        .and_then(|c| c.as_any().downcast_ref::<UInt64Array>())
                    {
                        *total += values.iter().flatten().sum::<u64>();
                    }
                }
            }
        }
        report.requests = client.requests.load(Ordering::Relaxed);
        report.retried = client.retried.load(Ordering::Relaxed);
        report.cost_usd = self.prices.map(|(prompt, completion)| {
            (report.prompt_tokens as f64 * prompt + report.completion_tokens as f64 * completion)
                / 1e6
        });
        output
            .finish(json!({
                "rows": report.rows,
                "prompt_tokens": report.prompt_tokens,
                "completion_tokens": report.completion_tokens,
                "truncated": report.truncated,
                "model": self.model,
            }))
            .await?;
        Ok(report)
    }
}

/// Every row of `batch` as a JSON object of its columns (nested columns as JSON values).
fn json_rows(batch: &RecordBatch) -> Result<Vec<Map<String, Value>>> {
    let mut writer = arrow::json::ArrayWriter::new(Vec::new());
    let fail = |e: arrow::error::ArrowError| data("the query's rows", e.to_string());
    writer.write(batch).map_err(fail)?;
    writer.finish().map_err(fail)?;
    let bytes = writer.into_inner();
    if bytes.is_empty() {
        return Ok(Vec::new());
    }
    let values: Vec<Map<String, Value>> =
        serde_json::from_slice(&bytes).map_err(|source| Error::Json {
            what: "the query's rows".into(),
            source,
        })?;
    // The JSON writer leaves NULL columns out: name them, so that templates can test them.
    let names: Vec<&str> = batch
        .schema_ref()
        .fields()
        .iter()
        .map(|f| f.name().as_str())
        .collect();
    Ok(values
        .into_iter()
        .map(|mut object| {
            for name in &names {
                object.entry(name.to_string()).or_insert(Value::Null);
            }
            object
        })
        .collect())
}

/// One output shard's rows.
fn shard_batch(rows: &[Row], answers: &[(Answer, bool)]) -> Result<RecordBatch> {
    let text = |f: &dyn Fn(usize) -> String| -> ArrayRef {
        Arc::new(StringArray::from(
            (0..rows.len()).map(f).collect::<Vec<String>>(),
        ))
    };
    let number = |f: &dyn Fn(usize) -> u64| -> ArrayRef {
        Arc::new(UInt64Array::from(
            (0..rows.len()).map(f).collect::<Vec<u64>>(),
        ))
    };
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Utf8, false),
        Field::new("prompt", DataType::Utf8, false),
        Field::new("response", DataType::Utf8, false),
        Field::new("finish_reason", DataType::Utf8, false),
        Field::new("prompt_tokens", DataType::UInt64, false),
        Field::new("completion_tokens", DataType::UInt64, false),
    ]));
    RecordBatch::try_new(
        schema,
        vec![
            text(&|i| rows[i].id.clone()),
            text(&|i| rows[i].prompt.clone()),
            text(&|i| answers[i].0.content.clone()),
            text(&|i| answers[i].0.finish_reason.clone()),
            number(&|i| answers[i].0.prompt_tokens),
            number(&|i| answers[i].0.completion_tokens),
        ],
    )
    .map_err(|e| data("a generate shard", e.to_string()))
}

/// The cached answer of `row`, or the endpoint's (then cached); `true` when it came from the cache.
async fn cached_or_asked(client: &Client, cache: &Location, row: &Row) -> Result<(Answer, bool)> {
    let name = format!("{}/{}.json", &row.key[..2], row.key);
    if let Some(bytes) = cache.read_optional(&name).await? {
        if let Ok(answer) = serde_json::from_slice::<Answer>(&bytes) {
            return Ok((answer, true));
        }
        tracing::warn!(row = %row.id, entry = %name, "unreadable cache entry; asking again");
    }
    let answer = client.ask(row).await?;
    let bytes = serde_json::to_vec(&answer).map_err(|source| Error::Json {
        what: format!("the answer of row {}", row.id),
        source,
    })?;
    cache.write(&name, Bytes::from(bytes)).await?;
    Ok((answer, false))
}

/// The HTTP side: one client, counters, the retry loop.
struct Client {
    http: reqwest::Client,
    url: String,
    api_key: Option<String>,
    retries: u32,
    backoff: Duration,
    requests: AtomicU64,
    retried: AtomicU64,
}

/// Why an attempt failed, and whether another may succeed.
struct Failure {
    reason: String,
    retry: bool,
    wait: Option<Duration>,
}

impl Client {
    fn new(endpoint: &str, policy: &RequestPolicy) -> Result<Self> {
        let http = reqwest::Client::builder()
            .timeout(policy.timeout)
            .build()
            .map_err(|e| setting("--endpoint", e.to_string()))?;
        Ok(Self {
            http,
            url: chat_url(endpoint),
            api_key: std::env::var(&policy.api_key_env)
                .ok()
                .filter(|k| !k.is_empty()),
            retries: policy.retries,
            backoff: policy.backoff,
            requests: AtomicU64::new(0),
            retried: AtomicU64::new(0),
        })
    }

    /// Asks until an answer comes or the retries are spent.
    async fn ask(&self, row: &Row) -> Result<Answer> {
        let mut attempt = 0u32;
        loop {
            self.requests.fetch_add(1, Ordering::Relaxed);
            match self.attempt(row).await {
                Ok(answer) => return Ok(answer),
                Err(failure) if failure.retry && attempt < self.retries => {
                    self.retried.fetch_add(1, Ordering::Relaxed);
                    let wait = failure.wait.unwrap_or_else(|| {
                        self.backoff
                            .saturating_mul(1 << attempt.min(16))
                            .min(Duration::from_secs(30))
                    });
                    tracing::warn!(
                        row = %row.id,
                        attempt = attempt + 1,
                        wait_ms = wait.as_millis() as u64,
                        reason = %failure.reason,
                        "request failed; retrying"
                    );
                    tokio::time::sleep(wait).await;
                    attempt += 1;
                }
                Err(failure) => {
                    return Err(data(
                        format!("row {} at {}", row.id, self.url),
                        format!(
                            "{} (after {} attempt{})",
                            failure.reason,
                            attempt + 1,
                            if attempt == 0 { "" } else { "s" }
                        ),
                    ))
                }
            }
        }
    }

    async fn attempt(&self, row: &Row) -> std::result::Result<Answer, Failure> {
        let mut request = self
            .http
            .post(&self.url)
            .header("Content-Type", "application/json")
            .body(row.body.to_string());
        if let Some(key) = &self.api_key {
            request = request.bearer_auth(key);
        }
        // reqwest's errors name the URL, never the headers.
        let transient = |e: reqwest::Error| Failure {
            reason: e.to_string(),
            retry: true,
            wait: None,
        };
        let response = request.send().await.map_err(transient)?;
        let status = response.status();
        let wait = response
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(|s| Duration::from_secs(s.min(60)));
        let body = response.bytes().await.map_err(transient)?;
        if !status.is_success() {
            let message = serde_json::from_slice::<Value>(&body)
                .ok()
                .and_then(|v| v["error"]["message"].as_str().map(str::to_string))
                .unwrap_or_else(|| String::from_utf8_lossy(&body).chars().take(200).collect());
            return Err(Failure {
                reason: format!("HTTP {status}: {message}"),
                retry: status.as_u16() == 429 || status.is_server_error(),
                wait,
            });
        }
        let value: Value = serde_json::from_slice(&body).map_err(|e| Failure {
            reason: format!("the response is not JSON: {e}"),
            retry: true,
            wait: None,
        })?;
        let choice = &value["choices"][0];
        let content = choice["message"]["content"]
            .as_str()
            .ok_or_else(|| Failure {
                reason: "the response has no choices[0].message.content".into(),
                retry: true,
                wait: None,
            })?;
        Ok(Answer {
            content: content.to_string(),
            finish_reason: choice["finish_reason"]
                .as_str()
                .unwrap_or("unknown")
                .to_string(),
            prompt_tokens: value["usage"]["prompt_tokens"].as_u64().unwrap_or(0),
            completion_tokens: value["usage"]["completion_tokens"].as_u64().unwrap_or(0),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_name_their_chat_url() {
        for (endpoint, url) in [
            ("http://h:1/v1", "http://h:1/v1/chat/completions"),
            ("http://h:1/v1/", "http://h:1/v1/chat/completions"),
            ("http://h:1", "http://h:1/v1/chat/completions"),
            (
                "https://h/v1/chat/completions",
                "https://h/v1/chat/completions",
            ),
        ] {
            assert_eq!(chat_url(endpoint), url);
        }
    }

    #[test]
    fn null_columns_stay_in_the_rows() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Utf8, false),
            Field::new("text", DataType::Utf8, true),
        ]));
        let batch = RecordBatch::try_new(
            schema,
            vec![
                Arc::new(StringArray::from(vec!["a", "b"])),
                Arc::new(StringArray::from(vec![Some("x"), None])),
            ],
        )
        .unwrap();
        let rows = json_rows(&batch).unwrap();
        assert_eq!(rows[0]["text"], "x");
        assert_eq!(rows[1]["text"], Value::Null);
    }
}
