//! The layout rules of ARCHITECTURE.md, checked on the source itself:
//! - the agent's concept folders import each other in one direction only (api → catalog →
//!   protect / recover / replication → the foundation modules), and replication is the only
//!   concept that reaches into two others;
//! - no circle of imports between sibling modules anywhere in the agent;
//! - no source file over 800 lines.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

const LINES_MAX: usize = 800;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The module path of a file under `src` (`protect/vpg.rs` → ["protect", "vpg"]).
fn module_of(src: &Path, file: &Path) -> Vec<String> {
    let rel = file.strip_prefix(src).unwrap().with_extension("");
    let mut parts: Vec<String> = rel.iter().map(|c| c.to_string_lossy().into_owned()).collect();
    if matches!(parts.last().map(String::as_str), Some("mod" | "lib")) {
        parts.pop();
    }
    parts
}

/// Module paths a file refers to: `crate::a::b…` and `super::a…`, resolved against the
/// file's own module. Comments are skipped.
fn references(module: &[String], text: &str) -> BTreeSet<Vec<String>> {
    let mut out = BTreeSet::new();
    for line in text.lines() {
        let code = line.split("//").next().unwrap_or("");
        // `super` of `a/b.rs` and of `a/b/mod.rs` (both module a::b) is `a`.
        let parent = module[..module.len().saturating_sub(1)].to_vec();
        for (prefix, base) in [("crate::", Vec::new()), ("super::", parent)] {
            let mut rest = code;
            while let Some(i) = rest.find(prefix) {
                let before = rest[..i].chars().last();
                let tail = &rest[i + prefix.len()..];
                rest = tail;
                if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':') {
                    continue;
                }
                let path: Vec<String> = tail
                    .split("::")
                    .map(|seg| {
                        seg.chars()
                            .take_while(|c| c.is_alphanumeric() || *c == '_')
                            .collect::<String>()
                    })
                    .take_while(|seg| !seg.is_empty() && seg.chars().next().is_some_and(|c| c.is_lowercase()))
                    .collect();
                let mut full = base.clone();
                full.extend(path);
                out.insert(full);
            }
        }
    }
    out
}

struct Crate {
    /// Module path → what it refers to (module paths, possibly too long: items follow).
    refs: BTreeMap<Vec<String>, BTreeSet<Vec<String>>>,
}

fn load(src: &Path) -> Crate {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    let mut refs = BTreeMap::new();
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        let m = module_of(src, &f);
        refs.insert(m.clone(), references(&m, &text));
    }
    Crate { refs }
}

impl Crate {
    /// The longest known module that `path` starts with.
    fn resolve(&self, path: &[String]) -> Vec<String> {
        (0..=path.len())
            .rev()
            .map(|n| path[..n].to_vec())
            .find(|p| self.refs.contains_key(p))
            .unwrap_or_default()
    }

    /// Edges between the children of `parent`: child → child it refers to.
    fn edges_under(&self, parent: &[String]) -> BTreeMap<String, BTreeSet<String>> {
        let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for (from, targets) in &self.refs {
            if from.len() <= parent.len() || !from.starts_with(parent) {
                continue;
            }
            let a = &from[parent.len()];
            for t in targets {
                let t = self.resolve(t);
                if t.len() <= parent.len() || !t.starts_with(parent) {
                    continue;
                }
                let b = &t[parent.len()];
                if a != b {
                    edges.entry(a.clone()).or_default().insert(b.clone());
                }
            }
        }
        edges
    }

    fn parents(&self) -> BTreeSet<Vec<String>> {
        self.refs
            .keys()
            .map(|m| m[..m.len().saturating_sub(1)].to_vec())
            .collect()
    }
}

/// A circle in `edges`, if there is one.
fn find_cycle(edges: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        n: &str,
        edges: &BTreeMap<String, BTreeSet<String>>,
        state: &mut BTreeMap<String, u8>,
        stack: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        state.insert(n.to_string(), 1);
        stack.push(n.to_string());
        for m in edges.get(n).into_iter().flatten() {
            match state.get(m.as_str()) {
                Some(1) => {
                    let i = stack.iter().position(|s| s == m).unwrap();
                    let mut c = stack[i..].to_vec();
                    c.push(m.clone());
                    return Some(c);
                }
                Some(_) => {}
                None => {
                    if let Some(c) = visit(m, edges, state, stack) {
                        return Some(c);
                    }
                }
            }
        }
        stack.pop();
        state.insert(n.to_string(), 2);
        None
    }
    let mut state = BTreeMap::new();
    for n in edges.keys() {
        if !state.contains_key(n)
            && let Some(c) = visit(n, edges, &mut state, &mut Vec::new())
        {
            return Some(c);
        }
    }
    None
}

#[test]
fn no_circle_of_imports_between_sibling_modules() {
    for src in ["agent/src", "journal/src", "nbd/src", "proto/src", "src"] {
        let krate = load(&root().join(src));
        let mut circles = Vec::new();
        for parent in krate.parents() {
            if let Some(c) = find_cycle(&krate.edges_under(&parent)) {
                circles.push(format!("{src}/{}: {}", parent.join("/"), c.join(" → ")));
            }
        }
        assert!(circles.is_empty(), "circles of imports:\n{}", circles.join("\n"));
    }
}

/// The agent's top-level modules by layer: a module may refer to its own layer's
/// foundation and to layers below, never above; the three concepts in the middle layer
/// refer to each other only as listed.
#[test]
fn the_agent_concepts_point_one_way() {
    let layer = |m: &str| -> Option<u8> {
        Some(match m {
            "activation" | "admission" | "checkpoint" | "clock" | "config" | "diverged" | "error" | "events"
            | "failpoint" | "io" | "meta" | "ranges" | "size" => 0,
            "protect" | "recover" => 1,
            "replication" => 2,
            "catalog" => 3,
            "failover" => 4,
            "api" => 5,
            "daemon" => 6,
            _ => return None,
        })
    };
    let krate = load(&root().join("agent/src"));
    let edges = krate.edges_under(&[]);
    let mut wrong = Vec::new();
    for (a, targets) in &edges {
        let Some(la) = layer(a) else {
            wrong.push(format!(
                "{a}: not placed in a layer (add it to this test and to ARCHITECTURE.md)"
            ));
            continue;
        };
        for b in targets {
            let Some(lb) = layer(b) else { continue };
            // Foundation modules may use each other (the circle test keeps them acyclic);
            // everything else points strictly down.
            if lb > la || (lb == la && la != 0) {
                wrong.push(format!("{a} (layer {la}) → {b} (layer {lb})"));
            }
        }
    }
    assert!(wrong.is_empty(), "imports against the layering:\n{}", wrong.join("\n"));
}

#[test]
fn no_source_file_over_800_lines() {
    let mut long = Vec::new();
    for src in ["agent/src", "journal/src", "nbd/src", "proto/src", "src", "tests"] {
        let mut files = Vec::new();
        rust_files(&root().join(src), &mut files);
        for f in files {
            let n = std::fs::read_to_string(&f).unwrap().lines().count();
            if n > LINES_MAX {
                long.push(format!("{} has {n} lines", f.strip_prefix(root()).unwrap().display()));
            }
        }
    }
    assert!(long.is_empty(), "split these by concept:\n{}", long.join("\n"));
}
