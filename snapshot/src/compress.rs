//! zstd compression of chunks and manifests (repository format 2).
//!
//! A chunk is compressed alone, as one zstd frame with its content size, so any chunk can
//! be read, decompressed and verified by itself (a packed chunk too). It is stored
//! compressed only when that saves at least 1/32 of it: data that does not compress (media,
//! archives, encrypted files) costs one attempt and is stored as it is, with nothing to
//! undo on restore. Compression happens before sealing; ids and hashes are those of the
//! plaintext, so dedup does not depend on the compressor, and verification decompresses.

use std::cell::RefCell;

/// A compressed chunk must save at least `len / SAVE_DIVISOR` bytes to be kept compressed.
const SAVE_DIVISOR: usize = 32;

thread_local! {
    static DECOMPRESSOR: RefCell<Option<zstd::bulk::Decompressor<'static>>> =
        const { RefCell::new(None) };
}

/// Decompresses one frame into `out`, which must be exactly as long as the plaintext is
/// expected to be; returns the decompressed length (an error if the frame is damaged or
/// would not fit).
pub(crate) fn decompress_into(frame: &[u8], out: &mut [u8]) -> std::io::Result<usize> {
    DECOMPRESSOR.with(|d| {
        let mut d = d.borrow_mut();
        if d.is_none() {
            *d = Some(zstd::bulk::Decompressor::new()?);
        }
        d.as_mut()
            .expect("just set")
            .decompress_to_buffer(frame, out)
    })
}

/// Compresses a whole object (a manifest).
pub(crate) fn compress_whole(data: &[u8], level: i32) -> Vec<u8> {
    zstd::bulk::compress(data, level).expect("zstd compresses any input at a valid level")
}

/// Decompresses a whole object whose frame records its size, refusing more than `limit`.
pub(crate) fn decompress_whole(frame: &[u8], limit: u64) -> Result<Vec<u8>, String> {
    let size = zstd::zstd_safe::get_frame_content_size(frame)
        .map_err(|_| "not a zstd frame".to_string())?
        .ok_or_else(|| "frame without content size".to_string())?;
    if size > limit {
        return Err(format!(
            "claims {size} bytes, more than the {limit} allowed"
        ));
    }
    let mut out = vec![0u8; size as usize];
    let n = decompress_into(frame, &mut out).map_err(|e| e.to_string())?;
    if n as u64 != size {
        return Err(format!("decompressed to {n} bytes, frame says {size}"));
    }
    Ok(out)
}

/// One pipeline worker's compressor and buffer, reused across chunks.
pub(crate) struct ChunkCompressor {
    inner: zstd::bulk::Compressor<'static>,
    buf: Vec<u8>,
}

impl ChunkCompressor {
    /// A compressor at `level` (validated when the repository was opened).
    pub(crate) fn new(level: i32) -> Self {
        ChunkCompressor {
            inner: zstd::bulk::Compressor::new(level).expect("valid zstd level"),
            buf: Vec::new(),
        }
    }

    /// The compressed frame of `data` if it saves enough to be worth storing, else `None`.
    pub(crate) fn compress(&mut self, data: &[u8]) -> Option<&[u8]> {
        let limit = data.len() - data.len() / SAVE_DIVISOR;
        if data.len() < 64 || limit == 0 {
            return None;
        }
        if self.buf.len() < limit {
            self.buf.resize(limit, 0);
        }
        // A frame that would not fit in `limit` bytes fails with "destination too small":
        // that is the "does not compress" answer, not an error.
        match self.inner.compress_to_buffer(data, &mut self.buf[..limit]) {
            Ok(n) if n < data.len() => Some(&self.buf[..n]),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_compresses_and_random_bytes_do_not() {
        let mut c = ChunkCompressor::new(3);
        let text = b"stack revision rollback ".repeat(4000);
        let frame = c.compress(&text).expect("text compresses").to_vec();
        assert!(frame.len() < text.len() / 10, "{}", frame.len());
        let mut out = vec![0u8; text.len()];
        assert_eq!(decompress_into(&frame, &mut out).unwrap(), text.len());
        assert_eq!(out, text);

        let mut x = 0x9e3779b97f4a7c15u64;
        let random: Vec<u8> = (0..100_000)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        assert!(c.compress(&random).is_none());
        assert!(c.compress(b"tiny").is_none());
    }

    #[test]
    fn a_damaged_frame_or_a_wrong_length_is_an_error() {
        let mut c = ChunkCompressor::new(3);
        let text = b"0123456789".repeat(1000);
        let mut frame = c.compress(&text).unwrap().to_vec();
        let mut short = vec![0u8; text.len() - 1];
        assert!(decompress_into(&frame, &mut short).is_err());
        let last = frame.len() - 3;
        frame[last] ^= 0xff;
        frame.truncate(frame.len() - 1);
        let mut out = vec![0u8; text.len()];
        assert!(decompress_into(&frame, &mut out).is_err());
    }

    #[test]
    fn whole_objects_round_trip_within_their_limit() {
        let data = b"{\"entries\":[]}".repeat(100);
        let frame = compress_whole(&data, 3);
        assert_eq!(decompress_whole(&frame, 1 << 20).unwrap(), data);
        assert!(decompress_whole(&frame, 10)
            .unwrap_err()
            .contains("more than"));
        assert!(decompress_whole(b"{not zstd}", 1 << 20).is_err());
    }
}
