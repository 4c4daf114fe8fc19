//! The S3 backend against a real S3-protocol server: moto's server mode, which `make test`
//! installs and starts (`deploy/dev/stack.sh s3`, `TIDINGS_TEST_S3_ENDPOINT`).

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt, stream};
use sha2::Digest;
mod common;

use common::{chunks, png};
use tidings_attachments::{Blobs, Kind, PutError, S3Config, StorageConfig};

fn endpoint() -> String {
    std::env::var("TIDINGS_TEST_S3_ENDPOINT").unwrap_or_else(|_| "http://127.0.0.1:19500".into())
}

/// A fresh bucket of its own, created on the server.
async fn bucket(prefix: &str) -> Blobs {
    let name = format!("tidings-{}", uuid::Uuid::new_v4().simple());
    let created = reqwest::Client::new()
        .put(format!("{}/{name}", endpoint()))
        .send()
        .await
        .expect("the S3 server answers (make test starts moto)");
    assert!(
        created.status().is_success(),
        "create bucket: {}",
        created.status()
    );
    Blobs::new(&StorageConfig::S3(S3Config {
        bucket: name,
        prefix: prefix.to_owned(),
        endpoint: Some(endpoint()),
        region: "us-east-1".into(),
        access_key_id: "test".into(),
        secret_access_key: "test".to_owned().into(),
    }))
    .unwrap()
}

#[tokio::test]
async fn a_multipart_upload_to_s3_comes_back_byte_for_byte() {
    let blobs = bucket("attachments/v1").await;
    // Larger than one 5 MiB part, so the upload is really multipart.
    let bytes = png(12 * 1024 * 1024 + 5);
    let stored = blobs
        .put("att-1", "image/png", 20 << 20, chunks(&bytes, 256 * 1024))
        .await
        .unwrap();
    assert_eq!(stored.kind, Kind::Png);
    assert_eq!(stored.size, bytes.len() as u64);
    assert_eq!(stored.sha256, hex::encode(sha2::Sha256::digest(&bytes)));
    let back: Vec<Bytes> = blobs
        .get("att-1")
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    assert_eq!(back.concat(), bytes);
    assert_eq!(blobs.keys().await.unwrap(), vec!["att-1".to_owned()]);
    blobs.delete("att-1").await.unwrap();
    assert!(blobs.keys().await.unwrap().is_empty());
}

#[tokio::test]
async fn a_refused_or_cut_off_upload_leaves_no_object_in_the_bucket() {
    let blobs = bucket("").await;
    let e = blobs
        .put("big", "", 6 << 20, chunks(&png(8 << 20), 512 * 1024))
        .await
        .unwrap_err();
    assert!(matches!(e, PutError::TooLarge { .. }), "{e}");
    let first = vec![Ok(Bytes::from(png(6 << 20)))];
    let cut = stream::iter(first).chain(stream::iter(vec![Err("reset".to_owned())]));
    let e = blobs.put("cut", "", 20 << 20, cut).await.unwrap_err();
    assert!(matches!(e, PutError::Source(_)), "{e}");
    assert!(blobs.keys().await.unwrap().is_empty());
}
