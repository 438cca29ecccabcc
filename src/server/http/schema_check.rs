//! Checks a JSON value against a schema of the OpenAPI document, for the tests: the subset of
//! JSON Schema the document uses (`$ref`, `type` and type lists, `enum`, `properties`,
//! `required`, `additionalProperties` false or a schema, `items`).

use serde_json::Value;

/// The schema of the JSON answer to `method path_template` with `status`.
pub fn response_schema<'a>(doc: &'a Value, path: &str, method: &str, status: u16) -> &'a Value {
    let schema = &doc["paths"][path][method]["responses"][status.to_string()]["content"]
        ["application/json"]["schema"];
    assert!(
        !schema.is_null(),
        "the OpenAPI document has no JSON answer to {method} {path} with {status}"
    );
    schema
}

/// Whether `value` (at `at`) follows `schema`; the first difference otherwise.
pub fn check(doc: &Value, schema: &Value, value: &Value, at: &str) -> Result<(), String> {
    if let Some(reference) = schema["$ref"].as_str() {
        let name = reference
            .strip_prefix("#/components/schemas/")
            .ok_or_else(|| format!("{at}: reference {reference} outside the components"))?;
        return check(doc, &doc["components"]["schemas"][name], value, at);
    }
    if let Some(types) = types(&schema["type"]) {
        if !types.iter().any(|t| is(value, t)) {
            return Err(format!("{at}: {value} is not of type {types:?}"));
        }
    }
    if let Some(allowed) = schema["enum"].as_array() {
        if !allowed.contains(value) {
            return Err(format!("{at}: {value} is not one of {allowed:?}"));
        }
    }
    if let (Some(object), Some(values)) = (value.as_object(), schema.get("additionalProperties")) {
        if values.is_object() && schema.get("properties").is_none() {
            for (name, v) in object {
                check(doc, values, v, &format!("{at}.{name}"))?;
            }
        }
    }
    if let (Some(object), Some(properties)) = (value.as_object(), schema["properties"].as_object())
    {
        for required in schema["required"].as_array().into_iter().flatten() {
            let name = required.as_str().unwrap_or_default();
            if !object.contains_key(name) {
                return Err(format!("{at}: no {name}"));
            }
        }
        for (name, v) in object {
            match properties.get(name) {
                Some(p) => check(doc, p, v, &format!("{at}.{name}"))?,
                None if schema["additionalProperties"] == Value::Bool(false) => {
                    return Err(format!("{at}: {name} is not in the document"))
                }
                None => {}
            }
        }
    }
    if let (Some(items), Some(schema)) = (value.as_array(), schema.get("items")) {
        for (i, v) in items.iter().enumerate() {
            check(doc, schema, v, &format!("{at}[{i}]"))?;
        }
    }
    Ok(())
}

fn types(t: &Value) -> Option<Vec<&str>> {
    match t {
        Value::String(s) => Some(vec![s.as_str()]),
        Value::Array(a) => Some(a.iter().filter_map(Value::as_str).collect()),
        _ => None,
    }
}

fn is(value: &Value, t: &str) -> bool {
    match t {
        "null" => value.is_null(),
        "string" => value.is_string(),
        "boolean" => value.is_boolean(),
        "integer" => value.is_i64() || value.is_u64(),
        "number" => value.is_number(),
        "array" => value.is_array(),
        "object" => value.is_object(),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn differences_are_found() {
        let doc = json!({"components": {"schemas": {"P": {
            "type": "object", "additionalProperties": false, "required": ["a"],
            "properties": {"a": {"type": ["integer", "null"]}, "s": {"enum": ["x"]}}}}}});
        let p = json!({"$ref": "#/components/schemas/P"});
        let list = json!({"type": "array", "items": {"$ref": "#/components/schemas/P"}});
        assert!(check(&doc, &p, &json!({"a": 1, "s": "x"}), "$").is_ok());
        assert!(check(&doc, &p, &json!({"a": null}), "$").is_ok());
        assert!(check(&doc, &p, &json!({"a": "1"}), "$").is_err());
        assert!(check(&doc, &p, &json!({}), "$").is_err());
        assert!(check(&doc, &p, &json!({"a": 1, "b": 2}), "$").is_err());
        assert!(check(&doc, &p, &json!({"a": 1, "s": "y"}), "$").is_err());
        assert!(check(&doc, &list, &json!([{"a": 1}, {"a": 1.5}]), "$").is_err());
    }
}
