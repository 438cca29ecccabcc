//! Fuzz target: a stream of pgoutput messages (the CDC source's replication payloads) through `pgoutput::decode`, and the rows of relations it described through the text-to-Arrow column builders (`postgres::types::TextColumn`); nothing may panic.
//!
//! Input: frames of a big-endian u16 length and that many bytes, each one XLogData payload (a
//! frame longer than what is left takes the rest, so any bytes are one message at least).
//! A Relation message makes a table of `TextColumn`s from its columns' type OIDs and modifiers
//! (`types::arrow_type`); Insert, Update and Delete of a described relation parse every value,
//! then append the row, as `source.rs`' `Builders::push_row` does (an unchanged TOASTed value
//! taken from the old row as there). At the end every column holds one value per row.
#![no_main]

use std::collections::HashMap;

use arrow::array::Array;
use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use tributary_connectors::postgres::pgoutput::{self, Datum, Message};
use tributary_connectors::postgres::types::{arrow_type, TextColumn};

/// A described relation's columns being built, and the rows appended to them.
struct Table {
    columns: Vec<TextColumn>,
    rows: usize,
}

/// The frames of `data` as payloads sharing its buffer.
fn frames(data: &Bytes) -> Vec<Bytes> {
    let mut out = Vec::new();
    let mut at = 0;
    while at < data.len() {
        let end = match data.get(at..at + 2) {
            Some(len) => {
                at += 2;
                let len = usize::from(u16::from_be_bytes([len[0], len[1]]));
                (at + len).min(data.len())
            }
            None => data.len(),
        };
        out.push(data.slice(at..end));
        at = end;
    }
    out
}

/// Value `u` of `tuple` as text, or `None` for NULL (an unchanged value comes from `old`).
fn text<'a>(tuple: &'a [Datum], old: Option<&'a [Datum]>, u: usize) -> Option<&'a str> {
    match tuple.get(u) {
        Some(Datum::Text(t)) => std::str::from_utf8(t).ok(),
        Some(Datum::Unchanged) => match old.and_then(|o| o.get(u)) {
            Some(Datum::Text(t)) => std::str::from_utf8(t).ok(),
            _ => None,
        },
        _ => None,
    }
}

/// Appends a row when every value parses (a bad row leaves no partial trace).
fn push(table: &mut Table, tuple: &[Datum], old: Option<&[Datum]>) {
    let mut parsed = Vec::with_capacity(table.columns.len());
    for (u, column) in table.columns.iter().enumerate() {
        match column.parse(text(tuple, old, u)) {
            Ok(p) => parsed.push(p),
            Err(_) => return,
        }
    }
    for (column, p) in table.columns.iter_mut().zip(parsed) {
        column.append(p);
    }
    table.rows += 1;
}

fuzz_target!(|data: &[u8]| {
    let data = Bytes::copy_from_slice(data);
    let mut tables: HashMap<u32, Table> = HashMap::new();
    for payload in frames(&data) {
        let Ok(message) = pgoutput::decode(&payload) else {
            continue;
        };
        match message {
            Message::Relation(rel) => {
                let columns = rel
                    .columns
                    .iter()
                    .map(|c| TextColumn::new(&arrow_type(c.type_oid, c.typmod).0, 4))
                    .collect();
                tables.insert(rel.id, Table { columns, rows: 0 });
            }
            Message::Insert { relation, new } => {
                if let Some(t) = tables.get_mut(&relation) {
                    push(t, &new, None);
                }
            }
            Message::Update {
                relation, old, new, ..
            } => {
                if let Some(t) = tables.get_mut(&relation) {
                    push(t, &new, old.as_deref());
                }
            }
            Message::Delete { relation, old, .. } => {
                if let Some(t) = tables.get_mut(&relation) {
                    push(t, &old, None);
                }
            }
            Message::Truncate { .. } | Message::Other(_) => {}
        }
    }
    for (id, table) in &mut tables {
        for column in &mut table.columns {
            let array = column.finish();
            assert_eq!(
                array.len(),
                table.rows,
                "relation {id}: a column of {} values for {} rows",
                array.len(),
                table.rows
            );
        }
    }
});
