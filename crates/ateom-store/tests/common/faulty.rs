//! A test double for the commit logic: an object store that forwards to a real one but makes
//! every chunk PUT fail after the first `allowed` of them (as a dying network would).

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use futures::stream::BoxStream;
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMultipartOptions, PutOptions, PutPayload, PutResult, Result,
};

#[derive(Debug)]
pub struct FailAfter {
    pub inner: Arc<dyn ObjectStore>,
    pub allowed: usize,
    pub chunk_puts: AtomicUsize,
    pub failed_puts: AtomicUsize,
}

impl FailAfter {
    pub fn new(inner: Arc<dyn ObjectStore>, allowed: usize) -> Arc<Self> {
        Arc::new(FailAfter {
            inner,
            allowed,
            chunk_puts: AtomicUsize::new(0),
            failed_puts: AtomicUsize::new(0),
        })
    }
}

impl fmt::Display for FailAfter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FailAfter({}, {})", self.allowed, self.inner)
    }
}

#[async_trait::async_trait]
impl ObjectStore for FailAfter {
    async fn put_opts(&self, location: &Path, payload: PutPayload, opts: PutOptions) -> Result<PutResult> {
        if location.as_ref().contains("/chunks/")
            && self.chunk_puts.fetch_add(1, Ordering::SeqCst) >= self.allowed
        {
            self.failed_puts.fetch_add(1, Ordering::SeqCst);
            return Err(object_store::Error::Generic {
                store: "FailAfter",
                source: "connection reset by peer".into(),
            });
        }
        self.inner.put_opts(location, payload, opts).await
    }
    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> Result<Box<dyn MultipartUpload>> {
        self.inner.put_multipart_opts(location, opts).await
    }
    async fn get_opts(&self, location: &Path, options: GetOptions) -> Result<GetResult> {
        self.inner.get_opts(location, options).await
    }
    fn delete_stream(&self, locations: BoxStream<'static, Result<Path>>) -> BoxStream<'static, Result<Path>> {
        self.inner.delete_stream(locations)
    }
    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
        self.inner.list(prefix)
    }
    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult> {
        self.inner.list_with_delimiter(prefix).await
    }
    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> Result<()> {
        self.inner.copy_opts(from, to, options).await
    }
}
