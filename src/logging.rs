//! Log output: readable text for `kubectl logs`, or one JSON object per line
//! (JSON_LOGGING) with the span fields (node, event id, ASG) on every line.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

#[derive(Debug, thiserror::Error)]
#[error("cannot set up logging at level '{level}': {detail}")]
pub struct LoggingError {
    level: String,
    detail: String,
}

/// Installs the global subscriber. `RUST_LOG`, when set, refines LOG_LEVEL per module.
pub fn init(level: &str, json: bool) -> Result<(), LoggingError> {
    let error = |detail: String| LoggingError {
        level: level.to_string(),
        detail,
    };
    let filter = match std::env::var("RUST_LOG") {
        Ok(directives) if !directives.trim().is_empty() => EnvFilter::try_new(directives),
        _ => EnvFilter::try_new(format!(
            "warn,spot_guard={level}",
            level = level.to_ascii_lowercase()
        )),
    }
    .map_err(|e| error(e.to_string()))?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stdout);
    if json {
        builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(true)
            .try_init()
    } else {
        // kubectl logs is no terminal: colour codes there would be noise.
        builder
            .compact()
            .with_target(false)
            .with_ansi(std::io::stdout().is_terminal())
            .try_init()
    }
    .map_err(|e| error(e.to_string()))
}
