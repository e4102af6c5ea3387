//! No import cycles between modules anywhere in src/: the files (modules) of the crate must use
//! each other without a cycle. A parent (`mod.rs`, `lib.rs`) may use its children and children
//! may use their parent; that is nesting, not a cycle.
//!
//! Dependencies are read from source text: every `crate::a::b` and `super::a` path in code
//! outside comments and `#[cfg(test)]` modules, `use` groups (`use crate::{a, b::c}`) expanded.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// One source file: its module path (`["conformance", "backend"]`; `mod.rs` is its
/// directory's path) and its text.
struct File {
    module: Vec<String>,
    text: String,
}

/// `#[path]` renames in lib.rs: module name -> directory on disk.
const RENAMES: &[(&str, &str)] = &[("ebpf", "ebpf-fallback")];

fn load(src: &Path) -> Vec<File> {
    let mut out = Vec::new();
    walk(src, src, &mut out);
    out
}

fn walk(root: &Path, dir: &Path, out: &mut Vec<File>) {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            walk(root, &p, out);
        } else if p.extension().is_some_and(|e| e == "rs") {
            let rel = p.strip_prefix(root).unwrap();
            let mut module: Vec<String> = rel
                .with_extension("")
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect();
            for m in module.iter_mut() {
                if let Some((name, _)) = RENAMES.iter().find(|(_, d)| d == m) {
                    *m = name.to_string();
                }
            }
            let last = module.last().unwrap().clone();
            // lib.rs and main.rs are the crate root; bin/ holds other crates.
            if module[0] == "bin" || (module.len() == 1 && last == "main") {
                continue;
            }
            if last == "mod" || (module.len() == 1 && last == "lib") {
                module.pop();
            }
            out.push(File {
                module,
                text: std::fs::read_to_string(&p).unwrap(),
            });
        }
    }
}

/// The code of a file without comments, string contents and `#[cfg(test)]` items.
fn code(text: &str) -> String {
    let mut out = String::new();
    let mut skip_depth: Option<usize> = None;
    let mut depth = 0usize;
    let mut pending_test = false;
    for line in text.lines() {
        let t = line.trim_start();
        if t.starts_with("//") {
            continue;
        }
        let line = match line.find("//") {
            Some(i) if !line[..i].contains('"') => &line[..i],
            _ => line,
        };
        if t.starts_with("#[cfg(test)]") {
            pending_test = true;
            continue;
        }
        let opens = line.matches('{').count();
        let closes = line.matches('}').count();
        if pending_test && skip_depth.is_none() {
            if opens > 0 {
                skip_depth = Some(depth);
            }
            pending_test = opens == 0 && !line.trim_end().ends_with(';');
        }
        depth = (depth + opens).saturating_sub(closes);
        if let Some(d) = skip_depth {
            if depth <= d {
                skip_depth = None;
            }
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// Paths in `code` that start with `crate::` or `super::`, braces expanded.
fn paths(code: &str) -> Vec<String> {
    let mut out = Vec::new();
    let b = code.as_bytes();
    for start in ["crate::", "super::"] {
        let mut from = 0;
        while let Some(i) = code[from..].find(start) {
            let at = from + i;
            from = at + start.len();
            if at > 0 && (b[at - 1].is_ascii_alphanumeric() || b[at - 1] == b'_') {
                continue;
            }
            let end = path_end(code, at);
            expand(&code[at..end], &mut out);
        }
    }
    out
}

fn path_end(code: &str, at: usize) -> usize {
    let b = code.as_bytes();
    let mut depth = 0i32;
    let mut i = at;
    while i < b.len() {
        let c = b[i];
        match c {
            b'{' => depth += 1,
            b'}' if depth == 0 => break,
            b'}' => depth -= 1,
            _ if depth > 0 => {}
            _ if c.is_ascii_alphanumeric() || c == b'_' || c == b':' => {}
            _ => break,
        }
        i += 1;
    }
    i
}

fn expand(path: &str, out: &mut Vec<String>) {
    let path: String = path.chars().filter(|c| !c.is_whitespace()).collect();
    match path.find('{') {
        None => out.push(path.trim_end_matches(':').to_string()),
        Some(i) => {
            let prefix = &path[..i];
            let inner = &path[i + 1..path.rfind('}').unwrap_or(path.len())];
            let mut depth = 0;
            let mut last = 0;
            let bytes = inner.as_bytes();
            for (j, &c) in bytes.iter().enumerate() {
                match c {
                    b'{' => depth += 1,
                    b'}' => depth -= 1,
                    b',' if depth == 0 => {
                        expand(&format!("{prefix}{}", &inner[last..j]), out);
                        last = j + 1;
                    }
                    _ => {}
                }
            }
            if last < inner.len() {
                expand(&format!("{prefix}{}", &inner[last..]), out);
            }
        }
    }
}

/// The module a path points into: the longest prefix that is a known module.
fn resolve(from: &File, path: &str, modules: &BTreeSet<Vec<String>>) -> Option<Vec<String>> {
    let mut segs: Vec<&str> = path.split("::").filter(|s| !s.is_empty()).collect();
    let mut base: Vec<String> = Vec::new();
    if segs.first() == Some(&"crate") {
        segs.remove(0);
    } else {
        // `super` is relative to the file's own module (a `mod.rs` is its directory).
        base = from.module.clone();
        while segs.first() == Some(&"super") {
            segs.remove(0);
            base.pop()?;
        }
    }
    let mut best = base.clone();
    let mut cur = base;
    for s in segs {
        if s == "self" {
            continue;
        }
        cur.push(s.to_string());
        if modules.contains(&cur) {
            best = cur.clone();
        } else {
            break;
        }
    }
    Some(best)
}

/// Module -> modules it uses (file level).
fn edges(files: &[File]) -> BTreeMap<Vec<String>, BTreeSet<Vec<String>>> {
    let modules: BTreeSet<Vec<String>> = files.iter().map(|f| f.module.clone()).collect();
    let mut g: BTreeMap<Vec<String>, BTreeSet<Vec<String>>> = BTreeMap::new();
    for f in files {
        let e = g.entry(f.module.clone()).or_default();
        for p in paths(&code(&f.text)) {
            if let Some(to) = resolve(f, &p, &modules) {
                if to != f.module {
                    e.insert(to);
                }
            }
        }
    }
    g
}

/// Cycles between files: strongly connected components of the file graph, where a file's use
/// of its own ancestors or descendants (`mod.rs` and its children) is nesting and not counted.
fn cycles(files: &[File]) -> Vec<String> {
    let g = edges(files);
    let name = |m: &Vec<String>| {
        if m.is_empty() {
            "crate".to_string()
        } else {
            m.join("::")
        }
    };
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (from, tos) in &g {
        let e = graph.entry(name(from)).or_default();
        for to in tos {
            let common = from.iter().zip(to).take_while(|(a, b)| a == b).count();
            if common == from.len() || common == to.len() {
                continue; // ancestor and descendant
            }
            e.insert(name(to));
        }
    }
    let mut out = Vec::new();
    for scc in sccs(&graph) {
        if scc.len() < 2 {
            continue;
        }
        let mut reasons = Vec::new();
        for a in &scc {
            for b in &graph[a] {
                if scc.contains(b) {
                    reasons.push(format!("{a} -> {b}"));
                }
            }
        }
        out.push(format!(
            "{{{}}}: {}",
            scc.iter().cloned().collect::<Vec<_>>().join(", "),
            reasons.join("; ")
        ));
    }
    out.sort();
    out
}

/// Tarjan's strongly connected components.
fn sccs(g: &BTreeMap<String, BTreeSet<String>>) -> Vec<BTreeSet<String>> {
    struct St<'a> {
        g: &'a BTreeMap<String, BTreeSet<String>>,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        on: BTreeSet<&'a str>,
        out: Vec<BTreeSet<String>>,
    }
    fn visit<'a>(s: &mut St<'a>, v: &'a str) {
        let i = s.index.len();
        s.index.insert(v, i);
        s.low.insert(v, i);
        s.stack.push(v);
        s.on.insert(v);
        if let Some(ws) = s.g.get(v) {
            for w in ws {
                let w = w.as_str();
                if !s.index.contains_key(w) {
                    visit(s, w);
                    let l = s.low[w].min(s.low[v]);
                    s.low.insert(v, l);
                } else if s.on.contains(w) {
                    let l = s.index[w].min(s.low[v]);
                    s.low.insert(v, l);
                }
            }
        }
        if s.low[v] == s.index[v] {
            let mut c = BTreeSet::new();
            loop {
                let w = s.stack.pop().unwrap();
                s.on.remove(w);
                c.insert(w.to_string());
                if w == v {
                    break;
                }
            }
            s.out.push(c);
        }
    }
    let mut s = St {
        g,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on: BTreeSet::new(),
        out: Vec::new(),
    };
    for v in g.keys() {
        if !s.index.contains_key(v.as_str()) {
            visit(&mut s, v);
        }
    }
    s.out
}

#[test]
fn no_module_cycles_in_src() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let found = cycles(&load(&src));
    assert!(
        found.is_empty(),
        "import cycles between modules (files that use each other, directly or through \
         others; a mod.rs and its children do not count):\n  {}",
        found.join("\n  ")
    );
}

fn synthetic(files: &[(&str, &str)]) -> Vec<File> {
    files
        .iter()
        .map(|(m, text)| {
            let mut module: Vec<String> = m.split("::").map(String::from).collect();
            if module.last().unwrap() == "mod" {
                module.pop();
            }
            File {
                module,
                text: text.to_string(),
            }
        })
        .collect()
}

#[test]
fn the_checker_finds_a_synthetic_cycle() {
    // a -> b::x -> c -> a.
    let files = synthetic(&[
        ("a", "use crate::b::x::Thing;\n"),
        ("b::mod", "pub mod x;\npub use x::Thing;\n"),
        ("b::x", "pub fn f() { crate::c::g() }\n"),
        ("c", "use crate::{a::{self, A}, d};\n"),
        ("d", "// use crate::a;\n"),
    ]);
    let cycles = cycles(&files);
    assert_eq!(cycles.len(), 1, "{cycles:?}");
    assert!(cycles[0].starts_with("{a, b::x, c}"), "{cycles:?}");
}

#[test]
fn nesting_comments_and_tests_are_not_cycles() {
    let files = synthetic(&[
        ("p::mod", "mod q; mod r; pub use q::Q; use r::R;\n"),
        ("p::q", "use super::R; // crate::p::r\n"),
        (
            "p::r",
            "pub struct R;\n#[cfg(test)]\nmod tests {\n    use crate::p::q::Q;\n}\n",
        ),
    ]);
    assert!(cycles(&files).is_empty());
    // super:: reaching a sibling counts.
    let files = synthetic(&[
        ("p::mod", "mod q; mod r;\n"),
        ("p::q", "use super::r::R;\n"),
        ("p::r", "fn f() { super::q::f() }\n"),
    ]);
    assert_eq!(cycles(&files).len(), 1);
}
