//! A set of keys too large for memory, each with 32 bits of flags, on disk as sorted runs: each
//! run keeps a Bloom filter and the first key of each block in memory, so that a key not there
//! costs a few hashes and a key there one block read (from the page cache, mostly). A key in
//! several runs has the union of their flags.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::runtime::memory::StateMemory;

/// Bytes of keys per block: a probe reads one.
const BLOCK: usize = 4_096;
/// Runs are merged into one past this many (a probe looks at each run's filter).
const MAX_RUNS: usize = 6;
/// Bytes of keys sorted at a time into a run.
const RUN_BYTES: usize = 32 << 20;
/// Bloom filter bits per key and hashes per key: about 1% false positives.
const BITS_PER_KEY: usize = 10;
const HASHES: u64 = 7;

/// A key and its flags.
pub type Entry = (Box<[u8]>, u32);

/// Keys and their flags on disk, in sorted runs.
#[derive(Default)]
pub struct KeyRuns {
    runs: Vec<Run>,
}

impl KeyRuns {
    /// Whether no key is on disk.
    pub fn is_empty(&self) -> bool {
        self.runs.is_empty()
    }

    /// Keys on disk.
    pub fn len(&self) -> usize {
        self.runs.iter().map(|r| r.keys).sum()
    }

    /// Bytes held in memory for them: filters and block indexes.
    pub fn memory_bytes(&self) -> usize {
        self.runs.iter().map(Run::memory_bytes).sum()
    }

    /// Bytes on disk.
    pub fn disk_bytes(&self) -> u64 {
        self.runs.iter().map(|r| r.end).sum()
    }

    /// Writes `keys` with their flags as new runs (sorted a bounded part at a time, so that
    /// spilling needs little memory beside what it frees), merging the runs into one when they
    /// are many.
    pub fn spill<K: AsRef<[u8]>>(
        &mut self,
        memory: &StateMemory,
        keys: impl IntoIterator<Item = (K, u32)>,
    ) -> Result<()> {
        let mut part = Part::default();
        for (key, flags) in keys {
            part.push(key.as_ref(), flags)?;
            if part.bytes.len() >= RUN_BYTES {
                self.runs.push(part.write(memory)?);
                part = Part::default();
            }
        }
        if !part.spans.is_empty() {
            self.runs.push(part.write(memory)?);
        }
        if self.runs.len() > MAX_RUNS {
            self.merge(memory)?;
        }
        Ok(())
    }

    /// Merges every run into one.
    fn merge(&mut self, memory: &StateMemory) -> Result<()> {
        let mut writer = RunWriter::new(memory, self.len())?;
        let mut readers = self
            .runs
            .iter()
            .map(Run::reader)
            .collect::<Result<Vec<_>>>()?;
        let mut heap = BinaryHeap::new();
        for (i, r) in readers.iter_mut().enumerate() {
            if let Some((k, f)) = r.next_key()? {
                heap.push(Reverse((k, i, f)));
            }
        }
        let mut next = |i: usize, heap: &mut BinaryHeap<_>| -> Result<()> {
            if let Some((k, f)) = readers[i].next_key()? {
                heap.push(Reverse((k, i, f)));
            }
            Ok(())
        };
        while let Some(Reverse((key, i, mut flags))) = heap.pop() {
            next(i, &mut heap)?;
            while heap.peek().is_some_and(|Reverse((k, _, _))| *k == key) {
                let Some(Reverse((_, j, f))) = heap.pop() else {
                    break;
                };
                flags |= f;
                next(j, &mut heap)?;
            }
            writer.push(&key, flags)?;
        }
        self.runs = vec![writer.finish()?];
        Ok(())
    }

    /// The flags on disk of each of `probes`, sorted ascending (0 for a key not there).
    pub fn flags_sorted(&self, probes: &[&[u8]]) -> Result<Vec<u32>> {
        let mut found = vec![0; probes.len()];
        for run in &self.runs {
            let mut block = Block::default();
            for (i, key) in probes.iter().enumerate() {
                found[i] |= run.flags(key, &mut block)?;
            }
        }
        Ok(found)
    }

    /// Every key on disk with its flags, run after run (a key in several runs once in each).
    pub fn keys(&self) -> impl Iterator<Item = Result<(Box<[u8]>, u32)>> + '_ {
        self.runs.iter().flat_map(|run| {
            let mut reader = run.reader();
            std::iter::from_fn(move || match &mut reader {
                Ok(r) => r.next_key().transpose(),
                Err(e) => Some(Err(Error::Internal(e.to_string()))),
            })
        })
    }
}

/// Keys gathered for a run: their bytes end to end, and each one's place and flags.
#[derive(Default)]
struct Part {
    bytes: Vec<u8>,
    spans: Vec<(u32, u32, u32)>,
}

impl Part {
    fn push(&mut self, key: &[u8], flags: u32) -> Result<()> {
        let too_long = || Error::Internal("a key of 4 GB or more".into());
        let start = u32::try_from(self.bytes.len()).map_err(|_| too_long())?;
        let len = u32::try_from(key.len()).map_err(|_| too_long())?;
        self.bytes.extend_from_slice(key);
        self.spans.push((start, len, flags));
        Ok(())
    }

    fn key(&self, (start, len, _): (u32, u32, u32)) -> &[u8] {
        &self.bytes[start as usize..(start + len) as usize]
    }

    /// The keys sorted (a key twice once, with the union of its flags) as a run.
    fn write(mut self, memory: &StateMemory) -> Result<Run> {
        let mut spans = std::mem::take(&mut self.spans);
        spans.sort_unstable_by(|a, b| self.key(*a).cmp(self.key(*b)));
        let mut writer = RunWriter::new(memory, spans.len())?;
        let mut spans = spans.into_iter().peekable();
        while let Some(span) = spans.next() {
            let key = self.key(span);
            let mut flags = span.2;
            while let Some(more) = spans.next_if(|s| self.key(*s) == key) {
                flags |= more.2;
            }
            writer.push(key, flags)?;
        }
        writer.finish()
    }
}

/// One sorted run: keys as a little-endian u32 length, the bytes and the flags (u32), in
/// blocks.
struct Run {
    /// The file (deleted when the last handle to it is dropped).
    file: Arc<dyn datafusion::execution::SpillFile>,
    handle: File,
    /// The first key of each block and where the block starts.
    index: Vec<(Box<[u8]>, u64)>,
    end: u64,
    bloom: Bloom,
    keys: usize,
}

impl Run {
    fn memory_bytes(&self) -> usize {
        self.bloom.bits.len() * 8 + self.index.iter().map(|(k, _)| k.len() + 32).sum::<usize>()
    }

    fn reader(&self) -> Result<RunReader> {
        let path = path_of(&self.file)?;
        let handle =
            File::open(path).map_err(|e| Error::io(format!("opening {}", path.display()), e))?;
        Ok(RunReader {
            reader: BufReader::with_capacity(64 << 10, handle),
            left: self.keys,
        })
    }

    /// The flags of `key` in the run (0 when it is not there); `block` keeps the last block
    /// read, for sorted probes.
    fn flags(&self, key: &[u8], block: &mut Block) -> Result<u32> {
        if !self.bloom.may_hold(key) {
            return Ok(0);
        }
        let at = self
            .index
            .partition_point(|(first, _)| first.as_ref() <= key);
        if at == 0 {
            return Ok(0);
        }
        let b = at - 1;
        if block.at != Some(b) {
            let start = self.index[b].1;
            let end = self.index.get(at).map_or(self.end, |(_, o)| *o);
            block.bytes.resize((end - start) as usize, 0);
            self.handle
                .read_exact_at(&mut block.bytes, start)
                .map_err(|e| Error::io("reading a key run", e))?;
            block.at = Some(b);
        }
        let word = |b: &[u8]| u32::from_le_bytes(b[..4].try_into().expect("4 bytes"));
        let mut rest = &block.bytes[..];
        while rest.len() >= 8 {
            let len = word(rest) as usize;
            let k = &rest[4..4 + len];
            match k.cmp(key) {
                std::cmp::Ordering::Equal => return Ok(word(&rest[4 + len..])),
                std::cmp::Ordering::Greater => return Ok(0),
                std::cmp::Ordering::Less => rest = &rest[8 + len..],
            }
        }
        Ok(0)
    }
}

/// The block of a run last read.
#[derive(Default)]
struct Block {
    at: Option<usize>,
    bytes: Vec<u8>,
}

/// Writes a run a key at a time, in ascending order.
struct RunWriter {
    file: Arc<dyn datafusion::execution::SpillFile>,
    out: BufWriter<File>,
    index: Vec<(Box<[u8]>, u64)>,
    offset: u64,
    block_start: u64,
    bloom: Bloom,
    keys: usize,
}

impl RunWriter {
    /// A run of about `keys` keys (its filter's size).
    fn new(memory: &StateMemory, keys: usize) -> Result<Self> {
        let file = memory.temp_file("spilling keys seen")?;
        let path = path_of(&file)?;
        let out =
            File::create(path).map_err(|e| Error::io(format!("creating {}", path.display()), e))?;
        Ok(RunWriter {
            file,
            out: BufWriter::with_capacity(64 << 10, out),
            index: Vec::new(),
            offset: 0,
            block_start: 0,
            bloom: Bloom::new(keys),
            keys: 0,
        })
    }

    fn push(&mut self, key: &[u8], flags: u32) -> Result<()> {
        let len = u32::try_from(key.len())
            .map_err(|_| Error::Internal("a key of 4 GB or more".into()))?;
        if self.index.is_empty() || (self.offset - self.block_start) as usize >= BLOCK {
            self.index.push((key.into(), self.offset));
            self.block_start = self.offset;
        }
        let write = |out: &mut BufWriter<File>| -> std::io::Result<()> {
            out.write_all(&len.to_le_bytes())?;
            out.write_all(key)?;
            out.write_all(&flags.to_le_bytes())
        };
        write(&mut self.out).map_err(|e| Error::io("writing a key run", e))?;
        self.offset += 8 + key.len() as u64;
        self.bloom.insert(key);
        self.keys += 1;
        Ok(())
    }

    fn finish(self) -> Result<Run> {
        let handle = self
            .out
            .into_inner()
            .map_err(|e| Error::io("writing a key run", e.into_error()))?;
        handle
            .sync_data()
            .map_err(|e| Error::io("writing a key run", e))?;
        let path = path_of(&self.file)?;
        let handle =
            File::open(path).map_err(|e| Error::io(format!("opening {}", path.display()), e))?;
        Ok(Run {
            file: self.file,
            handle,
            index: self.index,
            end: self.offset,
            bloom: self.bloom,
            keys: self.keys,
        })
    }
}

/// Reads a run's keys in order.
struct RunReader {
    reader: BufReader<File>,
    left: usize,
}

impl RunReader {
    fn next_key(&mut self) -> Result<Option<(Box<[u8]>, u32)>> {
        if self.left == 0 {
            return Ok(None);
        }
        let read = |e| Error::io("reading a key run", e);
        let mut word = [0u8; 4];
        self.reader.read_exact(&mut word).map_err(read)?;
        let mut key = vec![0u8; u32::from_le_bytes(word) as usize];
        self.reader.read_exact(&mut key).map_err(read)?;
        self.reader.read_exact(&mut word).map_err(read)?;
        self.left -= 1;
        Ok(Some((key.into(), u32::from_le_bytes(word))))
    }
}

fn path_of(file: &Arc<dyn datafusion::execution::SpillFile>) -> Result<&Path> {
    file.path()
        .ok_or_else(|| Error::Internal("spill files must be local files".into()))
}

/// A Bloom filter over byte strings: about 1% false positives at the number of keys it was
/// made for.
pub struct Bloom {
    bits: Vec<u64>,
    hasher: ahash::RandomState,
}

impl Bloom {
    /// A filter for about `keys` keys.
    pub fn new(keys: usize) -> Self {
        let words = (keys.max(1) * BITS_PER_KEY).div_ceil(64);
        Bloom {
            bits: vec![0; words],
            hasher: ahash::RandomState::with_seeds(0x7472_6962, 0x7574_6172, 0x7920_6b65, 0x7973),
        }
    }

    /// The bit positions of `key`, by double hashing.
    fn positions(&self, key: &[u8]) -> impl Iterator<Item = usize> {
        let h = self.hasher.hash_one(key);
        let (h1, h2) = (h, h.rotate_left(32) | 1);
        let n = (self.bits.len() * 64) as u64;
        (0..HASHES).map(move |i| (h1.wrapping_add(i.wrapping_mul(h2)) % n) as usize)
    }

    pub fn insert(&mut self, key: &[u8]) {
        for p in self.positions(key).collect::<Vec<_>>() {
            self.bits[p / 64] |= 1 << (p % 64);
        }
    }

    /// Whether `key` may have been inserted (false: it was not).
    pub fn may_hold(&self, key: &[u8]) -> bool {
        self.positions(key)
            .all(|p| self.bits[p / 64] & (1 << (p % 64)) != 0)
    }

    /// Bytes it holds.
    pub fn bytes(&self) -> usize {
        self.bits.len() * 8
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use rand::{Rng, SeedableRng};

    use super::*;
    use crate::runtime::operator::tests::seed;

    /// Spilled in runs (a key again in a later run with more flags) and merged, every probe
    /// answers with the union of the flags spilled for it, as a map would.
    #[test]
    fn runs_answer_as_a_map_of_flags() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed());
        let memory = StateMemory::new(Some(1 << 30)).unwrap();
        let mut runs = KeyRuns::default();
        let mut oracle: HashMap<Box<[u8]>, u32> = HashMap::new();
        for round in 0..10 {
            let mut fresh = Vec::new();
            for _ in 0..rng.random_range(1..5_000) {
                let len = rng.random_range(0..40);
                let key: Box<[u8]> = (0..len).map(|_| rng.random_range(0..4u8)).collect();
                let flags = 1 << rng.random_range(0..4);
                *oracle.entry(key.clone()).or_default() |= flags;
                fresh.push((key, flags));
            }
            runs.spill(&memory, fresh).unwrap();
            assert!(runs.runs.len() <= MAX_RUNS, "round {round}");
            let mut probes: Vec<Box<[u8]>> = (0..3_000)
                .map(|_| {
                    let len = rng.random_range(0..40);
                    (0..len).map(|_| rng.random_range(0..4u8)).collect()
                })
                .collect();
            probes.sort();
            let refs: Vec<&[u8]> = probes.iter().map(|p| p.as_ref()).collect();
            let found = runs.flags_sorted(&refs).unwrap();
            for (p, f) in probes.iter().zip(found) {
                assert_eq!(
                    f,
                    oracle.get(p).copied().unwrap_or(0),
                    "round {round}: {p:?}"
                );
            }
        }
        let mut back: HashMap<Box<[u8]>, u32> = HashMap::new();
        for entry in runs.keys() {
            let (k, f) = entry.unwrap();
            *back.entry(k).or_default() |= f;
        }
        assert_eq!(back, oracle);
        assert!(runs.disk_bytes() > 0);
        assert!(runs.memory_bytes() < runs.disk_bytes() as usize);
    }
}
