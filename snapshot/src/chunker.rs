//! Content-defined chunking (FastCDC 2020) over any `Read`, in bounded memory.
//!
//! The cut-point search is `fastcdc::v2020::cut`; the buffering is ours because the crate's
//! `StreamCDC` shifts its whole buffer after every chunk (a memmove of up to `max` bytes
//! per chunk) and copies every chunk out. Here input is read into blocks of twice `max`,
//! and a chunk of at least [`SHARE_MIN`] bytes is handed out as a shared view of its block,
//! not a copy: only the undecided tail of a block (the bytes after its last cut point, on
//! average well under one chunk) is copied into the next block. Blocks come back for reuse
//! once the pipeline has dropped every chunk of them.
//!
//! Cut points are exactly those of `cut` over the whole stream: a cut found before the end
//! of the bytes at hand is final (the scan up to it does not depend on later bytes); only
//! "no cut point yet" needs more input, or `max` bytes, or the end of the stream.

use std::io::{self, Read};
use std::ops::{Deref, Range};
use std::sync::Arc;

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

/// Chunks at least this long share their block instead of being copied out of it.
pub const SHARE_MIN: usize = 64 * 1024;

/// Retired blocks kept for reuse per chunker.
const KEEP_RETIRED: usize = 2;

/// The bytes of one chunk: a view of a shared block, or a copy for small chunks.
#[derive(Debug, Clone)]
pub struct Chunk(Repr);

#[derive(Debug, Clone)]
enum Repr {
    Shared(Arc<Vec<u8>>, Range<usize>),
    Owned(Vec<u8>),
}

impl Chunk {
    /// A chunk that owns its bytes (fixed-size page chunks).
    pub(crate) fn owned(bytes: Vec<u8>) -> Self {
        Chunk(Repr::Owned(bytes))
    }
}

impl Deref for Chunk {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match &self.0 {
            Repr::Shared(block, range) => &block[range.clone()],
            Repr::Owned(bytes) => bytes,
        }
    }
}

#[derive(Debug, Default)]
enum Block {
    #[default]
    None,
    /// Ours alone: can be refilled in place.
    Owned(Vec<u8>),
    /// Chunks handed out still point into it.
    Shared(Arc<Vec<u8>>),
}

/// Blocks carried from one input to the next: a reader going through 10,000 small files
/// should not allocate and zero a block for each.
#[derive(Debug, Default)]
pub struct ChunkBuffers {
    block: Block,
    retired: Vec<Arc<Vec<u8>>>,
}

/// Splits a stream into content-defined chunks.
#[derive(Debug)]
pub struct Chunker<R> {
    source: R,
    params: ChunkerParams,
    masks: (u64, u64),
    block: Block,
    retired: Vec<Arc<Vec<u8>>>,
    start: usize,
    end: usize,
    eof: bool,
}

impl<R: Read> Chunker<R> {
    /// Chunks `source` with `params` (assumed validated).
    pub fn new(source: R, params: ChunkerParams) -> Self {
        Self::with_buffers(source, params, ChunkBuffers::default())
    }

    /// Like [`Chunker::new`] but reuses blocks from [`Chunker::into_buffers`].
    pub fn with_buffers(source: R, params: ChunkerParams, buffers: ChunkBuffers) -> Self {
        let masks = select_masks(params.avg as usize, Normalization::Level1);
        Chunker {
            source,
            params,
            masks,
            block: buffers.block,
            retired: buffers.retired,
            start: 0,
            end: 0,
            eof: false,
        }
    }

    /// Gives the blocks back for reuse.
    pub fn into_buffers(mut self) -> ChunkBuffers {
        let block = match std::mem::take(&mut self.block) {
            Block::Shared(b) => {
                self.retire(b);
                Block::None
            }
            other => other,
        };
        ChunkBuffers {
            block,
            retired: self.retired,
        }
    }

    fn block_len(&self) -> usize {
        2 * self.params.max as usize
    }

    fn bytes(&self) -> &[u8] {
        match &self.block {
            Block::None => &[],
            Block::Owned(v) => v,
            Block::Shared(b) => b,
        }
    }

    fn retire(&mut self, block: Arc<Vec<u8>>) {
        if self.retired.len() < KEEP_RETIRED {
            self.retired.push(block);
        }
    }

    /// A block nobody else holds: a retired one whose chunks are all dropped, or a new one.
    fn free_block(&mut self) -> Vec<u8> {
        let len = self.block_len();
        while let Some(i) = self.retired.iter().position(|b| Arc::strong_count(b) == 1) {
            if let Ok(v) = Arc::try_unwrap(self.retired.swap_remove(i)) {
                if v.len() == len {
                    return v;
                }
            }
        }
        vec![0; len]
    }

    /// Moves the undecided bytes to the front of a block we own and reads until it is full
    /// or the stream ends.
    fn fill(&mut self) -> io::Result<()> {
        let (start, end) = (self.start, self.end);
        let mut block = match std::mem::take(&mut self.block) {
            Block::Owned(mut v) if v.len() == self.block_len() => {
                v.copy_within(start..end, 0);
                v
            }
            Block::Shared(shared) => {
                let mut v = self.free_block();
                v[..end - start].copy_from_slice(&shared[start..end]);
                self.retire(shared);
                v
            }
            Block::Owned(_) | Block::None => {
                debug_assert_eq!(start, end);
                self.free_block()
            }
        };
        self.start = 0;
        self.end = end - start;
        let result = loop {
            if self.end == block.len() {
                break Ok(());
            }
            match self.source.read(&mut block[self.end..]) {
                Ok(0) => {
                    self.eof = true;
                    break Ok(());
                }
                Ok(n) => self.end += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => break Err(e),
            }
        };
        self.block = Block::Owned(block);
        result
    }

    /// The next chunk, `None` at end of stream.
    pub fn next_chunk(&mut self) -> io::Result<Option<Chunk>> {
        loop {
            let avail = self.end - self.start;
            if avail > 0 {
                let p = &self.params;
                let (mask_s, mask_l) = self.masks;
                let (_, len) = cut(
                    &self.bytes()[self.start..self.end],
                    p.min as usize,
                    p.avg as usize,
                    p.max as usize,
                    mask_s,
                    mask_l,
                    mask_s << 1,
                    mask_l << 1,
                );
                if len < avail || avail >= p.max as usize || self.eof {
                    return Ok(Some(self.take(len)));
                }
            } else if self.eof {
                return Ok(None);
            }
            self.fill()?;
        }
    }

    fn take(&mut self, len: usize) -> Chunk {
        let range = self.start..self.start + len;
        self.start += len;
        if len < SHARE_MIN {
            return Chunk(Repr::Owned(self.bytes()[range].to_vec()));
        }
        let shared = match std::mem::take(&mut self.block) {
            Block::Owned(v) => Arc::new(v),
            Block::Shared(b) => b,
            Block::None => unreachable!("a chunk comes from a block"),
        };
        self.block = Block::Shared(shared.clone());
        Chunk(Repr::Shared(shared, range))
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
            out.push(ch.to_vec());
        }
        out
    }

    /// Cut points of `cut` with the whole stream in memory: what the chunker must match.
    fn reference(data: &[u8], p: ChunkerParams) -> Vec<usize> {
        let (mask_s, mask_l) = select_masks(p.avg as usize, Normalization::Level1);
        let mut out = vec![];
        let mut pos = 0;
        while pos < data.len() {
            let (_, len) = cut(
                &data[pos..],
                p.min as usize,
                p.avg as usize,
                p.max as usize,
                mask_s,
                mask_l,
                mask_s << 1,
                mask_l << 1,
            );
            out.push(len);
            pos += len;
        }
        out
    }

    /// A reader that returns short reads of varying sizes, as pipes do.
    struct Dribble<'a> {
        data: &'a [u8],
        step: usize,
    }

    impl Read for Dribble<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            self.step = (self.step * 7 + 3) % 50_000 + 1;
            let n = self.step.min(buf.len()).min(self.data.len());
            buf[..n].copy_from_slice(&self.data[..n]);
            self.data = &self.data[n..];
            Ok(n)
        }
    }

    #[test]
    fn cut_points_match_cutting_the_whole_stream_at_once() {
        let p = ChunkerParams {
            min: 4096,
            avg: 16384,
            max: 65536,
        };
        let mut data = pseudo_random(3_000_000, 11);
        // A run of zeroes forces max-size chunks.
        data[1_000_000..1_400_000].fill(0);
        let expected = reference(&data, p);
        for step in [0, 1, 4999] {
            let mut c = Chunker::new(Dribble { data: &data, step }, p);
            let mut got = vec![];
            let mut joined = Vec::with_capacity(data.len());
            while let Some(ch) = c.next_chunk().unwrap() {
                got.push(ch.len());
                joined.extend_from_slice(&ch);
            }
            assert_eq!(got, expected, "step {step}");
            assert_eq!(joined, data);
        }
        // Blocks carried over between inputs, with chunks of the first still held.
        let mut held = vec![];
        let mut buffers = ChunkBuffers::default();
        for seed in 1..4 {
            let input = pseudo_random(300_000 * seed as usize, seed);
            let mut c = Chunker::with_buffers(&input[..], p, buffers);
            let mut got = vec![];
            while let Some(ch) = c.next_chunk().unwrap() {
                got.push(ch.len());
                held.push((
                    ch.clone(),
                    input.clone(),
                    got.iter().sum::<usize>() - ch.len(),
                ));
            }
            buffers = c.into_buffers();
            assert_eq!(got, reference(&input, p));
        }
        for (ch, input, at) in &held {
            assert_eq!(&ch[..], &input[*at..*at + ch.len()]);
        }
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
