//! A DataFusion session whose tables are dapt sources.
use arrow::array::RecordBatch;
use dapt_core::Location;
use datafusion::error::DataFusionError;
use datafusion::execution::SendableRecordBatchStream;
use datafusion::prelude::{ParquetReadOptions, SQLOptions, SessionConfig, SessionContext};
use futures::TryStreamExt;
use url::Url;

use crate::{Error, Result};

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
        let config = SessionConfig::new().with_information_schema(true);
        let context = SessionContext::new_with_config(config);
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

    /// Plans a read-only query and returns its result stream. Planning errors and non-query
    /// statements are reported before any data is read.
    pub async fn query(&self, sql: &str) -> Result<SendableRecordBatchStream> {
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
