//! The `file` source: CSV, JSON-lines and Parquet files in a directory, glob or object-store URL,
//! read as a bounded input that remembers which files (and how far into the current one) it has read.

pub mod location;

use std::collections::{BTreeSet, VecDeque};
use std::num::NonZeroUsize;
use std::sync::Arc;

use arrow::compute::cast;
use arrow::datatypes::{Field, Schema, SchemaRef};
use arrow::record_batch::RecordBatch;
use async_trait::async_trait;
use futures::StreamExt;
use object_store::path::Path;
use object_store::{ObjectMeta, ObjectStore, ObjectStoreExt};
use parquet::arrow::async_reader::{ParquetObjectReader, ParquetRecordBatchStream};
use parquet::arrow::ParquetRecordBatchStreamBuilder;
use serde::{Deserialize, Serialize};

use crate::error::{ConnectorError, Result};
use crate::format::{decode_records, split_records, CsvDecoder, JsonDecoder, RecordDecoder};
use crate::options::{OptionSpec, Options};
use crate::{BadRecord, Source, SourceBatch, SourceConnector, SourcePosition, SourceSpec};
use location::FileLocation;

/// Bytes read from a file per block; a block becomes one batch (about 8,000 Nexmark bids as JSON
/// lines). Every block in flight is held twice, raw and decoded: Nexmark q16 over 10 M bids as
/// JSON lines peaked at 570 MB with 4 MB blocks and 4 batches in the pipeline's channel, 479 MB
/// with 2 MB blocks and 2 batches, in the same CPU time (q0: 3.4 CPU-s either way; 1 MB blocks
/// were no lighter and slower).
const BLOCK_BYTES: u64 = 2 << 20;
/// Blocks decoded at once (CSV, JSON): one per core plus one, so a core never waits for the next
/// block to be read; decoded on the blocking pool and emitted in file order, so positions stay
/// exact. (Measured on 2 cores, q0 over JSON lines: 2 blocks 2.05 s, 3 blocks 1.91 s, 4 and 6
/// blocks no faster, each block costing 8 MB more.)
fn decode_parallelism() -> usize {
    std::thread::available_parallelism()
        .map(NonZeroUsize::get)
        .unwrap_or(1)
        .clamp(1, 16)
        + 1
}
/// Rows per Parquet batch.
const PARQUET_BATCH_ROWS: usize = 32 * 1024;
/// How often a streaming file source looks for new files.
const WATCH_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);
/// Records sampled to infer a schema.
const INFER_RECORDS: usize = 1000;

const OPTIONS: &[OptionSpec] = &[
    OptionSpec::required(
        "path",
        "directory, glob or URL of the files, e.g. '/data/in/*.csv'",
    ),
    OptionSpec::optional(
        "format",
        "csv, json or parquet (default: from the file extension)",
    ),
    OptionSpec::optional(
        "header",
        "csv: whether the first line holds column names (default true)",
    ),
    OptionSpec::optional("delimiter", "csv: field delimiter (default ',')"),
    OptionSpec::optional(
        "max_record_bytes",
        "csv, json: longest record accepted (default 64 MB); a longer one is rejected into tributary.errors",
    ),
];

/// Longest CSV or JSON record read by default: a longer one is a bad record, not a bigger block.
const DEFAULT_MAX_RECORD_BYTES: u64 = 64 << 20;
/// Bytes of a rejected record kept in its error entry.
const RAW_EXCERPT_BYTES: usize = 4096;

/// File formats the source reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileFormat {
    /// Comma-separated values.
    Csv,
    /// One JSON object per line.
    Json,
    /// Apache Parquet.
    Parquet,
}

/// Parsed options of a file source.
#[derive(Debug, Clone)]
pub struct FileSourceOptions {
    /// Where the files are.
    pub location: FileLocation,
    /// How to decode them.
    pub format: FileFormat,
    /// CSV: first line is a header.
    pub header: bool,
    /// CSV: field delimiter.
    pub delimiter: u8,
    /// CSV, JSON: longest record read; longer ones are rejected with their position.
    pub max_record_bytes: u64,
}

impl FileSourceOptions {
    async fn parse(spec: &SourceSpec) -> Result<Self> {
        let opts = Options::validate("file", OPTIONS, &spec.options)?;
        let path = opts.require("path")?;
        let location = FileLocation::parse(path)?;
        let format = match opts.get("format") {
            Some(_) => match opts.get_choice(
                "format",
                &["csv", "json", "jsonl", "ndjson", "parquet"],
                "csv",
            )? {
                "csv" => FileFormat::Csv,
                "parquet" => FileFormat::Parquet,
                _ => FileFormat::Json,
            },
            None => match format_of(path) {
                Some(f) => f,
                // A directory: the files it holds tell.
                None => {
                    let files = location.list().await?;
                    files.iter().find_map(|m| format_of(m.location.as_ref())).ok_or_else(|| ConnectorError::MissingOption {
                        connector: "file".into(),
                        option: "format".into(),
                        description: "csv, json or parquet; neither the path nor the files' extensions tell".into(),
                    })?
                }
            },
        };
        Ok(FileSourceOptions {
            location,
            format,
            header: opts.get_bool("header", true)?,
            delimiter: opts.get_byte("delimiter", b',')?,
            max_record_bytes: opts
                .get_u64("max_record_bytes")?
                .unwrap_or(DEFAULT_MAX_RECORD_BYTES)
                .max(1),
        })
    }
}

fn format_of(path: &str) -> Option<FileFormat> {
    let lower = path.to_ascii_lowercase();
    if lower.ends_with(".csv") || lower.ends_with(".tsv") {
        Some(FileFormat::Csv)
    } else if lower.ends_with(".json") || lower.ends_with(".jsonl") || lower.ends_with(".ndjson") {
        Some(FileFormat::Json)
    } else if lower.ends_with(".parquet") {
        Some(FileFormat::Parquet)
    } else {
        None
    }
}

/// How far a file source has read: whole files done, and the offset into the current one.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FilePosition {
    /// Files read to the end.
    pub done: BTreeSet<String>,
    /// The file being read, if any.
    pub current: Option<FileOffset>,
}

/// Offset into a file: bytes (CSV, JSON) or rows (Parquet), and the next line number.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FileOffset {
    /// Object path.
    pub path: String,
    /// Bytes consumed (CSV, JSON) or rows consumed (Parquet).
    pub offset: u64,
    /// Line number of the next record (CSV, JSON).
    pub line: u64,
}

/// `connector = 'file'`.
pub struct FileSourceConnector;

#[async_trait]
impl SourceConnector for FileSourceConnector {
    fn name(&self) -> &'static str {
        "file"
    }

    fn options(&self) -> &'static [OptionSpec] {
        OPTIONS
    }

    async fn validate(&self, spec: &SourceSpec) -> Result<SchemaRef> {
        let opts = FileSourceOptions::parse(spec).await?;
        if let Some(schema) = &spec.schema {
            return Ok(schema.clone());
        }
        let files = opts.location.list().await?;
        let first = files.first().ok_or_else(|| {
            ConnectorError::Config(format!(
                "no files match path '{}' to infer the columns from; declare the columns or add files first",
                opts.location.display
            ))
        })?;
        infer_schema(&opts, first).await
    }

    fn is_bounded(&self, _spec: &SourceSpec) -> bool {
        true
    }

    async fn open(
        &self,
        spec: &SourceSpec,
        schema: SchemaRef,
        from: Option<SourcePosition>,
        read: crate::ReadOptions,
    ) -> Result<Box<dyn Source>> {
        let opts = FileSourceOptions::parse(spec).await?;
        let position: FilePosition = SourcePosition::decode(from, "file")?;
        let files = opts.location.list().await?;
        let mut queue: VecDeque<ObjectMeta> = files
            .into_iter()
            .filter(|m| !position.done.contains(m.location.as_ref()))
            .collect();
        // Resume the file that was being read first.
        if let Some(cur) = &position.current {
            if let Some(i) = queue.iter().position(|m| m.location.as_ref() == cur.path) {
                if let Some(m) = queue.remove(i) {
                    queue.push_front(m);
                }
            }
        }
        let decoder: Option<Arc<dyn RecordDecoder>> = match opts.format {
            FileFormat::Csv => Some(Arc::new(CsvDecoder::new(schema.clone(), opts.delimiter))),
            FileFormat::Json => Some(Arc::new(JsonDecoder::new(schema.clone()))),
            FileFormat::Parquet => None,
        };
        Ok(Box::new(FileSource {
            opts,
            schema,
            queue,
            position,
            decoder,
            reader: None,
            watch: !read.bounded,
            decoding: VecDeque::new(),
            parallelism: decode_parallelism(),
        }))
    }
}

async fn infer_schema(opts: &FileSourceOptions, file: &ObjectMeta) -> Result<SchemaRef> {
    let store = &opts.location.store;
    let ctx = |e: &dyn std::fmt::Display| format!("inferring columns from {}: {e}", file.location);
    match opts.format {
        FileFormat::Parquet => {
            let reader = ParquetObjectReader::new(store.clone(), file.location.clone())
                .with_file_size(file.size);
            let builder = ParquetRecordBatchStreamBuilder::new(reader)
                .await
                .map_err(|e| ConnectorError::Config(ctx(&e)))?;
            Ok(builder.schema().clone())
        }
        FileFormat::Csv | FileFormat::Json => {
            let end = file.size.min(1 << 20);
            let bytes = store
                .get_range(&file.location, 0..end)
                .await
                .map_err(|e| ConnectorError::io(format!("reading {}", file.location), e))?;
            let (records, used, _) = split_records(
                &bytes,
                1,
                (opts.format == FileFormat::Csv).then_some(b'"'),
                end == file.size,
            );
            let sample = &bytes[..used];
            let take = records.len().min(INFER_RECORDS + 1);
            let sample = records
                .get(take.saturating_sub(1))
                .map(|r| &sample[..r.next])
                .unwrap_or(sample);
            let schema = if opts.format == FileFormat::Csv {
                let (schema, _) = arrow_csv::reader::Format::default()
                    .with_header(opts.header)
                    .with_delimiter(opts.delimiter)
                    .infer_schema(sample, Some(INFER_RECORDS))
                    .map_err(|e| ConnectorError::Config(ctx(&e)))?;
                // CSV columns match by position, so a header is only a label: lowercased, it
                // is found by unquoted SQL names. JSON keys, Parquet fields and upstream
                // columns match by name and keep their exact spelling.
                Schema::new(
                    schema
                        .fields()
                        .iter()
                        .map(|f| f.as_ref().clone().with_name(f.name().to_lowercase()))
                        .collect::<Vec<_>>(),
                )
            } else {
                // Lines that are not JSON objects are skipped here; the pipeline reports them.
                let values: Vec<serde_json::Value> = records
                    .iter()
                    .take(INFER_RECORDS)
                    .filter_map(|r| {
                        serde_json::from_slice::<serde_json::Value>(&bytes[r.start..r.end]).ok()
                    })
                    .filter(|v| v.is_object())
                    .collect();
                if values.is_empty() {
                    return Err(ConnectorError::Config(ctx(
                        &"no JSON object found in the first lines",
                    )));
                }
                arrow_json::reader::infer_json_schema_from_iterator(values.iter().map(Ok))
                    .map_err(|e| ConnectorError::Config(ctx(&e)))?
            };
            Ok(Arc::new(schema))
        }
    }
}

/// One read over the matching files.
struct FileSource {
    opts: FileSourceOptions,
    schema: SchemaRef,
    queue: VecDeque<ObjectMeta>,
    /// Streaming mode: when every file is read, keep listing for new ones.
    watch: bool,
    position: FilePosition,
    decoder: Option<Arc<dyn RecordDecoder>>,
    reader: Option<OpenFile>,
    /// Blocks being decoded, oldest first, each with the position after it.
    decoding: VecDeque<DecodeJob>,
    /// How many blocks may be decoding at once.
    parallelism: usize,
}

/// Where a record that is too long ends, found by reading past it block by block.
struct SkippedRecord {
    /// Offset just after the record's line end (or the file's end).
    end: u64,
    /// Line ends inside and at the end of the record.
    newlines: u64,
    /// Its first bytes, for the error entry.
    excerpt: String,
}

/// Finds the end of the record starting at `offset`: the first line end outside quotes (CSV) or
/// the first line end (JSON lines), reading one block at a time so memory stays bounded.
async fn skip_record(
    store: &Arc<dyn ObjectStore>,
    location: &Path,
    offset: u64,
    size: u64,
    csv: bool,
) -> Result<SkippedRecord> {
    let mut at = offset;
    let mut newlines = 0u64;
    let mut in_quotes = false;
    let mut excerpt = Vec::new();
    while at < size {
        let end = (at + BLOCK_BYTES).min(size);
        let buf = store
            .get_range(location, at..end)
            .await
            .map_err(|e| ConnectorError::io(format!("reading {location}"), e))?;
        if excerpt.len() < RAW_EXCERPT_BYTES {
            let take = (RAW_EXCERPT_BYTES - excerpt.len()).min(buf.len());
            excerpt.extend_from_slice(&buf[..take]);
        }
        for (i, b) in buf.iter().enumerate() {
            match b {
                b'"' if csv => in_quotes = !in_quotes,
                b'\n' => {
                    newlines += 1;
                    if !in_quotes {
                        return Ok(SkippedRecord {
                            end: at + i as u64 + 1,
                            newlines,
                            excerpt: String::from_utf8_lossy(&excerpt).into_owned(),
                        });
                    }
                }
                _ => {}
            }
        }
        at = end;
    }
    Ok(SkippedRecord {
        end: size,
        newlines,
        excerpt: String::from_utf8_lossy(&excerpt).into_owned(),
    })
}

/// A block of CSV or JSON records handed to the blocking pool.
struct DecodeJob {
    decoded: tokio::task::JoinHandle<(RecordBatch, Vec<BadRecord>)>,
    position: SourcePosition,
    /// Bytes of the file the job's records took.
    bytes: u64,
}

enum OpenFile {
    Lines {
        meta: ObjectMeta,
        offset: u64,
        line: u64,
    },
    Parquet {
        meta: ObjectMeta,
        rows: u64,
        stream: Box<ParquetRecordBatchStream<ParquetObjectReader>>,
    },
}

impl FileSource {
    fn store(&self) -> &Arc<dyn ObjectStore> {
        &self.opts.location.store
    }

    fn finish_file(&mut self, path: &Path) -> Result<SourcePosition> {
        self.position.done.insert(path.to_string());
        self.position.current = None;
        self.reader = None;
        self.position_value()
    }

    /// The position after a block of `path` that ends at byte `offset`, before line `line`;
    /// `done` when the block reached the end of the file.
    fn position_after(
        &mut self,
        path: &Path,
        offset: u64,
        line: u64,
        done: bool,
    ) -> Result<SourcePosition> {
        if done {
            return self.finish_file(path);
        }
        self.position.current = Some(FileOffset {
            path: path.to_string(),
            offset,
            line,
        });
        self.position_value()
    }

    /// The position as stored in checkpoints. One that cannot be encoded fails the epoch: a
    /// null position would mean "read every file again".
    /// How many files are read, being read and waiting, for `tributary.pipelines.phase`.
    fn files_phase(&self) -> String {
        let done = self.position.done.len();
        let total = done + usize::from(self.position.current.is_some()) + self.queue.len();
        let watching = if self.watch {
            "; watching for more"
        } else {
            ""
        };
        format!("{done} of {total} files read{watching}")
    }

    fn position_value(&self) -> Result<SourcePosition> {
        serde_json::to_value(&self.position)
            .map(SourcePosition)
            .map_err(|e| ConnectorError::Internal(format!("encoding the file position: {e}")))
    }

    async fn open_next(&mut self) -> Result<bool> {
        let Some(meta) = self.queue.pop_front() else {
            return Ok(false);
        };
        let resume = self
            .position
            .current
            .as_ref()
            .filter(|c| c.path == meta.location.as_ref())
            .cloned();
        match self.opts.format {
            FileFormat::Parquet => {
                let rows = resume.map(|r| r.offset).unwrap_or(0);
                let reader = ParquetObjectReader::new(self.store().clone(), meta.location.clone())
                    .with_file_size(meta.size);
                let builder = ParquetRecordBatchStreamBuilder::new(reader)
                    .await
                    .map_err(|e| ConnectorError::io(format!("opening {}", meta.location), e))?
                    .with_batch_size(PARQUET_BATCH_ROWS)
                    .with_offset(rows as usize);
                let stream = builder
                    .build()
                    .map_err(|e| ConnectorError::io(format!("opening {}", meta.location), e))?;
                self.reader = Some(OpenFile::Parquet {
                    meta,
                    rows,
                    stream: Box::new(stream),
                });
            }
            FileFormat::Csv | FileFormat::Json => {
                let (offset, line) = resume.map(|r| (r.offset, r.line)).unwrap_or((0, 1));
                self.reader = Some(OpenFile::Lines { meta, offset, line });
            }
        }
        Ok(true)
    }

    /// Reads and splits the next block of the open CSV/JSON file and starts decoding it on the
    /// blocking pool; the block that reaches the end of the file marks it done in its position.
    /// `None` when no CSV/JSON file is open.
    async fn next_block(&mut self) -> Result<Option<DecodeJob>> {
        let store = self.store().clone();
        let schema = self.schema.clone();
        let max_record = self.opts.max_record_bytes;
        let csv = self.opts.format == FileFormat::Csv;
        let Some(OpenFile::Lines { meta, offset, line }) = self.reader.as_mut() else {
            return Ok(None);
        };
        let file = self.opts.location.user_path(&meta.location);
        // Each block is read from the first unconsumed byte: a record cut by the block's end is
        // read again with the next block rather than copied into it.
        let mut want = BLOCK_BYTES;
        loop {
            let end = (*offset + want).min(meta.size);
            let buf = if *offset < end {
                store
                    .get_range(&meta.location, *offset..end)
                    .await
                    .map_err(|e| ConnectorError::io(format!("reading {file}"), e))?
            } else {
                bytes::Bytes::new()
            };
            let eof = end >= meta.size;
            let quote = (self.opts.format == FileFormat::Csv).then_some(b'"');
            let (mut records, used, next_line) = split_records(&buf, *line, quote, eof);
            if *offset == 0
                && self.opts.format == FileFormat::Csv
                && self.opts.header
                && !records.is_empty()
            {
                // The header line names the columns; it is not a row.
                records.remove(0);
            }
            if records.is_empty() && !eof {
                if used == 0 && want >= max_record {
                    // Longer than max_record_bytes: skip it without holding it, and say where it was.
                    let skipped =
                        skip_record(&store, &meta.location, *offset, meta.size, csv).await?;
                    let bad = BadRecord {
                        position: format!("{file}:{line}"),
                        message: format!(
                            "record longer than max_record_bytes ({max_record} bytes): {} bytes",
                            skipped.end - *offset
                        ),
                        raw: skipped.excerpt,
                    };
                    let bytes = skipped.end - *offset;
                    *offset = skipped.end;
                    *line += skipped.newlines;
                    let (path, at, next, done) =
                        (meta.location.clone(), *offset, *line, *offset >= meta.size);
                    let position = self.position_after(&path, at, next, done)?;
                    let decoded = tokio::task::spawn_blocking(move || {
                        (RecordBatch::new_empty(schema), vec![bad])
                    });
                    return Ok(Some(DecodeJob {
                        decoded,
                        position,
                        bytes,
                    }));
                }
                if used == 0 {
                    // A record longer than a block: read a larger one, up to max_record_bytes.
                    want = want.saturating_mul(2).min(max_record.max(BLOCK_BYTES));
                } else {
                    // Only blank lines.
                    *offset += used as u64;
                    *line = next_line;
                }
                continue;
            }
            let decoder = self
                .decoder
                .clone()
                .ok_or_else(|| ConnectorError::Internal("no decoder".into()))?;
            *offset += used as u64;
            *line = next_line;
            let (path, at) = (meta.location.clone(), *offset);
            let position = self.position_after(&path, at, next_line, eof)?;
            let decoded = tokio::task::spawn_blocking(move || {
                decode_records(decoder.as_ref(), &buf[..used], &records, &|r| {
                    format!("{file}:{}", r.line)
                })
            });
            return Ok(Some(DecodeJob {
                decoded,
                position,
                bytes: used as u64,
            }));
        }
    }

    /// The oldest block being decoded, as a batch.
    async fn finish_decoding(&mut self) -> Result<Option<SourceBatch>> {
        let Some(job) = self.decoding.pop_front() else {
            return Ok(None);
        };
        let (batch, bad_records) = job
            .decoded
            .await
            .map_err(|e| ConnectorError::Internal(format!("decoding a block failed: {e}")))?;
        Ok(Some(SourceBatch {
            bad_records,
            bytes: job.bytes,
            phase: Some(self.files_phase()),
            ..SourceBatch::new(batch, job.position)
        }))
    }

    async fn next_parquet(&mut self) -> Result<Option<SourceBatch>> {
        let schema = self.schema.clone();
        let Some(OpenFile::Parquet { meta, rows, stream }) = self.reader.as_mut() else {
            return Ok(None);
        };
        match stream.next().await {
            Some(batch) => {
                let batch = batch
                    .map_err(|e| ConnectorError::io(format!("reading {}", meta.location), e))?;
                *rows += batch.num_rows() as u64;
                let batch = conform(&schema, batch)
                    .map_err(|e| ConnectorError::Config(format!("{}: {e}", meta.location)))?;
                self.position.current = Some(FileOffset {
                    path: meta.location.to_string(),
                    offset: *rows,
                    line: 0,
                });
                Ok(Some(SourceBatch {
                    phase: Some(self.files_phase()),
                    ..SourceBatch::new(batch, self.position_value()?)
                }))
            }
            None => {
                let path = meta.location.clone();
                let position = self.finish_file(&path)?;
                Ok(Some(SourceBatch {
                    phase: Some(self.files_phase()),
                    ..SourceBatch::new(RecordBatch::new_empty(schema), position)
                }))
            }
        }
    }
}

/// Selects and casts a Parquet batch's columns (by name, case-insensitive) to the declared schema.
fn conform(schema: &SchemaRef, batch: RecordBatch) -> std::result::Result<RecordBatch, String> {
    if batch.schema().fields() == schema.fields() {
        return Ok(batch);
    }
    let mut columns = Vec::with_capacity(schema.fields().len());
    for field in schema.fields() {
        let (i, _) = batch
            .schema()
            .fields()
            .iter()
            .enumerate()
            .find(|(_, f)| f.name().eq_ignore_ascii_case(field.name()))
            .ok_or_else(|| format!("file has no column '{}'", field.name()))?;
        let col = cast(batch.column(i), field.data_type())
            .map_err(|e| format!("column '{}': {e}", field.name()))?;
        columns.push(col);
    }
    let fields: Vec<Field> = schema
        .fields()
        .iter()
        .map(|f| f.as_ref().clone().with_nullable(true))
        .collect();
    RecordBatch::try_new(Arc::new(Schema::new(fields)), columns)
        .and_then(|b| b.with_schema(schema.clone()))
        .map_err(|e| e.to_string())
}

#[async_trait]
impl Source for FileSource {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn remaining_bytes(&self) -> Option<u64> {
        if self.watch {
            return None;
        }
        let queued: u64 = self.queue.iter().map(|m| m.size).sum();
        // Parquet's offset counts rows, not bytes.
        let read = match self.decoder {
            Some(_) => self.position.current.as_ref().map_or(0, |c| c.offset),
            None => 0,
        };
        Some(queued.saturating_sub(read))
    }

    async fn next_batch(&mut self) -> Result<Option<SourceBatch>> {
        loop {
            // CSV and JSON: keep `parallelism` blocks decoding while the next ones are read.
            while self.decoding.len() < self.parallelism {
                if self.reader.is_none() && !self.open_next().await? {
                    break;
                }
                if !matches!(self.reader, Some(OpenFile::Lines { .. })) {
                    break;
                }
                match self.next_block().await? {
                    Some(job) => self.decoding.push_back(job),
                    None => self.reader = None,
                }
            }
            if let Some(batch) = self.finish_decoding().await? {
                return Ok(Some(batch));
            }
            if self.reader.is_none() && !self.open_next().await? {
                if !self.watch {
                    return Ok(None);
                }
                // Streaming: wait for files that appear later (they should appear whole, by rename).
                tokio::time::sleep(WATCH_INTERVAL).await;
                let current = self.position.current.as_ref().map(|c| c.path.clone());
                let new: Vec<ObjectMeta> = self
                    .opts
                    .location
                    .list()
                    .await?
                    .into_iter()
                    .filter(|m| {
                        !self.position.done.contains(m.location.as_ref())
                            && Some(m.location.to_string()) != current
                    })
                    .collect();
                self.queue.extend(new);
                continue;
            }
            let next = match self.reader {
                Some(OpenFile::Parquet { .. }) => self.next_parquet().await?,
                Some(OpenFile::Lines { .. }) | None => None,
            };
            if let Some(b) = next {
                return Ok(Some(b));
            }
        }
    }
}
