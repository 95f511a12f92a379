//! A DataFusion session whose tables are dapt sources.
use arrow::array::RecordBatch;
use dapt_core::Location;
use datafusion::error::DataFusionError;
use datafusion::execution::SendableRecordBatchStream;
use datafusion::prelude::{
    JsonReadOptions, ParquetReadOptions, SQLOptions, SessionConfig, SessionContext,
};
use datafusion::sql::parser::{DFParser, Statement};
use futures::TryStreamExt;
use url::Url;

use crate::{Error, Result, SourceFormat, SourcesOptions};

/// A SQL session over dapt sources.
pub struct SqlSession {
    context: SessionContext,
}

impl Default for SqlSession {
    fn default() -> Self {
        Self::new()
    }
}

impl SqlSession {
    /// A session with one partition per core.
    pub fn new() -> Self {
        Self::with_context(SessionContext::new_with_config(Self::config()))
    }

    /// A session whose operators (sorts, joins, aggregations) spill to temporary files beyond
    /// `bytes` of memory.
    pub fn with_memory_limit(bytes: usize) -> Result<Self> {
        let runtime = datafusion::execution::runtime_env::RuntimeEnvBuilder::new()
            .with_memory_limit(bytes, 1.0)
            .build_arc()
            .map_err(|source| Error::DataFusion {
                what: "the memory limit".into(),
                source,
            })?;
        Ok(Self::with_context(SessionContext::new_with_config_rt(
            Self::config(),
            runtime,
        )))
    }

    /// A session over the tables, tokenizers and classifiers of a sources file; with a memory limit,
    /// see [`SqlSession::with_memory_limit`]; on the Ballista cluster of `sources.cluster`, see
    /// [`SqlSession::remote`] (the limit is then the executors' business).
    pub async fn over_sources(
        sources: &SourcesOptions,
        memory_limit: Option<usize>,
    ) -> Result<Self> {
        let session = match (&sources.cluster, memory_limit) {
            (Some(url), _) => Self::remote(url, &sources.storage).await?,
            (None, Some(bytes)) => Self::with_memory_limit(bytes)?,
            (None, None) => Self::new(),
        };
        session.register_sources(sources).await?;
        Ok(session)
    }

    /// A session whose queries run on the Apache DataFusion Ballista cluster whose scheduler is at `url`
    /// (`df://HOST:PORT`; `dapt cluster scheduler|executor`). The client plans; the scheduler and
    /// executors must know dapt's functions and reach the tables' object stores (built from the table
    /// URLs with these `storage` settings over the environment, as here).
    pub async fn remote(
        url: &str,
        storage: &std::collections::BTreeMap<String, String>,
    ) -> Result<Self> {
        use ballista::prelude::SessionContextExt;
        use ballista_core::extension::SessionConfigExt;
        let refused = |reason: String| Error::Config {
            path: format!("--cluster {url}"),
            reason,
        };
        let parsed = Url::parse(url).map_err(|e| refused(format!("{e}; give df://HOST:PORT")))?;
        if parsed.scheme() != "df" || parsed.host_str().is_none() || parsed.port().is_none() {
            return Err(refused("give the scheduler as df://HOST:PORT".into()));
        }
        let runtime = crate::stores::runtime_env(storage).map_err(|source| Error::DataFusion {
            what: "the object-store runtime".into(),
            source,
        })?;
        let state = datafusion::execution::session_state::SessionStateBuilder::new()
            .with_default_features()
            .with_config(Self::config().upgrade_for_ballista())
            .with_runtime_env(runtime)
            .build();
        let context = SessionContext::remote_with_state(url, state)
            .await
            .map_err(|source| Error::DataFusion {
                what: format!("connecting to the scheduler at {url}"),
                source,
            })?;
        Ok(Self::with_context(context))
    }

    /// The session settings every dapt session starts from (a cluster client and scheduler too).
    pub fn config() -> SessionConfig {
        SessionConfig::new().with_information_schema(true)
    }

    fn with_context(context: SessionContext) -> Self {
        // File paths and URLs work as tables: `SELECT … FROM 'data/part-0.parquet'`.
        let context = context.enable_url_table();
        if let Err(error) = crate::jsonl_format::register(&context) {
            tracing::warn!(%error, "file-path tables with .jsonl/.ndjson names are not available");
        }
        crate::functions::register_functions(&context);
        Self { context }
    }

    /// The underlying DataFusion context, for callers that register more.
    pub fn context(&self) -> &SessionContext {
        &self.context
    }

    /// Registers the Parquet shards at `location` (a directory or prefix, e.g. an ingest output) as
    /// table `table`, reading through the location's object store.
    pub async fn register_parquet(&self, table: &str, location: &Location) -> Result<()> {
        let url = location.url();
        let register_error = |source| Error::Register {
            table: table.to_string(),
            url: url.clone(),
            source,
        };
        let root = Url::parse(location.root_url())
            .map_err(|e| register_error(DataFusionError::External(Box::new(e))))?;
        self.context
            .register_object_store(&root, location.store().clone());
        let directory = format!("{}/", url.trim_end_matches('/'));
        self.context
            .register_parquet(table, &directory, ParquetReadOptions::default())
            .await
            .map_err(register_error)
    }

    /// Registers the object store of a location's root (bucket) with the session.
    fn register_store(&self, location: &Location) -> Result<()> {
        let root = Url::parse(location.root_url()).map_err(|e| Error::Register {
            table: String::new(),
            url: location.root_url().to_string(),
            source: DataFusionError::External(Box::new(e)),
        })?;
        self.context
            .register_object_store(&root, location.store().clone());
        Ok(())
    }

    /// Loads the tokenizers and classifiers a sources file names and makes them available to
    /// `token_count` and `classify`.
    pub fn register_models(&self, sources: &SourcesOptions) -> Result<()> {
        crate::functions::register_functions_with_models(&self.context, load_models(sources)?);
        Ok(())
    }

    /// Registers every source of a sources file as a table (a source with column renames is a view
    /// over its raw table `__raw_NAME`), and its tokenizers and classifiers.
    pub async fn register_sources(&self, sources: &SourcesOptions) -> Result<()> {
        self.register_models(sources)?;
        for (name, source) in &sources.sources {
            let mut format = source.format(name)?;
            let (base, pattern) = dapt_core::location::split_glob(&source.url);
            let location = Location::parse_with(&base, &sources.storage)?;
            self.register_store(&location)?;
            let mut json_extension = None;
            // A prefix named without its trailing slash (DataFusion takes such a URL for one file).
            let mut is_prefix = false;
            if !source.names_its_format() && pattern.is_none() {
                // A directory or prefix: its files say what it holds.
                let objects = location.list_objects().await?;
                is_prefix = !(objects.len() == 1 && objects[0].location == *location.prefix());
                let names = objects.iter().map(|o| o.location.as_ref());
                if let Some((detected, extension)) = crate::sources::detect_format(names) {
                    format = detected;
                    json_extension = Some(extension);
                }
            }
            let url = if source.url.contains("://") {
                let mut url = source.url.clone();
                if is_prefix && !url.ends_with('/') {
                    url.push('/');
                }
                url
            } else {
                // A local path: make it an absolute file URL, keeping a glob or trailing slash.
                let trimmed = source.url.trim_end_matches('/');
                let absolute = std::path::absolute(trimmed).map_err(|source| Error::Io {
                    path: trimmed.into(),
                    source,
                })?;
                // DataFusion expands a glob in a local path, not in a file:// URL.
                let mut url = if trimmed.contains(['*', '?', '[']) {
                    absolute.display().to_string()
                } else {
                    format!("file://{}", absolute.display())
                };
                if source.url.ends_with('/') || (pattern.is_none() && absolute.is_dir()) {
                    url.push('/');
                }
                url
            };
            let raw = if source.columns.is_empty() {
                name.clone()
            } else {
                format!("__raw_{name}")
            };
            let register_error = |source| Error::Register {
                table: name.clone(),
                url: url.clone(),
                source,
            };
            match format {
                SourceFormat::Parquet => self
                    .context
                    .register_parquet(&raw, &url, ParquetReadOptions::default())
                    .await
                    .map_err(register_error)?,
                SourceFormat::Jsonl => {
                    let extension = json_extension
                        .or_else(|| {
                            [".jsonl", ".json", ".ndjson"]
                                .into_iter()
                                .find(|e| url.ends_with(e))
                        })
                        .unwrap_or(".jsonl");
                    let options = JsonReadOptions {
                        file_extension: extension,
                        ..Default::default()
                    };
                    self.context
                        .register_json(&raw, &url, options)
                        .await
                        .map_err(register_error)?;
                }
            }
            if !source.columns.is_empty() {
                let table = self.context.table(&raw).await.map_err(register_error)?;
                let renamed: std::collections::BTreeMap<&str, &str> = source
                    .columns
                    .iter()
                    .map(|(field, column)| (column.as_str(), field.as_str()))
                    .collect();
                let mut select = Vec::new();
                for field in table.schema().fields() {
                    let column = field.name().as_str();
                    match renamed.get(column) {
                        Some(new) => select.push(format!("\"{column}\" AS \"{new}\"")),
                        None if source.columns.contains_key(column) => {}
                        None => select.push(format!("\"{column}\"")),
                    }
                }
                for column in source.columns.values() {
                    if table.schema().field_with_unqualified_name(column).is_err() {
                        return Err(Error::Config {
                            path: format!("sources.{name}.columns"),
                            reason: format!("{url} has no column {column:?}"),
                        });
                    }
                }
                let view = format!(
                    "CREATE VIEW \"{name}\" AS SELECT {} FROM \"{raw}\"",
                    select.join(", ")
                );
                self.context.sql(&view).await.map_err(register_error)?;
            }
        }
        Ok(())
    }

    /// Runs a script of `;`-separated statements: `CREATE EXTERNAL TABLE` (its location's store is
    /// registered first) and read-only queries. Returns the result of the last query, if any.
    pub async fn run_script(
        &self,
        script: &str,
        storage: &std::collections::BTreeMap<String, String>,
    ) -> Result<Option<SendableRecordBatchStream>> {
        let statements = DFParser::parse_sql(script).map_err(|source| Error::Query {
            query: script.trim().to_string(),
            source,
        })?;
        let mut last = None;
        for statement in statements {
            let text = statement.to_string();
            match &statement {
                Statement::CreateExternalTable(create) => {
                    for url in &create.locations {
                        let base = dapt_core::location::split_glob(url).0;
                        self.register_store(&Location::parse_with(&base, storage)?)?;
                    }
                    self.context
                        .sql(&text)
                        .await
                        .map_err(|source| Error::Query {
                            query: text.clone(),
                            source,
                        })?;
                }
                Statement::CopyTo(_) => {
                    return Err(Error::NotReadOnly {
                        reason: "COPY writes data; use --out instead".into(),
                    })
                }
                Statement::Reset(_) => {
                    return Err(Error::NotReadOnly {
                        reason: "RESET changes the session".into(),
                    })
                }
                _ => last = Some(self.query(&text).await?),
            }
        }
        Ok(last)
    }

    /// Plans a read-only query and returns its result stream. Planning errors and non-query
    /// statements are reported before any data is read.
    pub async fn query(&self, sql: &str) -> Result<SendableRecordBatchStream> {
        let statements = DFParser::parse_sql(sql).map_err(|source| Error::Query {
            query: sql.trim().to_string(),
            source,
        })?;
        if statements.len() != 1 {
            return Err(Error::NotReadOnly {
                reason: format!("expected one query, got {} statements", statements.len()),
            });
        }
        check_read_only(&statements[0])?;
        let options = SQLOptions::new()
            .with_allow_ddl(false)
            .with_allow_dml(false)
            .with_allow_statements(false);
        let query_error = |source| Error::Query {
            query: sql.trim().to_string(),
            source,
        };
        let frame = match self.context.sql_with_options(sql, options).await {
            Ok(frame) => frame,
            Err(DataFusionError::Plan(reason)) if reason.contains("not supported") => {
                return Err(Error::NotReadOnly { reason });
            }
            Err(e) => return Err(query_error(e)),
        };
        frame.execute_stream().await.map_err(query_error)
    }

    /// Runs a read-only query and collects its batches.
    pub async fn query_collect(&self, sql: &str) -> Result<Vec<RecordBatch>> {
        self.query(sql)
            .await?
            .try_collect()
            .await
            .map_err(|source| Error::Query {
                query: sql.trim().to_string(),
                source,
            })
    }
}

/// Loads the tokenizers and classifiers a sources file names (`[tokenizers]`, `[classifiers]`), for
/// `token_count` and `classify`: what a session registers, and what a cluster executor must load too.
pub fn load_models(
    sources: &SourcesOptions,
) -> Result<std::sync::Arc<crate::functions::models::Models>> {
    let mut models = crate::functions::models::Models::default();
    for (name, path) in &sources.tokenizers {
        let tokenizer =
            dapt_encoder::TokenizerFile::load_with(path, sources.encoder).map_err(|source| {
                Error::Tokenizer {
                    name: name.clone(),
                    source,
                }
            })?;
        models
            .tokenizers
            .insert(name.clone(), std::sync::Arc::new(tokenizer));
    }
    for (name, path) in &sources.classifiers {
        let classifier =
            crate::functions::classifier::Classifier::load(path).map_err(|reason| {
                Error::Config {
                    path: format!("classifiers.{name}"),
                    reason,
                }
            })?;
        models
            .classifiers
            .insert(name.clone(), std::sync::Arc::new(classifier));
    }
    Ok(std::sync::Arc::new(models))
}

/// Refuses, from the statement's syntax alone, anything but a query: SELECT/WITH/VALUES, EXPLAIN,
/// DESCRIBE and SHOW pass; DDL, DML, COPY and session statements do not.
fn check_read_only(statement: &Statement) -> Result<()> {
    use datafusion::sql::sqlparser::ast::Statement as Sql;
    let allowed = match statement {
        Statement::Statement(sql) => matches!(
            sql.as_ref(),
            Sql::Query(_)
                | Sql::Explain { .. }
                | Sql::ExplainTable { .. }
                | Sql::ShowTables { .. }
                | Sql::ShowColumns { .. }
                | Sql::ShowFunctions { .. }
                | Sql::ShowVariable { .. }
                | Sql::ShowCreate { .. }
        ),
        Statement::Explain(_) => true,
        Statement::CreateExternalTable(_) | Statement::CopyTo(_) | Statement::Reset(_) => false,
    };
    if allowed {
        Ok(())
    } else {
        let text = statement.to_string();
        let head: String = text
            .split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ");
        Err(Error::NotReadOnly {
            reason: format!("{head} … is not a query"),
        })
    }
}
