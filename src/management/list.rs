//! List replies: RabbitMQ's sorting, name filtering and pagination query parameters
//! (`sort`, `sort_reverse`, `name`, `use_regex`, `page`, `page_size`) and `columns`, as
//! rabbit_mgmt_util:reply_list_or_paginate applies them.

use std::cmp::Ordering;
use std::collections::HashMap;

use axum::response::Response;
use serde_json::{json, Value};

use super::{reply, ApiError, ApiResult};

/// RabbitMQ's page size when `page` is given without `page_size`, and its largest.
const DEFAULT_PAGE_SIZE: usize = 100;
const MAX_PAGE_SIZE: usize = 500;

/// Sort, filter and (if `page` is asked for) paginate `items`. Without `page` the reply
/// is the plain array, as RabbitMQ's.
pub fn reply_list(mut items: Vec<Value>, q: &HashMap<String, String>) -> ApiResult<Response> {
    sort(&mut items, q);
    if let Some(cols) = q.get("columns").filter(|c| !c.is_empty()) {
        items = items.iter().map(|v| columns(v, cols)).collect();
    }
    let Some(page) = q.get("page") else {
        return Ok(reply(Value::Array(filter(items, q)?)));
    };
    let invalid = || ApiError::bad_request("Pagination parameters are invalid");
    let page: usize = page.parse().map_err(|_| invalid())?;
    let page_size: usize = match q.get("page_size") {
        Some(s) => s.parse().map_err(|_| invalid())?,
        None => DEFAULT_PAGE_SIZE,
    };
    if page == 0 || page_size == 0 {
        return Err(invalid());
    }
    if page_size > MAX_PAGE_SIZE {
        return Err(ApiError::bad_request(format!(
            "Page size cannot be greater than {MAX_PAGE_SIZE}"
        )));
    }
    let total = items.len();
    let filtered = filter(items, q)?;
    let filtered_count = filtered.len();
    let page_count = filtered_count.div_ceil(page_size).max(1);
    if page > page_count {
        return Err(ApiError::bad_request("Page out of range"));
    }
    let items: Vec<Value> = filtered
        .into_iter()
        .skip((page - 1) * page_size)
        .take(page_size)
        .collect();
    Ok(reply(json!({
        "filtered_count": filtered_count,
        "item_count": items.len(),
        "page": page,
        "page_count": page_count,
        "page_size": page_size,
        "total_count": total,
        "items": items,
    })))
}

/// `name` filters by substring, case-insensitively, or by regular expression with
/// `use_regex=true`.
fn filter(items: Vec<Value>, q: &HashMap<String, String>) -> ApiResult<Vec<Value>> {
    let Some(name) = q.get("name").filter(|n| !n.is_empty()) else {
        return Ok(items);
    };
    let name_of = |v: &Value| {
        v.get("name")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned()
    };
    if q.get("use_regex").is_some_and(|r| r == "true") {
        let re = regex::RegexBuilder::new(name)
            .case_insensitive(true)
            .build()
            .map_err(|e| ApiError::bad_request(format!("Invalid regex: {e}")))?;
        Ok(items
            .into_iter()
            .filter(|v| re.is_match(&name_of(v)))
            .collect())
    } else {
        let needle = name.to_lowercase();
        Ok(items
            .into_iter()
            .filter(|v| name_of(v).to_lowercase().contains(&needle))
            .collect())
    }
}

/// `sort` (a field, dotted for nested ones like `message_stats.publish`) first, then
/// vhost and name; `sort_reverse=true` reverses the whole order.
fn sort(items: &mut [Value], q: &HashMap<String, String>) {
    let mut keys: Vec<&str> = Vec::new();
    if let Some(s) = q.get("sort").filter(|s| !s.is_empty()) {
        keys.push(s);
    }
    keys.extend(["vhost", "name"]);
    items.sort_by(|a, b| {
        keys.iter()
            .map(|k| compare(field(a, k), field(b, k)))
            .find(|o| *o != Ordering::Equal)
            .unwrap_or(Ordering::Equal)
    });
    if q.get("sort_reverse").is_some_and(|r| r == "true") {
        items.reverse();
    }
}

/// `columns=name,message_stats.publish`: only those fields (dotted ones nested as in
/// the object), as rabbit_mgmt_util:extract_columns.
fn columns(v: &Value, cols: &str) -> Value {
    let mut out = Value::Object(Default::default());
    for col in cols.split(',').map(str::trim).filter(|c| !c.is_empty()) {
        let Some(found) = field(v, col) else { continue };
        let mut at = &mut out;
        let parts: Vec<&str> = col.split('.').collect();
        for (i, part) in parts.iter().enumerate() {
            let Value::Object(m) = at else { break };
            if i + 1 == parts.len() {
                m.insert((*part).to_owned(), found.clone());
                break;
            }
            at = m
                .entry((*part).to_owned())
                .or_insert_with(|| Value::Object(Default::default()));
        }
    }
    out
}

fn field<'a>(v: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.').try_fold(v, |v, k| v.get(k))
}

/// Missing sorts first, then numbers by value, then everything else by its text.
fn compare(a: Option<&Value>, b: Option<&Value>) -> Ordering {
    match (a, b) {
        (None, None) => Ordering::Equal,
        (None, _) => Ordering::Less,
        (_, None) => Ordering::Greater,
        (Some(a), Some(b)) => match (a.as_f64(), b.as_f64()) {
            (Some(x), Some(y)) => x.partial_cmp(&y).unwrap_or(Ordering::Equal),
            _ => text(a).cmp(&text(b)),
        },
    }
}

fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn sorts_by_a_nested_numeric_field_then_name() {
        let mut items = vec![
            json!({"name": "b", "s": {"n": 2}}),
            json!({"name": "a", "s": {"n": 10}}),
            json!({"name": "c", "s": {"n": 2}}),
        ];
        sort(&mut items, &q(&[("sort", "s.n"), ("sort_reverse", "true")]));
        let names: Vec<_> = items.iter().map(|v| v["name"].as_str().unwrap()).collect();
        assert_eq!(names, ["a", "c", "b"]);
    }

    #[test]
    fn columns_keep_only_the_named_fields() {
        let v = json!({"name": "q", "messages": 3, "s": {"a": 1, "b": 2}});
        assert_eq!(
            columns(&v, "name,s.b,missing"),
            json!({"name": "q", "s": {"b": 2}})
        );
    }

    #[test]
    fn filters_by_substring_or_regex() {
        let items = vec![json!({"name": "Orders"}), json!({"name": "billing"})];
        assert_eq!(
            filter(items.clone(), &q(&[("name", "order")]))
                .unwrap()
                .len(),
            1
        );
        let re = q(&[("name", "^b.*g$"), ("use_regex", "true")]);
        assert_eq!(filter(items.clone(), &re).unwrap()[0]["name"], "billing");
        let bad = q(&[("name", "("), ("use_regex", "true")]);
        assert!(filter(items, &bad).is_err());
    }
}
