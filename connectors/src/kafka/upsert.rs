//! Upsert topics (`mode = 'upsert'` on a Kafka source): the message key is the row's primary
//! key, a value is the row's latest version and a tombstone (no value) deletes it. Each message
//! becomes a flat JSON change row with `_op` (`update`, or `delete` for a tombstone) for the JSON
//! decoder of the source's columns.

use serde_json::{Map, Value};

/// One message as a change row; `Err` says why it cannot be one.
///
/// The key is a JSON object of the key columns (what an upsert sink writes), or, with one key
/// column, that column's value (JSON, or else text). Key columns missing from the value are
/// taken from the key.
pub fn read(key: Option<&[u8]>, value: &[u8], key_columns: &[String]) -> Result<Vec<u8>, String> {
    let key = key.ok_or("a message of an upsert topic without a key")?;
    let mut key_fields = match serde_json::from_slice::<Value>(key) {
        Ok(Value::Object(fields)) => fields,
        parsed => {
            let [column] = key_columns else {
                return Err(format!(
                    "the key is not a JSON object of the key columns ({})",
                    key_columns.join(", ")
                ));
            };
            let value =
                parsed.unwrap_or_else(|_| Value::String(String::from_utf8_lossy(key).into_owned()));
            Map::from_iter([(column.clone(), value)])
        }
    };
    if let Some(missing) = key_columns.iter().find(|c| !key_fields.contains_key(*c)) {
        return Err(format!("the key has no \"{missing}\""));
    }
    let tombstone = value.iter().all(u8::is_ascii_whitespace);
    let mut row = if tombstone {
        Map::new()
    } else {
        match serde_json::from_slice::<Value>(value) {
            Ok(Value::Object(row)) => row,
            Ok(_) => return Err("the value is not a JSON object".into()),
            Err(e) => return Err(format!("the value is not JSON: {e}")),
        }
    };
    for column in key_columns {
        if !row.contains_key(column) {
            if let Some(v) = key_fields.remove(column) {
                row.insert(column.clone(), v);
            }
        }
    }
    row.insert(
        "_op".into(),
        Value::String(if tombstone { "delete" } else { "update" }.into()),
    );
    serde_json::to_vec(&Value::Object(row)).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(key: &str, value: &str, columns: &[&str]) -> Result<String, String> {
        let columns: Vec<String> = columns.iter().map(|c| c.to_string()).collect();
        read(Some(key.as_bytes()), value.as_bytes(), &columns)
            .map(|row| String::from_utf8(row).unwrap())
    }

    #[test]
    fn keys_fill_the_row_and_tombstones_delete() {
        assert_eq!(
            change(r#"{"id":1}"#, r#"{"id":1,"name":"a"}"#, &["id"]).unwrap(),
            r#"{"_op":"update","id":1,"name":"a"}"#
        );
        assert_eq!(
            change(r#"{"id":1}"#, "", &["id"]).unwrap(),
            r#"{"_op":"delete","id":1}"#
        );
        // A value without its key columns, a key of one column's value, as JSON or text.
        assert_eq!(
            change(r#"{"a":1,"b":"x"}"#, r#"{"n":5}"#, &["a", "b"]).unwrap(),
            r#"{"_op":"update","a":1,"b":"x","n":5}"#
        );
        assert_eq!(
            change("7", "", &["id"]).unwrap(),
            r#"{"_op":"delete","id":7}"#
        );
        assert_eq!(
            change("ann", r#"{"n":1}"#, &["name"]).unwrap(),
            r#"{"_op":"update","n":1,"name":"ann"}"#
        );
    }

    #[test]
    fn what_cannot_be_a_change_says_why() {
        let columns = vec!["id".to_string()];
        assert!(read(None, b"{}", &columns)
            .unwrap_err()
            .contains("without a key"));
        assert!(change(r#"{"other":1}"#, "", &["id"])
            .unwrap_err()
            .contains("\"id\""));
        assert!(change("7", "[1]", &["id"])
            .unwrap_err()
            .contains("JSON object"));
        assert!(change("7", "{", &["id"]).unwrap_err().contains("not JSON"));
        assert!(change("7", "", &["a", "b"]).unwrap_err().contains("a, b"));
    }
}
