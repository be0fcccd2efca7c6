//! Makes the schemas schemars generates acceptable to the strictest MCP clients.
//!
//! schemars (JSON Schema 2020-12) emits `$schema`, `$defs` + `$ref` for nested types,
//! non-standard integer formats (`uint32`, `int64`, ...) and `Option<T>` as
//! `type: [T, "null"]` or `anyOf: [T, {type: null}]`. Several clients reject each of
//! these (unresolved `$ref`, unknown formats, nullable unions), and some then drop every
//! tool of the server. Each tool schema is rewritten once, when the router is built.

use std::sync::Arc;

use rmcp::handler::server::router::tool::ToolRouter;
use rmcp::model::JsonObject;
use serde_json::{Map, Value};

/// Formats defined by JSON Schema itself; anything else (`uint32`, `double`) is dropped.
const STANDARD_FORMATS: &[&str] = &[
    "date-time",
    "date",
    "time",
    "duration",
    "email",
    "hostname",
    "ipv4",
    "ipv6",
    "uri",
    "uri-reference",
    "uuid",
    "regex",
];

/// Bounds the inlining of recursive `$ref`s (none of our types recurse).
const MAX_DEPTH: usize = 32;

/// A copy of `schema` with references inlined, nullable unions collapsed to their
/// non-null type (an optional field is simply not `required`) and non-standard formats
/// dropped.
pub fn sanitize_schema(schema: &JsonObject) -> JsonObject {
    let defs = schema
        .get("$defs")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    let mut root = schema.clone();
    root.remove("$schema");
    root.remove("$defs");
    root.remove("title");
    sanitize_object(&mut root, &defs, 0);
    root
}

fn sanitize_value(value: &mut Value, defs: &Map<String, Value>, depth: usize) {
    match value {
        Value::Object(object) => sanitize_object(object, defs, depth),
        Value::Array(items) => items
            .iter_mut()
            .for_each(|v| sanitize_value(v, defs, depth + 1)),
        _ => {}
    }
}

fn sanitize_object(object: &mut Map<String, Value>, defs: &Map<String, Value>, depth: usize) {
    if depth > MAX_DEPTH {
        return;
    }
    // Inlining a reference can bring in a nullable union and collapsing a union can bring
    // in a reference: repeat until neither is left at this level.
    while inline_reference(object, defs) || collapse_nullable_union(object) {}
    if let Some(Value::Array(types)) = object.get("type") {
        let non_null: Vec<Value> = types.iter().filter(|t| *t != "null").cloned().collect();
        if non_null.len() == 1 {
            object.insert("type".into(), non_null[0].clone());
        }
    }
    if let Some(Value::String(format)) = object.get("format")
        && !STANDARD_FORMATS.contains(&format.as_str())
    {
        object.remove("format");
    }
    if object.get("default") == Some(&Value::Null) {
        object.remove("default");
    }
    for (key, child) in object.iter_mut() {
        if key == "properties" {
            // The keys of `properties` are field names, not keywords: walk only their values.
            if let Value::Object(fields) = child {
                fields
                    .values_mut()
                    .for_each(|v| sanitize_value(v, defs, depth + 1));
            }
        } else {
            sanitize_value(child, defs, depth + 1);
        }
    }
}

/// Replaces a local `$ref` by the definition it points to; true when it did.
fn inline_reference(object: &mut Map<String, Value>, defs: &Map<String, Value>) -> bool {
    let Some(Value::String(reference)) = object.remove("$ref") else {
        return false;
    };
    let target = reference
        .strip_prefix("#/$defs/")
        .and_then(|name| defs.get(name))
        .and_then(Value::as_object);
    if let Some(definition) = target {
        for (key, v) in definition {
            object.entry(key.clone()).or_insert_with(|| v.clone());
        }
    }
    true
}

/// Turns `anyOf`/`oneOf` `[X, {type: null}]` into X; true when it did.
fn collapse_nullable_union(object: &mut Map<String, Value>) -> bool {
    for key in ["anyOf", "oneOf"] {
        let Some(Value::Array(arms)) = object.get(key) else {
            continue;
        };
        let non_null: Vec<&Value> = arms.iter().filter(|arm| !is_null_type(arm)).collect();
        if arms.len() == 2 && non_null.len() == 1 {
            let only = non_null[0].clone();
            object.remove(key);
            if let Value::Object(arm) = only {
                for (k, v) in arm {
                    object.entry(k).or_insert(v);
                }
            }
            return true;
        }
    }
    false
}

fn is_null_type(schema: &Value) -> bool {
    schema.get("type") == Some(&Value::String("null".into()))
}

/// Rewrites every tool's input and output schema in `router`.
pub fn sanitize_router<S>(mut router: ToolRouter<S>) -> ToolRouter<S> {
    for route in router.map.values_mut() {
        route.attr.input_schema = Arc::new(sanitize_schema(&route.attr.input_schema));
        if let Some(output) = &route.attr.output_schema {
            route.attr.output_schema = Some(Arc::new(sanitize_schema(output)));
        }
    }
    router
}

/// Every place in `schema` that a strict client would reject, as JSON pointers with a reason.
/// Empty when the schema is clean; the tests use it on every tool.
pub fn strictness_violations(schema: &Value) -> Vec<String> {
    let mut found = Vec::new();
    walk_violations(schema, String::new(), &mut found);
    found
}

fn walk_violations(value: &Value, at: String, found: &mut Vec<String>) {
    match value {
        Value::Object(object) => {
            for (key, child) in object {
                let here = format!("{at}/{key}");
                match (key.as_str(), child) {
                    ("$ref" | "$defs" | "$schema", _) => {
                        found.push(format!("{here}: {key} is not allowed"))
                    }
                    ("type", Value::Array(_)) => {
                        found.push(format!("{here}: type unions are not allowed"))
                    }
                    ("format", Value::String(f)) if !STANDARD_FORMATS.contains(&f.as_str()) => {
                        found.push(format!("{here}: non-standard format `{f}`"))
                    }
                    ("anyOf" | "oneOf", Value::Array(arms)) if arms.iter().any(is_null_type) => {
                        found.push(format!("{here}: nullable union"))
                    }
                    _ => {}
                }
                if key == "properties" {
                    if let Value::Object(fields) = child {
                        for (name, field) in fields {
                            walk_violations(field, format!("{here}/{name}"), found);
                        }
                    }
                } else {
                    walk_violations(child, here, found);
                }
            }
        }
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                walk_violations(item, format!("{at}/{i}"), found);
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// The schemars artefacts strict clients reject are all rewritten away.
    #[test]
    fn rewrites_refs_nullable_unions_and_formats() {
        let raw = json!({
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "$defs": {"Kind": {"type": "string", "enum": ["a", "b"]}},
            "type": "object",
            "properties": {
                "kind": {"$ref": "#/$defs/Kind", "description": "the kind"},
                "ttl": {"type": ["integer", "null"], "format": "int64", "default": null},
                "list": {"anyOf": [{"type": "array", "items": {"$ref": "#/$defs/Kind"}}, {"type": "null"}]},
                "format": {"type": "string"}
            }
        });
        let Value::Object(raw) = raw else {
            unreachable!()
        };
        let clean = Value::Object(sanitize_schema(&raw));
        assert!(strictness_violations(&Value::Object(raw.clone())).len() >= 4);
        assert_eq!(strictness_violations(&clean), Vec::<String>::new());
        assert_eq!(clean["properties"]["kind"]["enum"], json!(["a", "b"]));
        assert_eq!(clean["properties"]["kind"]["description"], "the kind");
        assert_eq!(clean["properties"]["ttl"], json!({"type": "integer"}));
        assert_eq!(clean["properties"]["list"]["items"]["type"], "string");
        assert_eq!(clean["properties"]["format"], json!({"type": "string"}));
    }
}
