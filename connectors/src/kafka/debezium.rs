//! Debezium's JSON change events (`format = 'debezium-json'`) as change rows: each event's row
//! (`after`, or `before` for a delete) as a flat JSON object with `_op` set to `insert`,
//! `update` or `delete`, for the JSON decoder of the source's columns.
//!
//! Both envelopes Debezium writes are read: with the JSON converter's schema
//! (`{"schema": ..., "payload": {"op": ..., ...}}`) and without (`{"op": ..., ...}`).

use serde_json::Value;

/// What one message is.
#[derive(Debug, PartialEq)]
pub enum Event {
    /// A change: the row as one line of JSON, with `_op`.
    Change(Vec<u8>),
    /// A tombstone (no value), which Debezium writes after a delete for log compaction: no row.
    Tombstone,
}

/// Reads one message value; `Err` says why it is not a Debezium change event.
pub fn read(value: &[u8]) -> Result<Event, String> {
    if value.iter().all(u8::is_ascii_whitespace) {
        return Ok(Event::Tombstone);
    }
    let event: Value = serde_json::from_slice(value).map_err(|e| format!("not JSON: {e}"))?;
    let payload = match event.get("payload") {
        Some(p) if event.get("op").is_none() => p,
        _ => &event,
    };
    if payload.is_null() {
        return Ok(Event::Tombstone);
    }
    let op = payload
        .get("op")
        .and_then(Value::as_str)
        .ok_or("no \"op\": not a Debezium change event")?;
    let (op, row) = match op {
        "c" | "r" => ("insert", payload.get("after")),
        "u" => ("update", payload.get("after")),
        "d" => ("delete", payload.get("before")),
        "t" => return Err("a truncate event: the table's rows cannot be named".into()),
        other => return Err(format!("unknown Debezium op \"{other}\"")),
    };
    let Some(Value::Object(row)) = row else {
        return Err(format!(
            "a Debezium \"{op}\" event without its row (\"{}\" is missing or null)",
            if op == "delete" { "before" } else { "after" }
        ));
    };
    let mut row = row.clone();
    row.insert("_op".into(), Value::String(op.into()));
    serde_json::to_vec(&Value::Object(row))
        .map(Event::Change)
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(v: &str) -> String {
        match read(v.as_bytes()).unwrap() {
            Event::Change(line) => String::from_utf8(line).unwrap(),
            Event::Tombstone => "tombstone".into(),
        }
    }

    #[test]
    fn both_envelopes_every_op_and_tombstones() {
        assert_eq!(
            change(
                r#"{"before":null,"after":{"id":1,"name":"a"},"source":{"db":"x"},"op":"c","ts_ms":1}"#
            ),
            r#"{"_op":"insert","id":1,"name":"a"}"#
        );
        assert_eq!(
            change(
                r#"{"schema":{"type":"struct"},"payload":{"before":{"id":1,"name":"a"},"after":{"id":1,"name":"b"},"op":"u"}}"#
            ),
            r#"{"_op":"update","id":1,"name":"b"}"#
        );
        assert_eq!(
            change(
                r#"{"schema":{},"payload":{"before":{"id":1,"name":"b"},"after":null,"op":"d"}}"#
            ),
            r#"{"_op":"delete","id":1,"name":"b"}"#
        );
        assert_eq!(
            change(r#"{"after":{"id":2},"op":"r"}"#),
            r#"{"_op":"insert","id":2}"#
        );
        assert_eq!(change(""), "tombstone");
        assert_eq!(change(r#"{"schema":null,"payload":null}"#), "tombstone");
    }

    #[test]
    fn what_is_not_a_change_event_says_why() {
        assert!(read(b"{\"id\": 1}").unwrap_err().contains("op"));
        assert!(read(b"{\"op\":\"d\",\"before\":null}")
            .unwrap_err()
            .contains("before"));
        assert!(read(b"{\"op\":\"t\"}").unwrap_err().contains("truncate"));
        assert!(read(b"{\"op\":\"x\",\"after\":{}}")
            .unwrap_err()
            .contains("\"x\""));
        assert!(read(b"not json").unwrap_err().contains("JSON"));
    }
}
