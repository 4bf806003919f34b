//! The options table in README.md is the one the binary's own definitions produce, so
//! documentation and flags never drift. `SPOT_GUARD_WRITE_DOCS=1 cargo test --test docs`
//! rewrites the table after a flag changes.

use clap::CommandFactory;
use spot_guard::config::Cli;

const START: &str = "<!-- options:start -->";
const END: &str = "<!-- options:end -->";

fn cell(text: &str) -> String {
    text.replace('|', "\\|").replace('\n', " ")
}

fn options_table() -> String {
    let mut table = String::from("| env var | flag | default | meaning |\n|---|---|---|---|\n");
    for arg in Cli::command().get_arguments() {
        let Some(env) = arg.get_env().and_then(|e| e.to_str()) else {
            continue;
        };
        if arg.is_hide_set() {
            continue;
        }
        let flag = arg
            .get_long()
            .map(|l| format!("`--{l}`"))
            .unwrap_or_default();
        let default = if arg.is_hide_default_value_set() {
            "NTH's".to_string()
        } else {
            let values: Vec<String> = arg
                .get_default_values()
                .iter()
                .map(|v| v.to_string_lossy().into_owned())
                .collect();
            match values.join(",").as_str() {
                "" => String::new(),
                value => format!("`{value}`"),
            }
        };
        let help = arg.get_help().map(|h| h.to_string()).unwrap_or_default();
        table.push_str(&format!(
            "| `{env}` | {flag} | {} | {} |\n",
            cell(&default),
            cell(&help)
        ));
    }
    table
}

#[test]
fn readme_lists_every_option_with_its_default() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/README.md");
    let readme = std::fs::read_to_string(path).expect("README.md");
    let (Some(start), Some(end)) = (readme.find(START), readme.find(END)) else {
        panic!("README.md has no {START} … {END} section");
    };
    let current = &readme[start + START.len()..end];
    let expected = format!("\n{}", options_table());
    if current != expected {
        if std::env::var_os("SPOT_GUARD_WRITE_DOCS").is_some() {
            let updated = format!("{}{START}{expected}{}", &readme[..start], &readme[end..]);
            std::fs::write(path, updated).expect("README.md written");
            return;
        }
        panic!(
            "README.md's options table is out of date; run `SPOT_GUARD_WRITE_DOCS=1 cargo test --test docs`. Expected:\n{expected}"
        );
    }
}

// --- docs/MIGRATING-FROM-NTH.md: every claim names the test that checks it -----------------

const MIGRATING: &str = "docs/MIGRATING-FROM-NTH.md";

/// The tables the guide may hold, each read row by row by the test named.
const CHECKED_TABLES: [(&str, &str); 7] = [
    (
        "| NTH value | here | default |",
        "tests/chart_nth.rs::migration_doc_value_tables_say_what_the_chart_does",
    ),
    (
        "| value | here | default |",
        "tests/chart_nth.rs::migration_doc_value_tables_say_what_the_chart_does",
    ),
    (
        "| fork value | here | default |",
        "tests/chart_nth.rs::migration_doc_value_tables_say_what_the_chart_does",
    ),
    (
        "| fork | here |",
        "tests/chart_nth.rs::migration_doc_names_the_agents_taints_and_annotations",
    ),
    (
        "| NTH env var | NTH default | here |",
        "tests/migrating.rs::migration_doc_nth_env_table_says_what_the_binary_does",
    ),
    (
        "| ClusterRole resource | NTH | here | with `spotGuard.enabled` | with `spotGuard.scaleBack.enabled` |",
        "tests/migrating.rs::migration_doc_rbac_table_is_nths_and_the_charts",
    ),
    (
        "| fork env var | fork default | here |",
        "tests/migrating.rs::migration_doc_fork_env_table_says_what_the_binary_does",
    ),
];

fn repo_file(path: &str) -> Option<String> {
    std::fs::read_to_string(format!("{}/{path}", env!("CARGO_MANIFEST_DIR"))).ok()
}

/// The `code` spans of a text.
fn spans(text: &str) -> Vec<&str> {
    text.split('`').skip(1).step_by(2).collect()
}

/// The `tests/x.rs::name` (or `src/…rs::name`) citations of a text.
fn citations(text: &str) -> Vec<&str> {
    spans(text)
        .into_iter()
        .filter(|span| {
            span.contains(".rs::") && (span.starts_with("tests/") || span.starts_with("src/"))
        })
        .collect()
}

/// Why a citation does not name a test function, if it does not.
fn dangling(citation: &str) -> Option<String> {
    let (path, name) = citation.split_once("::")?;
    let Some(source) = repo_file(path) else {
        return Some(format!("`{citation}`: no file {path}"));
    };
    let lines: Vec<&str> = source.lines().collect();
    let Some(at) = lines.iter().position(|line| {
        line.trim_start()
            .trim_start_matches("pub ")
            .trim_start_matches("async ")
            .starts_with(&format!("fn {name}("))
    }) else {
        return Some(format!("`{citation}`: {path} has no fn {name}"));
    };
    let is_test = lines[at.saturating_sub(3)..at]
        .iter()
        .any(|line| line.contains("#[test]") || line.contains("#[tokio::test"));
    (!is_test).then(|| format!("`{citation}`: fn {name} is not a test"))
}

/// The guide's blocks of prose: paragraphs and list items, outside tables and headings.
fn prose_blocks(doc: &str) -> Vec<String> {
    let mut blocks = Vec::new();
    let mut current = String::new();
    for line in doc.lines() {
        let starts_item = line.starts_with("- ");
        let ends = line.trim().is_empty() || line.starts_with('|') || line.starts_with('#');
        if (ends || starts_item) && !current.trim().is_empty() {
            blocks.push(std::mem::take(&mut current));
        }
        if ends {
            current.clear();
        } else {
            current.push_str(line);
            current.push('\n');
        }
    }
    if !current.trim().is_empty() {
        blocks.push(current);
    }
    blocks
}

/// A wire name in prose (taint, label, annotation key) is one the agent writes.
fn is_wire_name(span: &str) -> bool {
    !span.contains(' ')
        && !span.contains('=')
        && (span.starts_with("spot-guard/")
            || span.starts_with("aws-node-termination-handler/")
            || span.contains(".kubernetes.io/"))
}

#[test]
fn migration_doc_cites_a_test_for_every_claim() {
    let doc = repo_file(MIGRATING).expect("the migration guide");
    let names = repo_file("src/names.rs").expect("src/names.rs");
    let mut problems = Vec::new();
    for block in prose_blocks(&doc) {
        let cited = citations(&block);
        let first_line = block.lines().next().unwrap_or_default();
        if cited.is_empty() {
            problems.push(format!("names no test: {first_line}"));
        }
        for span in spans(&block).into_iter().filter(|s| is_wire_name(s)) {
            if !names.contains(&format!("\"{span}\"")) {
                problems.push(format!(
                    "`{span}` is not a name in src/names.rs: {first_line}"
                ));
            }
        }
    }
    // Every citation, in prose or in a table cell, names a test that exists.
    problems.extend(citations(&doc).into_iter().filter_map(dangling));
    for (_, checker) in CHECKED_TABLES {
        problems.extend(dangling(checker));
    }
    // Tables: only the kinds a test reads row by row.
    let mut in_table = false;
    for line in doc.lines() {
        if !line.starts_with('|') {
            in_table = false;
            continue;
        }
        if !in_table {
            let header = line.trim();
            if !CHECKED_TABLES.iter().any(|(known, _)| *known == header) {
                problems.push(format!("a table no test reads: {header}"));
            }
            in_table = true;
        }
    }
    assert!(
        problems.is_empty(),
        "{MIGRATING}: every paragraph and list item names the test that checks it \
         (`tests/x.rs::name`), and every table is one a test reads:\n{}",
        problems.join("\n")
    );
}
