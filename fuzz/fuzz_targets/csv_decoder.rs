//! Fuzz target: the file source's CSV path (`split_records` with quotes, the header line dropped, `decode_records` through `CsvDecoder`) over arbitrary bytes and a fixed schema; nothing may panic.
//!
//! Input: the first byte sets the options, the rest is the file's block. Bits 0-1: the
//! delimiter (`,` `;` tab `|`); bit 2: a header line; bit 3: the block does not reach the end
//! of the file (a last record without terminator is carried, not decoded).
//!
//! Besides not panicking, what the file source relies on: records lie inside the bytes
//! `split_records` says it used, in order, on increasing lines; and every record comes back as
//! a row of the batch or as a bad record, the batch in the source's schema.
#![no_main]

#[path = "contained.rs"]
mod contained;

use std::sync::{Arc, OnceLock};

use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use libfuzzer_sys::fuzz_target;
use tributary_connectors::format::{decode_records, split_records, CsvDecoder, Record};

/// A source declared as `(id BIGINT NOT NULL, customer TEXT, amount DOUBLE, paid BOOLEAN,
/// ts TIMESTAMP, day DATE, price DECIMAL(10,2))`.
fn schema() -> SchemaRef {
    static SCHEMA: OnceLock<SchemaRef> = OnceLock::new();
    SCHEMA
        .get_or_init(|| {
            Arc::new(Schema::new(vec![
                Field::new("id", DataType::Int64, false),
                Field::new("customer", DataType::Utf8, true),
                Field::new("amount", DataType::Float64, true),
                Field::new("paid", DataType::Boolean, true),
                Field::new("ts", DataType::Timestamp(TimeUnit::Microsecond, None), true),
                Field::new("day", DataType::Date32, true),
                Field::new("price", DataType::Decimal128(10, 2), true),
            ]))
        })
        .clone()
}

fuzz_target!(|data: &[u8]| {
    contained::tolerate_arrow_parser_panics();
    let Some((&flags, buf)) = data.split_first() else {
        return;
    };
    let delimiter = [b',', b';', b'\t', b'|'][usize::from(flags & 3)];
    let header = flags & 4 != 0;
    let eof = flags & 8 == 0;

    let (mut records, used, next_line) = split_records(buf, 1, Some(b'"'), eof);
    assert!(used <= buf.len(), "used {used} of {} bytes", buf.len());
    let mut after = 0;
    let mut last_line = 0;
    for r in &records {
        assert!(
            after <= r.start && r.start <= r.end && r.end <= r.next && r.next <= used,
            "record {r:?} out of place (previous ended at {after}, {used} bytes used)"
        );
        assert!(r.line > last_line, "record {r:?} after line {last_line}");
        after = r.next;
        last_line = r.line;
    }
    assert!(
        next_line >= last_line,
        "next line {next_line} before {last_line}"
    );

    // The header line names the columns; it is not a row (the first block of a file).
    if header && !records.is_empty() {
        records.remove(0);
    }
    let decoder = CsvDecoder::new(schema(), delimiter);
    let position = |r: &Record| format!("fuzz.csv:{}", r.line);
    let (batch, bad) = decode_records(&decoder, &buf[..used], &records, &position);
    assert_eq!(batch.schema(), schema());
    assert_eq!(
        batch.num_rows() + bad.len(),
        records.len(),
        "records neither rows nor bad records: {bad:?}"
    );
});
