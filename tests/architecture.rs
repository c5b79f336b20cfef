//! The folders of `src/` are the parts of the system, and no two of them need each other: the
//! graph of `crate::part` paths between folders has no cycle. Top-level files (`config`,
//! `server`, `connection`, ...) are the wiring and the shared pieces, so they are not nodes.
//!
//! Standards: none

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::Path;

type Graph = BTreeMap<String, BTreeSet<String>>;

/// Every `.rs` file under `dir`, at any depth.
fn rust_files(dir: &Path, found: &mut Vec<std::path::PathBuf>) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            rust_files(&path, found);
        } else if path.extension().is_some_and(|e| e == "rs") {
            found.push(path);
        }
    }
}

/// The first path segment after each `crate::`, also inside `crate::{a::x, b::y}`.
fn crate_paths(source: &str) -> BTreeSet<String> {
    let mut parts = BTreeSet::new();
    for (at, _) in source.match_indices("crate::") {
        let rest = &source[at + "crate::".len()..];
        let names: Vec<&str> = match rest.strip_prefix('{') {
            Some(group) => group
                .split('}')
                .next()
                .unwrap_or("")
                .split(',')
                .map(str::trim)
                .collect(),
            None => vec![rest],
        };
        for name in names {
            let word: String = name
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if !word.is_empty() {
                parts.insert(word);
            }
        }
    }
    parts
}

/// Folder -> the other folders its files name.
fn folder_graph(src: &Path) -> Graph {
    let folders: BTreeSet<String> = fs::read_dir(src)
        .expect("src/ is readable")
        .flatten()
        .filter(|e| e.path().is_dir())
        .filter_map(|e| e.file_name().to_str().map(String::from))
        .collect();
    let mut graph = Graph::new();
    for folder in &folders {
        let mut files = Vec::new();
        rust_files(&src.join(folder), &mut files);
        let uses = graph.entry(folder.clone()).or_default();
        for file in files {
            let source = fs::read_to_string(&file).expect("a source file is readable");
            for part in crate_paths(&source) {
                if part != *folder && folders.contains(&part) {
                    uses.insert(part);
                }
            }
        }
    }
    graph
}

/// A cycle in the graph, as the path `a -> b -> ... -> a`, if there is one.
fn find_cycle(graph: &Graph) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        graph: &Graph,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|n| n == node) {
            let mut cycle = path[at..].to_vec();
            cycle.push(node.to_string());
            return Some(cycle);
        }
        if done.contains(node) {
            return None;
        }
        path.push(node.to_string());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(cycle) = visit(next, graph, path, done) {
                return Some(cycle);
            }
        }
        path.pop();
        done.insert(node.to_string());
        None
    }
    let mut done = BTreeSet::new();
    graph
        .keys()
        .find_map(|node| visit(node, graph, &mut Vec::new(), &mut done))
}

fn described(graph: &Graph) -> String {
    graph
        .iter()
        .map(|(folder, uses)| {
            let uses: Vec<&str> = uses.iter().map(String::as_str).collect();
            format!("  {folder} -> {}", uses.join(", "))
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn no_folder_of_src_depends_on_itself_through_others() {
    let graph = folder_graph(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src"));
    assert!(
        graph.len() >= 5,
        "expected the part folders, found:\n{}",
        described(&graph)
    );
    if let Some(cycle) = find_cycle(&graph) {
        panic!(
            "folders depend on each other in a cycle: {}\nthe whole graph:\n{}",
            cycle.join(" -> "),
            described(&graph)
        );
    }
}

#[test]
fn a_cycle_is_found_and_named() {
    let mut graph = Graph::new();
    let edge = |graph: &mut Graph, from: &str, to: &str| {
        graph.entry(from.into()).or_default().insert(to.into());
    };
    edge(&mut graph, "imap", "store");
    edge(&mut graph, "store", "smtp");
    assert_eq!(find_cycle(&graph), None);
    edge(&mut graph, "smtp", "lab");
    edge(&mut graph, "lab", "store");
    assert_eq!(
        find_cycle(&graph).map(|c| c.join(" -> ")),
        Some("store -> smtp -> lab -> store".to_string())
    );
}

#[test]
fn grouped_and_nested_paths_are_read() {
    let source = "use crate::smtp::reply::Reply;\nuse crate::{net::line, store};\nlet x = crate::relay::queue::f();";
    let parts: Vec<String> = crate_paths(source).into_iter().collect();
    assert_eq!(parts, ["net", "relay", "smtp", "store"]);
}
