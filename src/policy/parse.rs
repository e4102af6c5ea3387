//! Text into documents: a JSON stream (what `kubectl get -o json` prints) or YAML with
//! several documents, with limits that stop bombs and nothing else.
//!
//! Real inputs are large (a 150k-pod cluster export is one `List` of hundreds of MB), so
//! counts of documents, nodes and events are not limited: they cannot outgrow the text,
//! and the text is bounded. What is limited is what lets a small text cost a lot: alias
//! and anchor expansion (YAML "billion laughs"), nesting depth (stack), and the size itself.

use serde_json::Value;

/// The largest manifest file sluice reads. Reading it takes several times its size in memory.
pub const MAX_FILE_BYTES: usize = 1 << 30;
/// Deeper nesting than any Kubernetes object needs (serde_json's own limit is 128 too).
pub const MAX_DEPTH: usize = 128;

/// YAML 1.2 booleans only: in YAML 1.1 `y` and `n` are booleans, and namespaces called `y`
/// are common in NetworkPolicy examples (the upstream suite uses x, y, z).
pub fn yaml_options() -> serde_saphyr::Options {
    let mut options = serde_saphyr::Options::default();
    options.strict_booleans = true;
    let mut budget = serde_saphyr::Budget::default();
    budget.max_reader_input_bytes = Some(MAX_FILE_BYTES);
    budget.max_documents = usize::MAX;
    budget.max_nodes = usize::MAX;
    budget.max_events = usize::MAX;
    budget.max_total_scalar_bytes = MAX_FILE_BYTES;
    budget.max_total_comment_bytes = MAX_FILE_BYTES;
    budget.max_depth = MAX_DEPTH;
    options.budget = Some(budget);
    options
}

/// Calls `each` with every document of `text` in order (null documents are skipped).
/// Returns a plain message when the text cannot be read as a whole.
pub fn documents(source: &str, text: &str, mut each: impl FnMut(Value)) -> Result<(), String> {
    if text.len() > MAX_FILE_BYTES {
        return Err(format!(
            "{source}: is {} MiB, more than sluice reads from one file ({} MiB): split it",
            text.len() >> 20,
            MAX_FILE_BYTES >> 20
        ));
    }
    let starts_json = matches!(text.trim_start().chars().next(), Some('{' | '['));
    let named_json = source.to_ascii_lowercase().ends_with(".json");
    if starts_json || named_json {
        let parsed: Result<Vec<Value>, serde_json::Error> =
            serde_json::Deserializer::from_str(text)
                .into_iter()
                .collect();
        match parsed {
            Ok(docs) => {
                docs.into_iter().filter(|d| !d.is_null()).for_each(each);
                return Ok(());
            }
            // Flow-style YAML also starts with `{`: only a .json file must be JSON.
            Err(e) if named_json => {
                return Err(format!("{source}: is not valid JSON: {}", plain_json(&e)))
            }
            Err(_) => {}
        }
    }
    let mut bytes = text.as_bytes();
    for (i, doc) in
        serde_saphyr::read_with_options::<_, Value>(&mut bytes, yaml_options()).enumerate()
    {
        match doc {
            Ok(d) if d.is_null() => {}
            Ok(d) => each(d),
            Err(e) => return Err(plain_yaml(source, i + 1, &e)),
        }
    }
    Ok(())
}

fn plain_json(e: &serde_json::Error) -> String {
    let s = e.to_string();
    if s.contains("recursion limit") {
        format!("nested deeper than {MAX_DEPTH} levels (a limit against malicious input)")
    } else {
        s
    }
}

fn plain_yaml(source: &str, document: usize, e: &serde_saphyr::Error) -> String {
    let s = e.to_string();
    let lower = s.to_lowercase();
    let limit = lower.contains("budget")
        || lower.contains("alias")
        || lower.contains("anchor")
        || lower.contains("depth")
        || lower.contains("nesting");
    if limit {
        format!(
            "{source} document {document}: hits a limit against YAML bombs (alias/anchor expansion, nesting deeper than {MAX_DEPTH}, or more than {} MiB): {s}",
            MAX_FILE_BYTES >> 20
        )
    } else {
        format!("{source} document {document}: is not valid YAML: {s}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn docs(text: &str) -> Result<Vec<Value>, String> {
        let mut out = vec![];
        documents("t.yaml", text, |d| out.push(d)).map(|()| out)
    }

    #[test]
    fn many_documents_and_nodes_load() {
        let text: String = (0..3000).map(|i| format!("---\na: {i}\n")).collect();
        assert_eq!(docs(&text).unwrap().len(), 3000);
        let list: String = format!(
            "items:\n{}",
            (0..300_000).map(|i| format!("- {i}\n")).collect::<String>()
        );
        assert_eq!(docs(&list).unwrap().len(), 1);
    }

    #[test]
    fn bombs_and_syntax_errors_are_plain_errors() {
        let mut laughs = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 1..12 {
            let p = i - 1;
            laughs.push_str(&format!(
                "a{i}: &a{i} [*a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}]\n"
            ));
        }
        let e = docs(&laughs).unwrap_err();
        assert!(e.contains("limit"), "{e}");
        let deep = format!("{}1{}", "[".repeat(1000), "]".repeat(1000));
        assert!(docs(&deep).unwrap_err().contains("limit"));
        let deep_yaml: String = (0..300).map(|i| format!("{}a:\n", " ".repeat(i))).collect();
        assert!(docs(&deep_yaml).unwrap_err().contains("limit"));
        let e = docs("a: [1, 2\nb: 3\n").unwrap_err();
        assert!(e.contains("not valid YAML"), "{e}");
        let mut json = vec![];
        let e = documents("x.JSON", "{\"a\": 1,}", |d| json.push(d)).unwrap_err();
        assert!(e.contains("not valid JSON"), "{e}");
    }

    #[test]
    fn json_streams_and_flow_yaml_both_read() {
        assert_eq!(docs("{\"a\": 1} {\"b\": 2}").unwrap().len(), 2);
        assert_eq!(docs("{a: 1, b: [x, y]}").unwrap().len(), 1);
    }
}
