//! Content-defined chunking (FastCDC 2020) over any `Read`, in bounded memory.
//!
//! The cut-point search is `fastcdc::v2020::cut`; the buffering is ours because the crate's
//! `StreamCDC` shifts its whole buffer after every chunk, which costs a memmove of up to
//! `max` bytes per chunk. Here the buffer is twice `max` and is compacted only when less
//! than `max` bytes remain, so each byte is moved at most about once.

use std::io::{self, Read};

use fastcdc::v2020::{cut, select_masks, Normalization};
use serde::{Deserialize, Serialize};

/// Chunk size bounds, recorded in the repository config so every snapshot of a repository
/// cuts the same data at the same places (otherwise dedup across snapshots would fail).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChunkerParams {
    /// No cut before this many bytes (except at end of stream).
    pub min: u32,
    /// Target average chunk size.
    pub avg: u32,
    /// Forced cut at this many bytes.
    pub max: u32,
}

impl Default for ChunkerParams {
    /// 256 KiB / 1 MiB / 4 MiB: large chunks keep per-object overhead (one file or one S3
    /// request each) low; a 1% change then rewrites a few MiB.
    fn default() -> Self {
        ChunkerParams {
            min: 256 * 1024,
            avg: 1024 * 1024,
            max: 4 * 1024 * 1024,
        }
    }
}

impl ChunkerParams {
    /// Checks the bounds against what FastCDC 2020 supports.
    pub fn validate(&self) -> Result<(), String> {
        use fastcdc::v2020::{
            AVERAGE_MAX, AVERAGE_MIN, MAXIMUM_MAX, MAXIMUM_MIN, MINIMUM_MAX, MINIMUM_MIN,
        };
        let (min, avg, max) = (self.min as usize, self.avg as usize, self.max as usize);
        let ok = (MINIMUM_MIN..=MINIMUM_MAX).contains(&min)
            && (AVERAGE_MIN..=AVERAGE_MAX).contains(&avg)
            && (MAXIMUM_MIN..=MAXIMUM_MAX).contains(&max)
            && min <= avg
            && avg <= max
            && min % 2 == 0
            && avg % 2 == 0
            && max % 2 == 0;
        if ok {
            Ok(())
        } else {
            Err(format!("unsupported chunker bounds {self:?}"))
        }
    }
}

/// Splits a stream into content-defined chunks.
#[derive(Debug)]
pub struct Chunker<R> {
    source: R,
    params: ChunkerParams,
    masks: (u64, u64),
    buf: Vec<u8>,
    start: usize,
    end: usize,
    eof: bool,
}

impl<R: Read> Chunker<R> {
    /// Chunks `source` with `params` (assumed validated).
    pub fn new(source: R, params: ChunkerParams) -> Self {
        Self::with_buffer(source, params, Vec::new())
    }

    /// Like [`Chunker::new`] but reuses a buffer from [`Chunker::into_buffer`]: a reader
    /// going through 10,000 small files should not allocate and zero 8 MiB for each.
    pub fn with_buffer(source: R, params: ChunkerParams, mut buf: Vec<u8>) -> Self {
        let masks = select_masks(params.avg as usize, Normalization::Level1);
        buf.resize(2 * params.max as usize, 0);
        Chunker {
            source,
            params,
            masks,
            buf,
            start: 0,
            end: 0,
            eof: false,
        }
    }

    /// Gives the buffer back for reuse.
    pub fn into_buffer(self) -> Vec<u8> {
        self.buf
    }

    fn fill(&mut self) -> io::Result<()> {
        if self.eof || self.end - self.start >= self.params.max as usize {
            return Ok(());
        }
        self.buf.copy_within(self.start..self.end, 0);
        self.end -= self.start;
        self.start = 0;
        while self.end < self.buf.len() {
            match self.source.read(&mut self.buf[self.end..]) {
                Ok(0) => {
                    self.eof = true;
                    break;
                }
                Ok(n) => self.end += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// The next chunk, `None` at end of stream.
    pub fn next_chunk(&mut self) -> io::Result<Option<Vec<u8>>> {
        self.fill()?;
        if self.start == self.end {
            return Ok(None);
        }
        let p = &self.params;
        let (mask_s, mask_l) = self.masks;
        let (_, len) = cut(
            &self.buf[self.start..self.end],
            p.min as usize,
            p.avg as usize,
            p.max as usize,
            mask_s,
            mask_l,
            mask_s << 1,
            mask_l << 1,
        );
        let chunk = self.buf[self.start..self.start + len].to_vec();
        self.start += len;
        Ok(Some(chunk))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pseudo_random(n: usize, seed: u64) -> Vec<u8> {
        let mut x = seed | 1;
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    fn chunks(data: &[u8], params: ChunkerParams) -> Vec<Vec<u8>> {
        let mut c = Chunker::new(data, params);
        let mut out = vec![];
        while let Some(ch) = c.next_chunk().unwrap() {
            out.push(ch);
        }
        out
    }

    #[test]
    fn chunks_concatenate_to_input_within_bounds() {
        let p = ChunkerParams {
            min: 4096,
            avg: 16384,
            max: 65536,
        };
        p.validate().unwrap();
        let data = pseudo_random(1_000_000, 3);
        let cs = chunks(&data, p);
        assert_eq!(cs.concat(), data);
        for c in &cs[..cs.len() - 1] {
            assert!(c.len() >= 4096 && c.len() <= 65536, "{}", c.len());
        }
        assert!(chunks(&[], p).is_empty());
    }

    #[test]
    fn an_insertion_only_changes_nearby_chunks() {
        let p = ChunkerParams {
            min: 4096,
            avg: 16384,
            max: 65536,
        };
        let data = pseudo_random(2_000_000, 5);
        let mut edited = data.clone();
        edited.splice(1_000_000..1_000_000, b"inserted".iter().copied());
        let a = chunks(&data, p);
        let b = chunks(&edited, p);
        let common = b.iter().filter(|c| a.contains(c)).count();
        assert!(
            common + 3 >= b.len(),
            "{common} of {} chunks shared",
            b.len()
        );
    }

    #[test]
    fn default_params_are_valid() {
        ChunkerParams::default().validate().unwrap();
    }
}
