//! [`InvoiceFiles`]: where invoice PDFs are kept, in object storage (the `object_store`
//! crate): a local directory on one machine, S3 (or anything that speaks its API: LocalStack,
//! moto, MinIO) when the services run apart.
//!
//! Each invoice is one object, `invoices/<number>.pdf` under the configured prefix. A put
//! replaces the object whole (atomic on S3 and on the local directory), so writing the same
//! invoice again, as a redelivered event does, is harmless.
//!
//! When the PDF is written depends on where it goes ([`InvoiceFiles::written_when_invoiced`]):
//! to S3, by the invoicing stage before it announces the invoice, so that whoever reads the
//! bucket finds it; to a local directory, on its first download ([`InvoiceFiles::rendered`]),
//! since the PDF is a function of the invoice the store keeps, and a file created per order
//! on the hot path cost more CPU than all the rest of the order (inode allocation in one large
//! directory).
//!
//! Configured by a URL (`--invoice-store`):
//! - `s3://bucket[/prefix]`: credentials, region and endpoint from the standard `AWS_*`
//!   variables (`AWS_ENDPOINT_URL` for an emulator; plain `http://` endpoints are allowed);
//! - `file:///path` or a plain path: a local directory (created if missing).

use std::{path::Path as FsPath, sync::Arc, time::Duration};

use bytes::Bytes;
use futures::{Stream, TryStreamExt};
use object_store::{
    aws::AmazonS3Builder, local::LocalFileSystem, path::Path, prefix::PrefixStore, ClientOptions,
    ObjectStore, ObjectStoreExt, PutPayload, RetryConfig,
};

use crate::{Invoice, Result, StoreError};

/// The object store holding invoice PDFs. Cheap to clone.
#[derive(Clone)]
pub struct InvoiceFiles {
    objects: Arc<dyn ObjectStore>,
    /// Where, for logs and errors (no secret in it).
    location: String,
    /// Object storage shared between services (S3), rather than a local directory.
    shared: bool,
}

impl std::fmt::Debug for InvoiceFiles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InvoiceFiles")
            .field("location", &self.location)
            .finish()
    }
}

/// A PDF read back, ready to stream.
pub struct InvoiceFile {
    /// Size in bytes.
    pub size: u64,
    pub bytes: std::pin::Pin<Box<dyn Stream<Item = std::io::Result<Bytes>> + Send>>,
}

impl InvoiceFiles {
    /// From a URL: `s3://bucket[/prefix]`, `file:///dir` or a plain directory path.
    pub fn open(url: &str) -> Result<Self> {
        if let Some(rest) = url.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            return Self::s3(bucket, prefix.trim_matches('/'));
        }
        if let Some(path) = url.strip_prefix("file://") {
            return Self::local(FsPath::new(path));
        }
        if url.contains("://") {
            return Err(StoreError::Invalid(format!(
                "invoice store {url}: expected s3://bucket[/prefix], file:///dir or a directory"
            )));
        }
        Self::local(FsPath::new(url))
    }

    /// A local directory (created if missing).
    pub fn local(dir: &FsPath) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(|e| {
            StoreError::Unavailable(format!("cannot create {}: {e}", dir.display()))
        })?;
        let fs = LocalFileSystem::new_with_prefix(dir)
            .map_err(|e| StoreError::Invalid(format!("invoice store {}: {e}", dir.display())))?;
        Ok(InvoiceFiles {
            objects: Arc::new(fs),
            location: dir.display().to_string(),
            shared: false,
        })
    }

    /// An S3 bucket, configured from the standard `AWS_*` environment.
    fn s3(bucket: &str, prefix: &str) -> Result<Self> {
        if bucket.is_empty() {
            return Err(StoreError::Invalid(
                "invoice store s3://: the URL names no bucket".into(),
            ));
        }
        let mut builder = AmazonS3Builder::from_env()
            .with_bucket_name(bucket)
            // Fail over to the stage's own retries (with backoff, offsets held) rather than
            // stall a batch for minutes inside one call.
            .with_retry(RetryConfig {
                max_retries: 3,
                retry_timeout: Duration::from_secs(15),
                ..RetryConfig::default()
            })
            .with_client_options(
                ClientOptions::new()
                    .with_connect_timeout(Duration::from_secs(3))
                    .with_timeout(Duration::from_secs(15))
                    .with_allow_http(
                        std::env::var("AWS_ENDPOINT_URL").is_ok_and(|e| e.starts_with("http://")),
                    ),
            );
        if std::env::var_os("AWS_REGION").is_none()
            && std::env::var_os("AWS_DEFAULT_REGION").is_none()
        {
            builder = builder.with_region("us-east-1");
        }
        let s3 = builder
            .build()
            .map_err(|e| StoreError::Invalid(format!("invoice store s3://{bucket}: {e}")))?;
        let location = format!("s3://{bucket}/{prefix}");
        let objects: Arc<dyn ObjectStore> = if prefix.is_empty() {
            Arc::new(s3)
        } else {
            Arc::new(PrefixStore::new(s3, prefix))
        };
        Ok(InvoiceFiles {
            objects,
            location,
            shared: true,
        })
    }

    /// Where the files are, for logs.
    pub fn location(&self) -> &str {
        &self.location
    }

    /// Whether the invoicing stage writes each PDF as it invoices (object storage that other
    /// services and people read), or the API renders it on its first download (a local
    /// directory).
    pub fn written_when_invoiced(&self) -> bool {
        self.shared
    }

    /// Renders `invoice` as a PDF (on a blocking thread: CPU work) and stores it, replacing
    /// what is there (the same bytes: rendering is deterministic); the PDF.
    pub async fn put_rendered(
        &self,
        invoice: &Invoice,
        bill_to: crate::pdf::BillTo,
    ) -> Result<Bytes> {
        let rendered = invoice.clone();
        let pdf = tokio::task::spawn_blocking(move || crate::pdf::render(&rendered, &bill_to))
            .await
            .map_err(|e| StoreError::Unavailable(format!("rendering the invoice: {e}")))?;
        let pdf = Bytes::from(pdf);
        self.objects
            .put(&Self::path(&invoice.number)?, PutPayload::from(pdf.clone()))
            .await
            .map_err(|e| self.error("put", &invoice.number, e))?;
        Ok(pdf)
    }

    /// `invoice`'s PDF: the stored one, or else rendered now (whom it bills read from `store`)
    /// and stored for the next time.
    pub async fn rendered(
        &self,
        invoice: &Invoice,
        store: &dyn crate::Store,
    ) -> Result<InvoiceFile> {
        if let Some(found) = self.get(&invoice.number).await? {
            return Ok(found);
        }
        let bill_to = crate::pdf::bill_to(store, invoice).await?;
        let pdf = self.put_rendered(invoice, bill_to).await?;
        Ok(InvoiceFile {
            size: pdf.len() as u64,
            bytes: Box::pin(futures::stream::once(async move { Ok(pdf) })),
        })
    }

    /// The key of an invoice's PDF: `invoices/<number>.pdf`.
    pub fn key(number: &str) -> String {
        format!("invoices/{number}.pdf")
    }

    fn path(number: &str) -> Result<Path> {
        Path::parse(Self::key(number))
            .map_err(|e| StoreError::Invalid(format!("invoice number {number}: {e}")))
    }

    /// Stores an invoice's PDF, replacing what is there (the same bytes, when redelivered).
    pub async fn put(&self, number: &str, pdf: Vec<u8>) -> Result<()> {
        self.objects
            .put(&Self::path(number)?, PutPayload::from(pdf))
            .await
            .map_err(|e| self.error("put", number, e))?;
        Ok(())
    }

    /// An invoice's PDF, or `None` when it is not there.
    pub async fn get(&self, number: &str) -> Result<Option<InvoiceFile>> {
        match self.objects.get(&Self::path(number)?).await {
            Ok(found) => Ok(Some(InvoiceFile {
                size: found.meta.size,
                bytes: Box::pin(found.into_stream().map_err(std::io::Error::other)),
            })),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.error("get", number, e)),
        }
    }

    /// A cheap read that fails when the store cannot be reached (a missing object is fine).
    pub async fn healthcheck(&self) -> Result<()> {
        match self.objects.head(&Self::path("healthcheck")?).await {
            Ok(_) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.error("head", "healthcheck", e)),
        }
    }

    /// Every failure may pass (the store is down, throttling, credentials being fixed): the
    /// caller retries.
    fn error(&self, op: &str, number: &str, e: object_store::Error) -> StoreError {
        StoreError::Unavailable(format!(
            "invoice store {}: {op} {}: {e}",
            self.location,
            Self::key(number)
        ))
    }
}

#[cfg(test)]
mod tests {
    use futures::TryStreamExt;

    use super::*;

    #[tokio::test]
    async fn a_local_directory_keeps_each_invoice_under_its_number() {
        let dir = tempfile::tempdir().unwrap();
        let files = InvoiceFiles::open(&format!("file://{}", dir.path().display())).unwrap();
        assert!(files.get("INV-00000001").await.unwrap().is_none());
        files
            .put("INV-00000001", b"%PDF-1.7 one".to_vec())
            .await
            .unwrap();
        files
            .put("INV-00000001", b"%PDF-1.7 one".to_vec())
            .await
            .unwrap();
        let found = files.get("INV-00000001").await.unwrap().expect("stored");
        assert_eq!(found.size, 12);
        let bytes: Vec<Bytes> = found.bytes.try_collect().await.unwrap();
        assert_eq!(bytes.concat(), b"%PDF-1.7 one");
        assert!(dir.path().join("invoices/INV-00000001.pdf").is_file());
        files.healthcheck().await.unwrap();

        assert!(InvoiceFiles::open("ftp://x").is_err());
        assert!(InvoiceFiles::open("s3://").is_err());
    }

    #[tokio::test]
    async fn a_local_invoice_is_rendered_on_first_read_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let files = InvoiceFiles::local(dir.path()).unwrap();
        assert!(!files.written_when_invoiced());
        let invoice = crate::pdf::tests::invoice(2);
        // Neither the customer's account nor the order is in this store: billed to no one named.
        let store = crate::EmbeddedStore::open(&dir.path().join("state")).unwrap();
        let first = files.rendered(&invoice, &store).await.unwrap();
        let bytes: Vec<Bytes> = first.bytes.try_collect().await.unwrap();
        let pdf = bytes.concat();
        assert_eq!(
            pdf,
            crate::pdf::render(&invoice, &crate::pdf::BillTo::default())
        );
        assert_eq!(first.size, pdf.len() as u64);
        let kept = dir.path().join("invoices/INV-00000042.pdf");
        assert_eq!(std::fs::read(&kept).unwrap(), pdf);
        // Read back from the file from now on (a changed file shows it is not rendered again).
        std::fs::write(&kept, b"%PDF-1.7 kept").unwrap();
        let again = files.rendered(&invoice, &store).await.unwrap();
        let bytes: Vec<Bytes> = again.bytes.try_collect().await.unwrap();
        assert_eq!(bytes.concat(), b"%PDF-1.7 kept");
    }
}
