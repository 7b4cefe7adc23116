//! Object stores for Delta tables: `s3://` (and `s3a://`), `az://`/`abfs(s)://`/`azure://`
//! and `gs://`, registered with delta-rs at start-up.
//!
//! delta-rs opens a table through a registry of object-store and log-store factories
//! keyed by URL scheme; only `file://` and `memory://` are built in. Its cloud crates
//! (deltalake-aws, …) would bring the AWS SDK into the build; object_store's own
//! S3/Azure/GCS clients (reqwest, already built for `http`) do the same job. Commits need
//! only put-if-absent (`If-None-Match: *`, object_store's default for S3), which S3,
//! Azure, GCS and S3-compatible servers (SeaweedFS, MinIO, R2) provide, so the default
//! Delta log store is used and no lock service is needed.
//!
//! Credentials and endpoints come from the usual environment variables (`AWS_*`,
//! `AZURE_*`, `GOOGLE_*`), then from `[storage] options`, passed to object_store as
//! they are; an option object_store does not know is refused at start-up.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, OnceLock, RwLock};

use datafusion::execution::object_store::{DefaultObjectStoreRegistry, ObjectStoreRegistry};
use datafusion::execution::runtime_env::{RuntimeEnv, RuntimeEnvBuilder};

use deltalake::DeltaResult;
use deltalake::logstore::object_store::path::Path as StorePath;
use deltalake::logstore::{
    LogStore, LogStoreFactory, ObjectStoreFactory, ObjectStoreRef, StorageConfig, default_logstore,
    logstore_factories, object_store_factories,
};
use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use object_store::azure::{AzureConfigKey, MicrosoftAzureBuilder};
use object_store::gcp::{GoogleCloudStorageBuilder, GoogleConfigKey};
use url::Url;

use crate::error::CoreError;

/// The schemes served here, and which store each is.
const SCHEMES: [(&str, Cloud); 8] = [
    ("s3", Cloud::S3),
    ("s3a", Cloud::S3),
    ("az", Cloud::Azure),
    ("azure", Cloud::Azure),
    ("abfs", Cloud::Azure),
    ("abfss", Cloud::Azure),
    ("gs", Cloud::Gcs),
    ("gcs", Cloud::Gcs),
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cloud {
    S3,
    Azure,
    Gcs,
}

/// Whether `location` names an object store served here (else it is a local path).
pub fn is_cloud_url(location: &str) -> bool {
    cloud_of(location).is_some()
}

fn cloud_of(location: &str) -> Option<Cloud> {
    let scheme = location.split_once("://")?.0.to_ascii_lowercase();
    SCHEMES
        .iter()
        .find(|(s, _)| *s == scheme)
        .map(|(_, cloud)| *cloud)
}

/// Register the object stores with delta-rs, each configured from the environment and
/// `options`. Every option is checked against each store that would take it: one no
/// store knows is an error naming it. Registering again replaces the options.
pub fn register(options: &BTreeMap<String, String>) -> Result<(), CoreError> {
    // Environment overrides spell `_` as `-` (TRIBUTARY_STORAGE__OPTIONS__AWS_REGION).
    let options: HashMap<String, String> = options
        .iter()
        .map(|(k, v)| (k.replace('-', "_").to_ascii_lowercase(), v.clone()))
        .collect();
    for key in options.keys() {
        let known = key.parse::<AmazonS3ConfigKey>().is_ok()
            || key.parse::<AzureConfigKey>().is_ok()
            || key.parse::<GoogleConfigKey>().is_ok();
        if !known {
            return Err(CoreError::Config {
                source_name: "storage.options".into(),
                key: key.clone(),
                message: "not an option of the S3, Azure or GCS object store (see object_store's \
                          AmazonS3ConfigKey, AzureConfigKey, GoogleConfigKey)"
                    .into(),
            });
        }
    }
    let factory = Arc::new(Stores { options });
    *registered().write().expect("store options") = factory.clone();
    for (scheme, _) in SCHEMES {
        let url = Url::parse(&format!("{scheme}://")).expect("a scheme is a URL");
        object_store_factories().insert(url.clone(), factory.clone());
        logstore_factories().insert(url, factory.clone());
    }
    Ok(())
}

/// The stores as last registered (the environment alone until [`register`] runs).
fn registered() -> &'static RwLock<Arc<Stores>> {
    static STORES: OnceLock<RwLock<Arc<Stores>>> = OnceLock::new();
    STORES.get_or_init(|| {
        RwLock::new(Arc::new(Stores {
            options: HashMap::new(),
        }))
    })
}

/// DataFusion's object-store registry, which also knows the clouds: a query plan that
/// reads `s3://bucket/…` files (a Delta scan executed in another session than the one
/// that opened the table) finds the bucket's store, built from the registered options.
#[derive(Debug, Default)]
pub struct CloudRegistry {
    inner: DefaultObjectStoreRegistry,
}

impl ObjectStoreRegistry for CloudRegistry {
    fn register_store(
        &self,
        url: &Url,
        store: Arc<dyn object_store::ObjectStore>,
    ) -> Option<Arc<dyn object_store::ObjectStore>> {
        self.inner.register_store(url, store)
    }

    fn deregister_store(
        &self,
        url: &Url,
    ) -> datafusion::error::Result<Arc<dyn object_store::ObjectStore>> {
        self.inner.deregister_store(url)
    }

    fn get_store(
        &self,
        url: &Url,
    ) -> datafusion::error::Result<Arc<dyn object_store::ObjectStore>> {
        match self.inner.get_store(url) {
            Ok(store) => Ok(store),
            Err(e) if cloud_of(url.as_str()).is_none() => Err(e),
            Err(_) => {
                let stores = registered().read().expect("store options").clone();
                let store = stores
                    .build(url, &HashMap::new())
                    .map_err(|e| datafusion::error::DataFusionError::ObjectStore(Box::new(e)))?;
                self.inner.register_store(url, store.clone());
                Ok(store)
            }
        }
    }
}

/// The store holding `url` (a cloud URL, see [`is_cloud_url`]) and the object's path
/// in it, configured as [`register`] last said: for files read outside Delta
/// (backfill sources, dimension tables).
pub fn store_for(url: &Url) -> Result<(ObjectStoreRef, StorePath), CoreError> {
    let fail = |message: String| CoreError::Config {
        source_name: "storage.options".into(),
        key: String::new(),
        message,
    };
    if cloud_of(url.as_str()).is_none() {
        return Err(fail(format!("`{url}` is not an object-store URL")));
    }
    let stores = registered().read().expect("store options").clone();
    let store = stores
        .build(url, &HashMap::new())
        .map_err(|e| fail(format!("cannot reach `{url}`: {e}")))?;
    let path = StorePath::from_url_path(url.path()).map_err(|e| fail(format!("`{url}`: {e}")))?;
    Ok((store, path))
}

/// The process's object-store registry (shared, so a bucket's client is made once).
pub fn object_store_registry() -> Arc<CloudRegistry> {
    static REGISTRY: OnceLock<Arc<CloudRegistry>> = OnceLock::new();
    REGISTRY.get_or_init(Default::default).clone()
}

/// A DataFusion runtime that reaches the object stores; every session that reads
/// tables runs on one (built on `builder`, for sessions with their own limits).
pub fn runtime_with(builder: RuntimeEnvBuilder) -> datafusion::error::Result<Arc<RuntimeEnv>> {
    builder
        .with_object_store_registry(object_store_registry())
        .build_arc()
}

/// The shared default runtime (no memory limit), reaching the object stores.
pub fn runtime() -> Arc<RuntimeEnv> {
    static RUNTIME: OnceLock<Arc<RuntimeEnv>> = OnceLock::new();
    RUNTIME
        .get_or_init(|| runtime_with(RuntimeEnvBuilder::new()).expect("a default runtime builds"))
        .clone()
}

/// A plain session on [`runtime`].
pub fn session_context() -> datafusion::prelude::SessionContext {
    datafusion::prelude::SessionContext::new_with_config_rt(
        datafusion::prelude::SessionConfig::new(),
        runtime(),
    )
}

/// Builds the store for a table URL, and the default Delta log store over it.
struct Stores {
    /// `[storage] options`, applied over the environment.
    options: HashMap<String, String>,
}

impl Stores {
    fn build(
        &self,
        url: &Url,
        extra: &HashMap<String, String>,
    ) -> object_store::Result<ObjectStoreRef> {
        let options = self.options.iter().chain(extra.iter());
        let cloud = cloud_of(url.as_str()).expect("registered schemes only");
        // Keys a store does not know are skipped here: they were checked at `register`
        // against all three, and belong to another one.
        macro_rules! configured {
            ($builder:ty, $key:ty) => {{
                let mut b = <$builder>::from_env().with_url(url.as_str());
                for (k, v) in options {
                    if let Ok(key) = k.parse::<$key>() {
                        b = b.with_config(key, v);
                    }
                }
                Arc::new(b.build()?) as ObjectStoreRef
            }};
        }
        Ok(match cloud {
            Cloud::S3 => configured!(AmazonS3Builder, AmazonS3ConfigKey),
            Cloud::Azure => configured!(MicrosoftAzureBuilder, AzureConfigKey),
            Cloud::Gcs => configured!(GoogleCloudStorageBuilder, GoogleConfigKey),
        })
    }
}

impl ObjectStoreFactory for Stores {
    fn parse_url_opts(
        &self,
        url: &Url,
        config: &StorageConfig,
    ) -> DeltaResult<(ObjectStoreRef, StorePath)> {
        let store = self.build(url, &config.raw)?;
        let path = StorePath::from_url_path(url.path())?;
        Ok((store, path))
    }
}

impl LogStoreFactory for Stores {
    fn with_options(
        &self,
        prefixed_store: ObjectStoreRef,
        root_store: ObjectStoreRef,
        location: &Url,
        options: &StorageConfig,
    ) -> DeltaResult<Arc<dyn LogStore>> {
        Ok(default_logstore(
            prefixed_store,
            root_store,
            location,
            options,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cloud_urls_are_told_from_local_paths() {
        assert!(is_cloud_url("s3://bucket/prefix"));
        assert!(is_cloud_url("ABFSS://c@a.dfs.core.windows.net/p"));
        assert!(is_cloud_url("gs://b"));
        assert!(!is_cloud_url("data"));
        assert!(!is_cloud_url("/var/lib/tributary"));
        assert!(!is_cloud_url("file:///tmp/x"));
    }

    #[test]
    fn an_unknown_storage_option_is_refused_by_name() {
        let options = BTreeMap::from([("aws_regoin".to_string(), "x".to_string())]);
        let e = register(&options).unwrap_err().to_string();
        assert!(
            e.contains("aws_regoin") && e.contains("storage.options"),
            "{e}"
        );
        let options = BTreeMap::from([("aws-region".to_string(), "eu-west-1".to_string())]);
        register(&options).unwrap();
    }
}
