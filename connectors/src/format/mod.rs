//! Record formats shared by sources (CSV, JSON lines): split bytes into records and decode them
//! into Arrow, isolating undecodable records instead of failing the whole block.

pub mod avro;
mod flat_json;
pub mod schema_registry;

use std::sync::Arc;

use arrow::compute::concat_batches;
use arrow::datatypes::SchemaRef;
use arrow::error::ArrowError;
use arrow::record_batch::RecordBatch;

use crate::BadRecord;

/// How many bytes of a bad record are kept for `tributary.errors`.
const RAW_LIMIT: usize = 4096;

/// One record inside a block: byte range (without the line terminator) and 1-based line number.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Record {
    /// First byte.
    pub start: usize,
    /// One past the last byte of the record's content (terminator excluded).
    pub end: usize,
    /// One past the terminator: where the next record starts.
    pub next: usize,
    /// Line number of the record's first line.
    pub line: u64,
}

/// Splits `buf` into complete records. Returns the records and the number of bytes they cover;
/// bytes after that are an incomplete record to carry into the next block. At `eof` a final
/// record without terminator counts as complete. Blank lines are skipped. When `quote` is set
/// (CSV), a newline inside quotes does not end a record.
pub fn split_records(
    buf: &[u8],
    first_line: u64,
    quote: Option<u8>,
    eof: bool,
) -> (Vec<Record>, usize, u64) {
    let mut records = Vec::new();
    let mut start = 0usize;
    let mut line = first_line;
    let mut record_line = first_line;
    let mut in_quote = false;
    let mut pos = 0usize;
    loop {
        let hit = match quote {
            Some(q) => memchr::memchr2(b'\n', q, &buf[pos..]),
            None => memchr::memchr(b'\n', &buf[pos..]),
        };
        let Some(rel) = hit else { break };
        let i = pos + rel;
        pos = i + 1;
        if buf[i] != b'\n' {
            in_quote = !in_quote;
            continue;
        }
        line += 1;
        if in_quote {
            continue;
        }
        let mut end = i;
        if end > start && buf[end - 1] == b'\r' {
            end -= 1;
        }
        if !is_blank(&buf[start..end]) {
            records.push(Record {
                start,
                end,
                next: i + 1,
                line: record_line,
            });
        }
        start = i + 1;
        record_line = line;
    }
    if eof && start < buf.len() {
        let mut end = buf.len();
        if buf[end - 1] == b'\r' {
            end -= 1;
        }
        if !is_blank(&buf[start..end]) {
            records.push(Record {
                start,
                end,
                next: buf.len(),
                line: record_line,
            });
        }
        start = buf.len();
        line += 1;
    }
    (records, start, line)
}

fn is_blank(b: &[u8]) -> bool {
    b.iter().all(|c| c.is_ascii_whitespace())
}

/// Decodes a run of complete records (bytes with `\n` terminators) into one batch.
pub trait RecordDecoder: Send + Sync {
    /// The schema of the batches produced.
    fn schema(&self) -> SchemaRef;
    /// Decodes `bytes` holding `rows` records.
    fn decode(&self, bytes: &[u8], rows: usize) -> Result<RecordBatch, ArrowError>;
}

/// JSON lines: flat objects of plain values through [`flat_json`]'s single pass, everything
/// else (and every block the fast path gives up on) through arrow-json.
pub struct JsonDecoder {
    schema: SchemaRef,
    flat: Option<flat_json::FlatJsonDecoder>,
}

impl JsonDecoder {
    /// A decoder for `schema`; unknown fields are ignored, numbers are accepted for text columns.
    pub fn new(schema: SchemaRef) -> Self {
        JsonDecoder {
            flat: flat_json::FlatJsonDecoder::new(schema.clone()),
            schema,
        }
    }

    /// arrow-json alone, without the fast path: the oracle of the fast path's tests and of
    /// its fuzz target.
    #[doc(hidden)]
    pub fn general(schema: SchemaRef) -> Self {
        JsonDecoder { schema, flat: None }
    }
}

impl RecordDecoder for JsonDecoder {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn decode(&self, bytes: &[u8], rows: usize) -> Result<RecordBatch, ArrowError> {
        if let Some(batch) = self.flat.as_ref().and_then(|f| f.decode(bytes, rows)) {
            return Ok(batch);
        }
        contained("arrow-json", || self.decode_with_arrow(bytes, rows))
    }
}

impl JsonDecoder {
    fn decode_with_arrow(&self, bytes: &[u8], rows: usize) -> Result<RecordBatch, ArrowError> {
        let mut decoder = arrow_json::ReaderBuilder::new(self.schema.clone())
            .with_batch_size(rows.max(1))
            .with_coerce_primitive(true)
            .build_decoder()?;
        let mut offset = 0;
        let mut out = Vec::new();
        while offset < bytes.len() {
            let n = decoder.decode(&bytes[offset..])?;
            offset += n;
            if n == 0 || decoder.len() >= rows.max(1) {
                if let Some(b) = decoder.flush()? {
                    out.push(b);
                }
                if n == 0 {
                    break;
                }
            }
        }
        if decoder.has_partial_record() {
            return Err(ArrowError::JsonError("incomplete JSON record".into()));
        }
        if let Some(b) = decoder.flush()? {
            out.push(b);
        }
        single(self.schema.clone(), out)
    }
}

/// CSV through arrow-csv, columns by position.
pub struct CsvDecoder {
    schema: SchemaRef,
    delimiter: u8,
}

impl CsvDecoder {
    /// A decoder for `schema` with the given field delimiter.
    pub fn new(schema: SchemaRef, delimiter: u8) -> Self {
        CsvDecoder { schema, delimiter }
    }
}

impl RecordDecoder for CsvDecoder {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn decode(&self, bytes: &[u8], rows: usize) -> Result<RecordBatch, ArrowError> {
        contained("arrow-csv", || self.decode_with_arrow(bytes, rows))
    }
}

impl CsvDecoder {
    fn decode_with_arrow(&self, bytes: &[u8], rows: usize) -> Result<RecordBatch, ArrowError> {
        let mut decoder = arrow_csv::ReaderBuilder::new(self.schema.clone())
            .with_header(false)
            .with_delimiter(self.delimiter)
            .with_batch_size(rows.max(1))
            .build_decoder();
        let mut offset = 0;
        let mut out = Vec::new();
        loop {
            if offset >= bytes.len() {
                // End of input: emits a final record that has no terminator.
                decoder.decode(&[])?;
                break;
            }
            let n = decoder.decode(&bytes[offset..])?;
            offset += n;
            if decoder.capacity() == 0 {
                if let Some(b) = decoder.flush()? {
                    out.push(b);
                }
            } else if n == 0 {
                return Err(ArrowError::CsvError("CSV decoder made no progress".into()));
            }
        }
        if let Some(b) = decoder.flush()? {
            out.push(b);
        }
        single(self.schema.clone(), out)
    }
}

/// Runs a decoder of another crate with its panics made errors, so the records it choked on
/// are bad records (isolated, counted and kept) and the pipeline goes on: arrow-cast 59.3's
/// decimal parser overflows an `i16` on a long exponent (`499.e999999`), found by the
/// csv_decoder fuzz target.
pub fn contained<T>(
    decoder: &str,
    decode: impl FnOnce() -> Result<T, ArrowError>,
) -> Result<T, ArrowError> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(decode)).unwrap_or_else(|panic| {
        let why = panic
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_default();
        Err(ArrowError::ParseError(format!(
            "{decoder} failed on this input: {why}"
        )))
    })
}

fn single(schema: SchemaRef, batches: Vec<RecordBatch>) -> Result<RecordBatch, ArrowError> {
    match batches.len() {
        0 => Ok(RecordBatch::new_empty(schema)),
        1 => Ok(batches
            .into_iter()
            .next()
            .unwrap_or_else(|| RecordBatch::new_empty(Arc::clone(&schema)))),
        _ => concat_batches(&schema, &batches),
    }
}

/// Decodes `records` of `buf`; records that fail are isolated by bisection and returned as bad
/// records (`file:line`), every other record lands in the batch.
pub fn decode_records(
    decoder: &dyn RecordDecoder,
    buf: &[u8],
    records: &[Record],
    position: &dyn Fn(&Record) -> String,
) -> (RecordBatch, Vec<BadRecord>) {
    let mut good = Vec::new();
    let mut bad = Vec::new();
    decode_range(decoder, buf, records, position, &mut good, &mut bad);
    let schema = decoder.schema();
    let batch = match single(schema.clone(), good) {
        Ok(b) => b,
        Err(e) => {
            // Concatenating batches of one schema cannot fail; keep the data visible if it does.
            bad.push(BadRecord {
                position: records.first().map(position).unwrap_or_default(),
                message: e.to_string(),
                raw: String::new(),
            });
            RecordBatch::new_empty(schema)
        }
    };
    (batch, bad)
}

fn decode_range(
    decoder: &dyn RecordDecoder,
    buf: &[u8],
    records: &[Record],
    position: &dyn Fn(&Record) -> String,
    good: &mut Vec<RecordBatch>,
    bad: &mut Vec<BadRecord>,
) {
    if records.is_empty() {
        return;
    }
    let contiguous = records.windows(2).all(|w| w[0].next == w[1].start);
    let first = records[0];
    let last = records[records.len() - 1];
    let result = if contiguous {
        decoder.decode(&buf[first.start..last.next], records.len())
    } else {
        let mut joined = Vec::with_capacity(last.next - first.start);
        for r in records {
            joined.extend_from_slice(&buf[r.start..r.end]);
            joined.push(b'\n');
        }
        decoder.decode(&joined, records.len())
    };
    match result {
        Ok(batch) if batch.num_rows() == records.len() => good.push(batch),
        Ok(_) | Err(_) if records.len() > 1 => {
            let mid = records.len() / 2;
            decode_range(decoder, buf, &records[..mid], position, good, bad);
            decode_range(decoder, buf, &records[mid..], position, good, bad);
        }
        Ok(batch) => bad.push(BadRecord {
            position: position(&first),
            message: format!("record decoded into {} rows, expected 1", batch.num_rows()),
            raw: raw_text(&buf[first.start..first.end]),
        }),
        Err(e) => bad.push(BadRecord {
            position: position(&first),
            message: clean_message(&e),
            raw: raw_text(&buf[first.start..first.end]),
        }),
    }
}

fn raw_text(b: &[u8]) -> String {
    let cut = &b[..b.len().min(RAW_LIMIT)];
    String::from_utf8_lossy(cut).to_string()
}

fn clean_message(e: &ArrowError) -> String {
    let m = match e {
        ArrowError::JsonError(m)
        | ArrowError::CsvError(m)
        | ArrowError::ParseError(m)
        | ArrowError::CastError(m) => m.clone(),
        other => other.to_string(),
    };
    // Lines are decoded one at a time here, so the decoder's own line number is meaningless.
    let m = m.replace(" at line 0", "");
    match m.find(". Row data:") {
        Some(i) => m[..i].to_string(),
        None => m,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Array, Int64Array};
    use arrow::datatypes::{DataType, Field, Schema};

    #[test]
    fn splits_lines_quotes_and_carry() {
        let buf = b"a,b\n\"x\ny\",2\n\nlast";
        let (recs, used, next_line) = split_records(buf, 1, Some(b'"'), false);
        assert_eq!(recs.len(), 2);
        assert_eq!((recs[0].line, recs[1].line), (1, 2));
        assert_eq!(&buf[recs[1].start..recs[1].end], b"\"x\ny\",2");
        assert_eq!(&buf[used..], b"last");
        assert_eq!(next_line, 5);
        let (recs, used, _) = split_records(buf, 1, Some(b'"'), true);
        assert_eq!(recs.len(), 3);
        assert_eq!(used, buf.len());
        assert_eq!(recs[2].line, 5);
    }

    #[test]
    fn a_decimal_arrow_cannot_parse_is_a_bad_record_not_a_panic() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, true),
            Field::new("price", DataType::Decimal128(10, 2), true),
        ]));
        let buf = b"1,2.50\n2,499.e999999\n3,7\n";
        let (recs, _, _) = split_records(buf, 1, Some(b'"'), true);
        let csv = CsvDecoder::new(schema, b',');
        let (batch, bad) = decode_records(&csv, buf, &recs, &|r| format!("f.csv:{}", r.line));
        assert_eq!(batch.num_rows(), 2);
        assert_eq!(bad.len(), 1);
        assert_eq!(bad[0].position, "f.csv:2");
        assert_eq!(bad[0].raw, "2,499.e999999");
    }

    #[test]
    fn isolates_bad_json_lines() {
        let schema = Arc::new(Schema::new(vec![Field::new("id", DataType::Int64, true)]));
        let buf = b"{\"id\":1}\n{\"id\":2}\n{oops\n{\"id\":\"nan\"}\n{\"id\":5}\n";
        let (recs, _, _) = split_records(buf, 1, None, true);
        let (batch, bad) = decode_records(&JsonDecoder::new(schema), buf, &recs, &|r| {
            format!("f.json:{}", r.line)
        });
        let ids = batch
            .column(0)
            .as_any()
            .downcast_ref::<Int64Array>()
            .unwrap();
        assert_eq!(ids.values().to_vec(), vec![1, 2, 5]);
        assert_eq!(
            bad.iter().map(|b| b.position.as_str()).collect::<Vec<_>>(),
            vec!["f.json:3", "f.json:4"]
        );
        assert_eq!(bad[0].raw, "{oops");
    }

    #[test]
    fn isolates_bad_csv_lines() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, true),
            Field::new("name", DataType::Utf8, true),
        ]));
        let buf = b"1,a\n2,b\nthree,c\n4,d,extra\n5,e";
        let (recs, _, _) = split_records(buf, 2, Some(b'"'), true);
        let (batch, bad) = decode_records(&CsvDecoder::new(schema, b','), buf, &recs, &|r| {
            format!("f.csv:{}", r.line)
        });
        assert_eq!(batch.num_rows(), 3);
        assert!(batch.column(0).is_valid(2));
        assert_eq!(
            bad.iter().map(|b| b.position.as_str()).collect::<Vec<_>>(),
            vec!["f.csv:4", "f.csv:5"]
        );
    }
}
