//! An object-store registry that builds the store of any URL it is asked for, the way
//! [`dapt_core::Location`] does (the environment, then the sources file's `[storage]` settings). A
//! session planned on one machine and run on others (a cluster's scheduler and executors) needs it:
//! they see table URLs (`s3://bucket/…`), not the stores the client registered.
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use dapt_core::Location;
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::object_store::ObjectStoreRegistry;
use datafusion::execution::runtime_env::{RuntimeEnv, RuntimeEnvBuilder};
use object_store::ObjectStore;
use url::Url;

/// Stores by `scheme://host[:port]`, built on first use.
#[derive(Debug)]
pub struct StoreRegistry {
    storage: BTreeMap<String, String>,
    stores: Mutex<HashMap<String, Arc<dyn ObjectStore>>>,
}

impl StoreRegistry {
    /// A registry whose stores take these object_store settings over the environment.
    pub fn new(storage: BTreeMap<String, String>) -> Self {
        Self {
            storage,
            stores: Mutex::new(HashMap::new()),
        }
    }

    fn stores(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<dyn ObjectStore>>> {
        // A panic while holding the map leaves it whole (inserts are single calls).
        self.stores
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn key(url: &Url) -> String {
        format!(
            "{}://{}",
            url.scheme(),
            &url[url::Position::BeforeHost..url::Position::AfterPort]
        )
    }
}

impl ObjectStoreRegistry for StoreRegistry {
    fn register_store(
        &self,
        url: &Url,
        store: Arc<dyn ObjectStore>,
    ) -> Option<Arc<dyn ObjectStore>> {
        let mut stores = self.stores();
        stores.insert(Self::key(url), store)
    }

    fn deregister_store(&self, url: &Url) -> Result<Arc<dyn ObjectStore>> {
        let mut stores = self.stores();
        stores.remove(&Self::key(url)).ok_or_else(|| {
            DataFusionError::Execution(format!("no object store is registered for {url}"))
        })
    }

    fn get_store(&self, url: &Url) -> Result<Arc<dyn ObjectStore>> {
        let key = Self::key(url);
        let mut stores = self.stores();
        if let Some(store) = stores.get(&key) {
            return Ok(Arc::clone(store));
        }
        let root = if url.scheme() == "file" {
            "file:///".to_string()
        } else {
            format!("{key}/")
        };
        let location = Location::parse_with(&root, &self.storage)
            .map_err(|e| DataFusionError::External(Box::new(e)))?;
        let store = Arc::clone(location.store());
        stores.insert(key, Arc::clone(&store));
        Ok(store)
    }
}

/// A runtime whose object stores come from a [`StoreRegistry`] with these settings.
pub fn runtime_env(storage: &BTreeMap<String, String>) -> Result<Arc<RuntimeEnv>> {
    RuntimeEnvBuilder::new()
        .with_object_store_registry(Arc::new(StoreRegistry::new(storage.clone())))
        .build_arc()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_store_is_built_once_per_bucket_and_named_urls_are_refused_clearly() {
        let registry = StoreRegistry::new(BTreeMap::new());
        let a = registry
            .get_store(&Url::parse("file:///tmp/x/y.parquet").unwrap())
            .unwrap();
        let b = registry
            .get_store(&Url::parse("file:///other").unwrap())
            .unwrap();
        assert!(Arc::ptr_eq(&a, &b));
        let s3 = registry
            .get_store(&Url::parse("s3://bucket-a/k/part-0.parquet").unwrap())
            .unwrap();
        assert!(s3.to_string().contains("bucket-a"), "{s3}");
        let again = registry
            .get_store(&Url::parse("s3://bucket-a/other").unwrap())
            .unwrap();
        assert!(Arc::ptr_eq(&s3, &again));
        let error = registry
            .get_store(&Url::parse("ftp://host/x").unwrap())
            .unwrap_err()
            .to_string();
        assert!(error.contains("ftp://host"), "{error}");
    }
}
