//! Attachment bytes, and only the bytes: streamed into object storage — the local filesystem
//! (the embedded default) or S3-compatible storage — through `object_store`, with the size
//! bounded, the SHA-256 computed and the type decided by the bytes on the way in. Their
//! metadata belongs with the ticket's events in Postgres; the bytes never travel on Kafka.
//!
//! An upload that is refused (too large, a type not allowed, a declared type the bytes
//! contradict) or cut off leaves nothing behind: the multipart upload is aborted.

mod kind;

use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use futures::stream::{BoxStream, Stream, StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt as _, WriteMultipart};
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};

pub use kind::{Kind, TextCheck, clean_file_name, sniff};

/// Bytes looked at before the type is decided (every signature `infer` knows fits).
const SNIFF_BYTES: usize = 8 * 1024;
/// Part size of a multipart upload: S3's minimum, so memory stays a few parts whatever the
/// file's size.
const PART_BYTES: usize = 5 * 1024 * 1024;
/// Parts uploading at once.
const PARTS_IN_FLIGHT: usize = 2;

/// Where attachments are kept.
#[derive(Clone)]
pub enum StorageConfig {
    /// Under a directory of the local filesystem.
    Local {
        dir: PathBuf,
    },
    S3(S3Config),
}

/// An S3-compatible bucket.
#[derive(Clone)]
pub struct S3Config {
    pub bucket: String,
    /// Keys are `<prefix>/<key>`; empty for the bucket's root.
    pub prefix: String,
    /// For S3-compatible servers (MinIO, Ceph, moto); `None` for AWS itself.
    pub endpoint: Option<String>,
    pub region: String,
    pub access_key_id: String,
    pub secret_access_key: SecretString,
}

impl std::fmt::Debug for StorageConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StorageConfig::Local { dir } => f.debug_struct("Local").field("dir", dir).finish(),
            StorageConfig::S3(s3) => f
                .debug_struct("S3")
                .field("bucket", &s3.bucket)
                .field("prefix", &s3.prefix)
                .field("endpoint", &s3.endpoint)
                .field("region", &s3.region)
                .finish_non_exhaustive(),
        }
    }
}

/// What an accepted upload became.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    pub size: u64,
    /// Lower-case hex.
    pub sha256: String,
    pub kind: Kind,
}

#[derive(Debug, thiserror::Error)]
pub enum PutError {
    #[error("the file is larger than {limit} bytes")]
    TooLarge { limit: u64 },
    #[error("the file is empty")]
    Empty,
    #[error(
        "files of this type are not accepted ({0}); send PNG, JPEG, GIF, WebP, HEIC, PDF or plain UTF-8 text"
    )]
    TypeNotAllowed(String),
    #[error("the file was declared as {declared} but its content is {found}")]
    Mismatch {
        declared: String,
        found: &'static str,
    },
    #[error("the upload was cut off: {0}")]
    Source(String),
    #[error("storage failed: {0}")]
    Storage(#[from] object_store::Error),
}

#[derive(Clone)]
pub struct Blobs {
    store: Arc<dyn ObjectStore>,
    prefix: Path,
}

impl std::fmt::Debug for Blobs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Blobs")
            .field("store", &self.store.to_string())
            .field("prefix", &self.prefix)
            .finish()
    }
}

impl Blobs {
    pub fn new(config: &StorageConfig) -> Result<Self, object_store::Error> {
        match config {
            StorageConfig::Local { dir } => {
                std::fs::create_dir_all(dir).map_err(|e| object_store::Error::Generic {
                    store: "LocalFileSystem",
                    source: Box::new(e),
                })?;
                let store = object_store::local::LocalFileSystem::new_with_prefix(dir)?;
                Ok(Blobs {
                    store: Arc::new(store),
                    prefix: Path::default(),
                })
            }
            StorageConfig::S3(s3) => {
                let mut builder = object_store::aws::AmazonS3Builder::new()
                    .with_bucket_name(&s3.bucket)
                    .with_region(&s3.region)
                    .with_access_key_id(&s3.access_key_id)
                    .with_secret_access_key(s3.secret_access_key.expose_secret());
                if let Some(endpoint) = &s3.endpoint {
                    builder = builder
                        .with_endpoint(endpoint)
                        .with_allow_http(endpoint.starts_with("http://"))
                        .with_virtual_hosted_style_request(false);
                }
                Ok(Blobs {
                    store: Arc::new(builder.build()?),
                    prefix: Path::from(s3.prefix.trim_matches('/')),
                })
            }
        }
    }

    fn path(&self, key: &str) -> Path {
        self.prefix.clone().join(key)
    }

    /// Streams `chunks` into storage under `key`, at most `max_bytes`, and says what it was.
    /// `declared` is the client's content type (empty or `application/octet-stream` claims
    /// nothing); the bytes decide. Anything refused or cut off is removed again.
    pub async fn put<S, E>(
        &self,
        key: &str,
        declared: &str,
        max_bytes: u64,
        chunks: S,
    ) -> Result<Stored, PutError>
    where
        S: Stream<Item = Result<Bytes, E>> + Send,
        E: std::fmt::Display,
    {
        let upload = self.store.put_multipart(&self.path(key)).await?;
        let mut writer = WriteMultipart::new_with_chunk_size(upload, PART_BYTES);
        match Self::stream_into(&mut writer, declared, max_bytes, chunks).await {
            Ok((size, sha256, kind)) => {
                writer.finish().await?;
                Ok(Stored { size, sha256, kind })
            }
            Err(e) => {
                if let Err(abort) = writer.abort().await {
                    tracing::warn!(key, error = %abort, "aborting a refused upload failed");
                }
                Err(e)
            }
        }
    }

    async fn stream_into<S, E>(
        writer: &mut WriteMultipart,
        declared: &str,
        max_bytes: u64,
        chunks: S,
    ) -> Result<(u64, String, Kind), PutError>
    where
        S: Stream<Item = Result<Bytes, E>> + Send,
        E: std::fmt::Display,
    {
        let mut chunks = std::pin::pin!(chunks);
        let mut head = Vec::with_capacity(SNIFF_BYTES);
        let mut kind = None;
        let mut text = TextCheck::default();
        let mut hasher = Sha256::new();
        let mut size = 0u64;
        loop {
            let next = chunks.next().await;
            let chunk = match next {
                Some(Ok(chunk)) => chunk,
                Some(Err(e)) => return Err(PutError::Source(e.to_string())),
                None => break,
            };
            size += chunk.len() as u64;
            if size > max_bytes {
                return Err(PutError::TooLarge { limit: max_bytes });
            }
            hasher.update(&chunk);
            if kind.is_none() {
                head.extend_from_slice(&chunk);
                if head.len() < SNIFF_BYTES {
                    continue;
                }
                kind = Some(decide(&head, declared, false)?);
                Self::write(writer, &mut text, kind, &head).await?;
                head = Vec::new();
                continue;
            }
            Self::write(writer, &mut text, kind, &chunk).await?;
        }
        if size == 0 {
            return Err(PutError::Empty);
        }
        let kind = match kind {
            Some(kind) => kind,
            None => {
                let kind = decide(&head, declared, true)?;
                Self::write(writer, &mut text, Some(kind), &head).await?;
                kind
            }
        };
        if kind == Kind::Text && !text.finish() {
            return Err(PutError::TypeNotAllowed("binary data".into()));
        }
        Ok((size, hex::encode(hasher.finalize()), kind))
    }

    async fn write(
        writer: &mut WriteMultipart,
        text: &mut TextCheck,
        kind: Option<Kind>,
        bytes: &[u8],
    ) -> Result<(), PutError> {
        if kind == Some(Kind::Text) && !text.feed(bytes) {
            return Err(PutError::TypeNotAllowed("binary data".into()));
        }
        // Bounded memory: wait while too many parts are uploading.
        writer.wait_for_capacity(PARTS_IN_FLIGHT).await?;
        writer.write(bytes);
        Ok(())
    }

    /// The bytes under `key`, streamed.
    pub async fn get(
        &self,
        key: &str,
    ) -> Result<BoxStream<'static, Result<Bytes, object_store::Error>>, object_store::Error> {
        Ok(self.store.get(&self.path(key)).await?.into_stream().boxed())
    }

    /// Removes `key`; a key that is not there is not an error.
    pub async fn delete(&self, key: &str) -> Result<(), object_store::Error> {
        match self.store.delete(&self.path(key)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Every key stored (for tests and for collecting orphans).
    pub async fn keys(&self) -> Result<Vec<String>, object_store::Error> {
        let prefix = (!self.prefix.as_ref().is_empty()).then_some(&self.prefix);
        let prefix_parts = self.prefix.parts().count();
        self.store
            .list(prefix)
            .map_ok(|meta| {
                meta.location
                    .parts()
                    .skip(prefix_parts)
                    .map(|p| p.as_ref().to_owned())
                    .collect::<Vec<_>>()
                    .join("/")
            })
            .try_collect()
            .await
    }
}

/// The type of the head of a file, checked against the declared type.
fn decide(head: &[u8], declared: &str, complete: bool) -> Result<Kind, PutError> {
    let kind = sniff(head, complete).map_err(PutError::TypeNotAllowed)?;
    if !kind.agrees_with(declared) {
        return Err(PutError::Mismatch {
            declared: declared.to_owned(),
            found: kind.mime(),
        });
    }
    Ok(kind)
}
