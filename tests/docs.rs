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
