//! The layout keeps its promises: no module imports another that imports it back, no
//! source file holds two ideas' worth of lines, the configuration is a leaf, and every
//! name the agent writes into the cluster is spelled in src/names.rs only.
//!
//! Modules are files (src/a/b.rs and src/a/b/mod.rs are `a::b`); an import is any
//! `crate::…`, `super::…` or child-module path outside comments and test modules,
//! resolved to the longest module it names. Containment is not dependency: a facade
//! re-exporting its children, or a child using its parent's types, is not a cycle. So an
//! import between `a::x::…` and `a::y::…` counts as one between the siblings `a::x` and
//! `a::y`, and cycles are sought among siblings at every level (top-level modules,
//! `spot_guard`'s parts, …).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

const MAX_LINES: usize = 600;

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("src is readable") {
        let path = entry.expect("directory entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// `src/spot_guard/decide/mod.rs` → `["spot_guard", "decide"]`; binaries and the crate
/// root are left out (they sit on top and import everything).
fn module_of(src: &Path, file: &Path) -> Option<Vec<String>> {
    let relative = file.strip_prefix(src).ok()?;
    let mut parts: Vec<String> = relative
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    if parts.first().is_some_and(|p| p == "bin") {
        return None;
    }
    let last = parts.pop()?;
    let stem = last.trim_end_matches(".rs");
    if !matches!(stem, "mod" | "lib" | "main") {
        parts.push(stem.to_owned());
    }
    (!parts.is_empty()).then_some(parts)
}

/// Code without comments (line comments and doc comments).
fn code(text: &str) -> String {
    text.lines()
        .map(|line| match line.find("//") {
            Some(at) if !line[..at].contains('"') => &line[..at],
            _ => line,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Every path that starts with `crate::` or `super::` in `code`, as segments.
fn paths(code: &str) -> Vec<Vec<String>> {
    let mut found = Vec::new();
    for start in ["crate::", "super::"] {
        let mut rest = code;
        while let Some(at) = rest.find(start) {
            let before = rest[..at].chars().last();
            rest = &rest[at..];
            let end = rest
                .find(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
                .unwrap_or(rest.len());
            if !before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
                found.push(rest[..end].split("::").map(str::to_owned).collect());
            }
            rest = &rest[end..];
        }
    }
    found
}

/// The import `from` → `to` as one between the two children of their deepest common
/// ancestor; none when one contains the other.
fn between_siblings(from: &[String], to: &[String]) -> Option<Vec<String>> {
    let common = from.iter().zip(to).take_while(|(a, b)| a == b).count();
    (common < from.len() && common < to.len()).then(|| to[..=common].to_vec())
}

struct Tree {
    modules: BTreeMap<Vec<String>, PathBuf>,
    imports: BTreeMap<Vec<String>, BTreeSet<Vec<String>>>,
}

fn tree() -> Tree {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let modules: BTreeMap<Vec<String>, PathBuf> = files
        .iter()
        .filter_map(|file| module_of(&src, file).map(|m| (m, file.clone())))
        .collect();
    let resolve = |path: &[String]| -> Option<Vec<String>> {
        (1..=path.len())
            .rev()
            .map(|n| path[..n].to_vec())
            .find(|candidate| modules.contains_key(candidate))
    };
    let mut imports: BTreeMap<Vec<String>, BTreeSet<Vec<String>>> = BTreeMap::new();
    for (module, file) in &modules {
        let source = std::fs::read_to_string(file).expect("source is readable");
        let text = code(source.split("#[cfg(test)]").next().unwrap_or_default());
        let is_dir_module = file.ends_with("mod.rs");
        let mut targets = BTreeSet::new();
        for path in paths(&text) {
            let absolute: Vec<String> = if path[0] == "crate" {
                path[1..].to_vec()
            } else {
                // `super` of a/b.rs is `a`; of a/b/mod.rs it is `a` too (the parent of `a::b`).
                let mut base = module.clone();
                let mut rest = path.as_slice();
                while rest.first().is_some_and(|s| s == "super") {
                    base.pop();
                    rest = &rest[1..];
                }
                base.extend(rest.iter().cloned());
                base
            };
            if let Some(target) = resolve(&absolute) {
                targets.extend(between_siblings(module, &target));
            }
        }
        // `use child::Item` inside a directory module.
        if is_dir_module {
            for line in text.lines() {
                let line = line.trim();
                if let Some(rest) = line.strip_prefix("pub use ").or(line.strip_prefix("use ")) {
                    let first = rest.split("::").next().unwrap_or_default();
                    let mut child = module.clone();
                    child.push(first.to_owned());
                    if modules.contains_key(&child) {
                        targets.extend(between_siblings(module, &child));
                    }
                }
            }
        }
        for target in targets {
            let from = module[..target.len()].to_vec();
            imports.entry(from).or_default().insert(target);
        }
    }
    Tree { modules, imports }
}

fn name(module: &[String]) -> String {
    module.join("::")
}

#[test]
fn no_module_imports_a_module_that_imports_it_back() {
    let tree = tree();
    // Depth-first search for a cycle; report the first one found with its path.
    fn visit(
        node: &Vec<String>,
        tree: &Tree,
        stack: &mut Vec<Vec<String>>,
        done: &mut BTreeSet<Vec<String>>,
    ) -> Option<Vec<String>> {
        if let Some(at) = stack.iter().position(|m| m == node) {
            let mut cycle: Vec<String> = stack[at..].iter().map(|m| name(m)).collect();
            cycle.push(name(node));
            return Some(cycle);
        }
        if done.contains(node) {
            return None;
        }
        stack.push(node.clone());
        for next in tree.imports.get(node).into_iter().flatten() {
            if let Some(cycle) = visit(next, tree, stack, done) {
                return Some(cycle);
            }
        }
        stack.pop();
        done.insert(node.clone());
        None
    }
    let mut done = BTreeSet::new();
    for module in tree.modules.keys() {
        if let Some(cycle) = visit(module, &tree, &mut Vec::new(), &mut done) {
            panic!("import cycle: {}", cycle.join(" -> "));
        }
    }
}

#[test]
fn the_configuration_is_a_leaf() {
    let tree = tree();
    for (module, targets) in &tree.imports {
        if module.first().is_some_and(|m| m == "config") {
            let outside: Vec<String> = targets
                .iter()
                .filter(|t| t.first().is_some_and(|m| m != "config"))
                .map(|t| name(t))
                .collect();
            assert!(
                outside.is_empty(),
                "{} imports {outside:?}: the configuration must not know the agent, its clients or the simulators",
                name(module)
            );
        }
    }
}

#[test]
fn spot_guard_is_one_folder_whose_decisions_are_pure() {
    let tree = tree();
    for (module, targets) in &tree.imports {
        let is_decide = module.first().is_some_and(|m| m == "spot_guard")
            && module.iter().any(|part| part == "decide");
        if is_decide {
            // Pure: no clients, no agent, no I/O modules.
            for forbidden in ["node", "lease", "aws", "agent", "run", "actions", "report"] {
                assert!(
                    !targets.iter().any(|t| t[0] == forbidden),
                    "{} imports {forbidden}: decisions must stay pure",
                    name(module)
                );
            }
        }
    }
    for old in [
        "flow",
        "fleet_flow",
        "scale_back",
        "scale_back_flow",
        "ledger",
    ] {
        assert!(
            !tree.modules.contains_key(&vec![old.to_owned()]),
            "src/{old}.rs is back outside src/spot_guard/"
        );
    }
}

#[test]
fn no_source_file_is_over_the_size_that_holds_two_ideas() {
    let tree = tree();
    let big: Vec<String> = tree
        .modules
        .values()
        .filter_map(|file| {
            let lines = std::fs::read_to_string(file).ok()?.lines().count();
            (lines > MAX_LINES).then(|| format!("{} ({lines} lines)", file.display()))
        })
        .collect();
    assert!(big.is_empty(), "files over {MAX_LINES} lines: {big:?}");
}

#[test]
fn every_name_the_agent_writes_is_spelled_in_names_rs_only() {
    let tree = tree();
    let prefixes = [
        "\"aws-node-termination-handler/",
        "\"spot-guard/",
        "\"replacement.spot-guard/",
        "\"cluster-autoscaler.kubernetes.io/",
        "\"node.kubernetes.io/out-of-service",
        "\"node.kubernetes.io/exclude-from-external-load-balancers",
    ];
    for (module, file) in &tree.modules {
        if name(module) == "names" || module.first().is_some_and(|m| m == "sim") {
            continue;
        }
        let text = std::fs::read_to_string(file).expect("source is readable");
        let production = text.split("#[cfg(test)]").next().unwrap_or_default();
        for prefix in prefixes {
            assert!(
                !code(production).contains(prefix),
                "{} spells a wire name starting {prefix}: use src/names.rs",
                file.display()
            );
        }
    }
}
