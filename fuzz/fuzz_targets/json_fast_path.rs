//! Fuzz target: differential test of the JSON lines fast path (`connectors/src/format/flat_json.rs`, inside `JsonDecoder`) against arrow-json alone, over arbitrary lines and a fixed schema.
//!
//! The contract (flat_json.rs' module doc; its tests `equals_arrow_json_on_mixed_input` and
//! `every_line_it_takes_equals_arrow_json`): the fast path takes a block only when its meaning
//! is plain and then builds exactly the batch arrow-json builds; on anything else it gives up
//! and the block goes to arrow-json. So, for any bytes, `JsonDecoder` must give what arrow-json
//! alone gives:
//! 1. a block decoded at once (`RecordDecoder::decode`, as the file source hands one over): the
//!    same batch, or an error with the same message, never a batch where arrow-json fails;
//! 2. the records of the block through `decode_records` (bad records isolated by bisection):
//!    the same batch and the same bad records, position, message and raw text;
//! 3. each record is either a row of the batch or a bad record.
//!
//! Batches compare with `RecordBatch`'s `==`, which compares float values bit for bit (a NaN
//! equals the same NaN; 0.0 and -0.0 differ), schema included.
//!
//! The oracle is `JsonDecoder::general`: the same decoder with the fast path off.
#![no_main]

#[path = "contained.rs"]
mod contained;

use std::sync::{Arc, OnceLock};

use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use libfuzzer_sys::fuzz_target;
use tributary_connectors::format::{
    decode_records, split_records, JsonDecoder, Record, RecordDecoder,
};
use tributary_connectors::BadRecord;

/// Columns of every type the fast path builds that the SQL side declares most, all nullable.
fn schema() -> SchemaRef {
    static SCHEMA: OnceLock<SchemaRef> = OnceLock::new();
    SCHEMA
        .get_or_init(|| {
            Arc::new(Schema::new(vec![
                Field::new("id", DataType::Int64, true),
                Field::new("n", DataType::Int32, true),
                Field::new("price", DataType::Float64, true),
                Field::new("name", DataType::Utf8, true),
                Field::new("ok", DataType::Boolean, true),
                Field::new("ts", DataType::Timestamp(TimeUnit::Millisecond, None), true),
                Field::new(
                    "ts_utc",
                    DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
                    true,
                ),
            ]))
        })
        .clone()
}

/// Bad records as comparable values.
fn described(bad: &[BadRecord]) -> Vec<(String, String, String)> {
    bad.iter()
        .map(|b| (b.position.clone(), b.message.clone(), b.raw.clone()))
        .collect()
}

/// Whether `data` escapes a high surrogate from D840 up: arrow-json 59.3 joins such a pair
/// wrongly (`|` for `+`), where the fast path is right (flat_json.rs'
/// `surrogates_past_the_first_supplementary_block_decode_right`), so the two differ by design.
fn escapes_a_surrogate_arrow_json_misreads(data: &[u8]) -> bool {
    data.windows(6).any(|w| {
        (w[0] == b'\\' && w[1] == b'u')
            && std::str::from_utf8(&w[2..])
                .ok()
                .and_then(|hex| u16::from_str_radix(hex, 16).ok())
                .is_some_and(|unit| (0xD840..=0xDBFF).contains(&unit))
    })
}

fuzz_target!(|data: &[u8]| {
    contained::tolerate_arrow_parser_panics();
    if escapes_a_surrogate_arrow_json_misreads(data) {
        return;
    }
    let schema = schema();
    let fast = JsonDecoder::new(schema.clone());
    let general = JsonDecoder::general(schema.clone());
    // As the file source splits a block at its end of file.
    let (records, used, _) = split_records(data, 1, None, true);
    let buf = &data[..used];

    // 1. The block at once.
    if let (Some(first), Some(last)) = (records.first(), records.last()) {
        let block = &buf[first.start..last.next];
        let rows = records.len();
        match (fast.decode(block, rows), general.decode(block, rows)) {
            (Ok(a), Ok(b)) => assert!(
                a == b,
                "the fast path and arrow-json built different batches from {:?}:\nfast: {a:?}\narrow-json: {b:?}",
                String::from_utf8_lossy(block)
            ),
            (Err(a), Err(b)) => assert_eq!(
                a.to_string(),
                b.to_string(),
                "different errors for {:?}",
                String::from_utf8_lossy(block)
            ),
            (a, b) => panic!(
                "the fast path and arrow-json disagree on whether {:?} decodes ({rows} rows):\nfast: {a:?}\narrow-json: {b:?}",
                String::from_utf8_lossy(block)
            ),
        }
    }

    // 2. Record by record, as `equals_arrow_json_on_mixed_input` compares them.
    let position = |r: &Record| format!("f:{}", r.line);
    let (fast_batch, fast_bad) = decode_records(&fast, buf, &records, &position);
    let (general_batch, general_bad) = decode_records(&general, buf, &records, &position);
    assert!(
        fast_batch == general_batch,
        "different rows from {:?}:\nfast: {fast_batch:?}\narrow-json: {general_batch:?}",
        String::from_utf8_lossy(buf)
    );
    assert_eq!(
        described(&fast_bad),
        described(&general_bad),
        "different bad records from {:?}",
        String::from_utf8_lossy(buf)
    );

    // 3. Nothing lost, nothing doubled.
    assert_eq!(
        fast_batch.num_rows() + fast_bad.len(),
        records.len(),
        "records neither rows nor bad records in {:?}",
        String::from_utf8_lossy(buf)
    );
    assert_eq!(fast_batch.schema(), schema);
});
