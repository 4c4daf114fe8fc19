//! Upload inputs shared by the backends' tests.

use bytes::Bytes;
use futures::stream;

/// A "PNG" of `len` bytes: the signature, then filler.
pub fn png(len: usize) -> Vec<u8> {
    let mut bytes = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR".to_vec();
    bytes.extend((0..len - bytes.len()).map(|i| (i * 7 % 251) as u8));
    bytes
}

/// `bytes` as a client would stream them, `size` at a time.
pub fn chunks(
    bytes: &[u8],
    size: usize,
) -> impl futures::Stream<Item = Result<Bytes, String>> + Send + use<> {
    stream::iter(
        bytes
            .chunks(size)
            .map(|c| Ok(Bytes::copy_from_slice(c)))
            .collect::<Vec<_>>(),
    )
}
