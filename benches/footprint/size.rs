//! Binary size (size).

use crate::table::Table;
use crate::world::agent_binary;
use crate::{Mode, Result};

pub fn size(_mode: &Mode) -> Result<Table> {
    let mut table = Table::new("Binary size", &["binary", "bytes", "MiB"]);
    // The binary the other sections run first; the shipped one is target/image/spot-guard.
    let mut paths = vec![agent_binary()];
    for candidate in [
        "target/image/spot-guard",
        "target/release/spot-guard",
        "target/x86_64-unknown-linux-musl/ship/spot-guard",
    ] {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(candidate);
        if path.exists() {
            paths.push(path.to_string_lossy().into_owned());
        }
    }
    paths.dedup();
    for path in paths {
        let bytes = std::fs::metadata(&path)?.len();
        table.row(vec![
            path,
            bytes.to_string(),
            format!("{:.1}", bytes as f64 / (1024.0 * 1024.0)),
        ]);
    }
    Ok(table)
}
