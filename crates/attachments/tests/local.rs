//! The local-filesystem backend, as `make run` and the tests use it: a real directory.

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt, stream};
use sha2::Digest;
mod common;

use common::{chunks, png};
use tidings_attachments::{Blobs, Kind, PutError, StorageConfig};

struct Dir(std::path::PathBuf);

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn local() -> (Blobs, Dir) {
    let dir = std::env::temp_dir().join(format!("tidings-blobs-{}", uuid::Uuid::new_v4()));
    let blobs = Blobs::new(&StorageConfig::Local { dir: dir.clone() }).unwrap();
    (blobs, Dir(dir))
}

/// Every file below `dir`, staging files included.
fn files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = vec![];
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(files(&path));
        } else {
            out.push(path);
        }
    }
    out
}

#[tokio::test]
async fn a_file_streamed_in_comes_back_byte_for_byte_with_its_hash() {
    let (blobs, _dir) = local();
    let bytes = png(3 * 1024 * 1024 + 17);
    let stored = blobs
        .put("a1", "image/png", 20 << 20, chunks(&bytes, 64 * 1024))
        .await
        .unwrap();
    assert_eq!(stored.kind, Kind::Png);
    assert_eq!(stored.size, bytes.len() as u64);
    assert_eq!(stored.sha256, hex::encode(sha2::Sha256::digest(&bytes)));
    let back: Vec<Bytes> = blobs.get("a1").await.unwrap().try_collect().await.unwrap();
    assert_eq!(back.concat(), bytes);
    assert_eq!(blobs.keys().await.unwrap(), vec!["a1".to_owned()]);
    blobs.delete("a1").await.unwrap();
    assert!(blobs.keys().await.unwrap().is_empty());
    blobs.delete("a1").await.expect("deleting twice is fine");
}

#[tokio::test]
async fn refused_and_cut_off_uploads_leave_nothing_behind() {
    let (blobs, dir) = local();
    // Over the limit.
    let big = png(3 << 20);
    let e = blobs
        .put("big", "", 2 << 20, chunks(&big, 256 * 1024))
        .await
        .unwrap_err();
    assert!(
        matches!(e, PutError::TooLarge { limit } if limit == 2 << 20),
        "{e}"
    );
    // Cut off in the middle.
    let first: Vec<Result<Bytes, String>> = vec![Ok(Bytes::from(png(1 << 20)))];
    let cut = stream::iter(first).chain(stream::iter(vec![Err("connection reset".to_owned())]));
    let e = blobs.put("cut", "", 20 << 20, cut).await.unwrap_err();
    assert!(matches!(e, PutError::Source(_)), "{e}");
    // An executable named as a PNG, and a PNG declared as text.
    let elf = b"\x7fELF\x02\x01\x01\0\0\0\0\0\0\0\0\0".repeat(100);
    let e = blobs
        .put("exe", "image/png", 20 << 20, chunks(&elf, 1024))
        .await
        .unwrap_err();
    assert!(
        matches!(e, PutError::TypeNotAllowed(ref t) if t == "application/x-executable"),
        "{e}"
    );
    let e = blobs
        .put("lie", "text/plain", 20 << 20, chunks(&png(4096), 1024))
        .await
        .unwrap_err();
    assert!(
        matches!(
            e,
            PutError::Mismatch {
                found: "image/png",
                ..
            }
        ),
        "{e}"
    );
    // Text that turns binary after the first 8 KiB.
    let mut text = "line of a log\n".repeat(1000).into_bytes();
    text.extend_from_slice(b"\0\0\0");
    let e = blobs
        .put("log", "text/plain", 20 << 20, chunks(&text, 4096))
        .await
        .unwrap_err();
    assert!(matches!(e, PutError::TypeNotAllowed(_)), "{e}");
    let empty = blobs
        .put(
            "empty",
            "",
            20 << 20,
            stream::iter(Vec::<Result<Bytes, String>>::new()),
        )
        .await
        .unwrap_err();
    assert!(matches!(empty, PutError::Empty));

    assert!(blobs.keys().await.unwrap().is_empty());
    assert!(files(&dir.0).is_empty(), "left behind: {:?}", files(&dir.0));
}

#[tokio::test]
async fn a_small_text_file_is_text() {
    let (blobs, _dir) = local();
    let csv = "tx,amount\n0xabc,12.50 €\n";
    let stored = blobs
        .put("t", "text/csv", 1024, chunks(csv.as_bytes(), 5))
        .await
        .unwrap();
    assert_eq!(stored.kind, Kind::Text);
    assert_eq!(stored.size, csv.len() as u64);
}
