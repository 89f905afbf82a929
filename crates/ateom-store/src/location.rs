//! Turning a `scheme://…` URI into an object store and a key prefix.

use std::sync::Arc;

use object_store::ObjectStore;
use object_store::path::Path;
use url::Url;

use crate::StoreError;
use crate::local::NoFollowLocal;

#[cfg(feature = "cloud")]
const SUPPORTED: &str = "file, s3, gs, az";
#[cfg(not(feature = "cloud"))]
const SUPPORTED: &str = "file (built without the cloud feature)";

/// An opened location: the store, the key prefix inside it, and a display form for messages.
pub(crate) struct Location {
    pub store: Arc<dyn ObjectStore>,
    pub prefix: Path,
    pub display: String,
}

/// Open `uri`. `options` are object-store builder keys (e.g. `aws_endpoint`,
/// `aws_access_key_id`, `aws_allow_http`) that override the environment.
pub(crate) fn open<I, K, V>(uri: &str, options: I) -> Result<Location, StoreError>
where
    I: IntoIterator<Item = (K, V)>,
    K: AsRef<str>,
    V: Into<String>,
{
    let invalid = |reason: String| StoreError::InvalidLocation { uri: uri.to_string(), reason };
    let url = Url::parse(uri).map_err(|e| invalid(e.to_string()))?;
    let display = uri.trim_end_matches('/').to_string();
    match url.scheme() {
        "file" => {
            if url.host_str().is_some_and(|h| !h.is_empty() && h != "localhost") {
                return Err(invalid("file:// URIs name a local absolute path (file:///abs/dir)".into()));
            }
            let dir = url.to_file_path().map_err(|()| invalid("not an absolute local path".into()))?;
            // `options` have no meaning for a local directory; reject them so typos show.
            if let Some((k, _)) = options.into_iter().next() {
                return Err(StoreError::InvalidOption {
                    scheme: "file",
                    key: k.as_ref().to_string(),
                    reason: "a file:// store takes no options".into(),
                });
            }
            std::fs::create_dir_all(&dir).map_err(|e| StoreError::io(&dir, e))?;
            // Lists and deletes never follow a symlink (see `local`).
            let fs = NoFollowLocal::new(&dir).map_err(|e| invalid(e.to_string()))?;
            Ok(Location { store: Arc::new(fs), prefix: Path::default(), display })
        }
        #[cfg(feature = "cloud")]
        "s3" | "s3a" | "gs" | "az" | "azure" | "abfs" | "abfss" => cloud::open(uri, &url, options, display),
        other => Err(StoreError::UnsupportedScheme {
            uri: uri.to_string(),
            scheme: other.to_string(),
            supported: SUPPORTED,
        }),
    }
}

#[cfg(feature = "cloud")]
mod cloud {
    use super::*;
    use object_store::RetryConfig;
    use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
    use object_store::azure::{AzureConfigKey, MicrosoftAzureBuilder};
    use object_store::gcp::{GoogleCloudStorageBuilder, GoogleConfigKey};

    /// The store's own retry loop ([`crate::RetryPolicy`]) handles retries uniformly for every
    /// backend, so object_store's internal retries are turned off: otherwise an unreachable
    /// endpoint would be retried 10 times for up to 3 minutes per request underneath us.
    fn no_retry() -> RetryConfig {
        RetryConfig { max_retries: 0, ..RetryConfig::default() }
    }

    fn prefix_of(uri: &str, url: &Url) -> Result<Path, StoreError> {
        let p = url.path().trim_matches('/');
        // abfs(s)://container@account... keeps the whole path; s3/gs/az put the bucket in the host.
        Path::parse(p).map_err(|e| StoreError::InvalidLocation { uri: uri.into(), reason: e.to_string() })
    }

    pub(super) fn open<I, K, V>(
        uri: &str,
        url: &Url,
        options: I,
        display: String,
    ) -> Result<Location, StoreError>
    where
        I: IntoIterator<Item = (K, V)>,
        K: AsRef<str>,
        V: Into<String>,
    {
        let build_err =
            |e: object_store::Error| StoreError::InvalidLocation { uri: uri.into(), reason: e.to_string() };
        let prefix = prefix_of(uri, url)?;
        let store: Arc<dyn ObjectStore> = match url.scheme() {
            "s3" | "s3a" => {
                let mut b = AmazonS3Builder::from_env();
                for (k, v) in options {
                    let key: AmazonS3ConfigKey = parse_key("s3", k.as_ref())?;
                    b = b.with_config(key, v);
                }
                Arc::new(b.with_url(uri).with_retry(no_retry()).build().map_err(build_err)?)
            }
            "gs" => {
                let mut b = GoogleCloudStorageBuilder::from_env();
                for (k, v) in options {
                    let key: GoogleConfigKey = parse_key("gs", k.as_ref())?;
                    b = b.with_config(key, v);
                }
                Arc::new(b.with_url(uri).with_retry(no_retry()).build().map_err(build_err)?)
            }
            _ => {
                let mut b = MicrosoftAzureBuilder::from_env();
                for (k, v) in options {
                    let key: AzureConfigKey = parse_key("az", k.as_ref())?;
                    b = b.with_config(key, v);
                }
                Arc::new(b.with_url(uri).with_retry(no_retry()).build().map_err(build_err)?)
            }
        };
        Ok(Location { store, prefix, display })
    }

    fn parse_key<T: std::str::FromStr<Err = object_store::Error>>(
        scheme: &'static str,
        key: &str,
    ) -> Result<T, StoreError> {
        key.to_ascii_lowercase().parse().map_err(|e: object_store::Error| StoreError::InvalidOption {
            scheme,
            key: key.to_string(),
            reason: e.to_string(),
        })
    }
}
