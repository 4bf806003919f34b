//! Log output: readable text for `kubectl logs`, or one JSON object per line
//! (JSON_LOGGING) with the span fields (node, event id, ASG) on every line.

use std::io::IsTerminal;

use tracing::level_filters::LevelFilter;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

#[derive(Debug, thiserror::Error)]
#[error("cannot set up logging at level '{level}': {detail}")]
pub struct LoggingError {
    level: String,
    detail: String,
}

/// Installs the global subscriber: warnings from every crate and `level` from spot-guard's
/// own code. `RUST_LOG`, when set, replaces that with its `target=level` list (e.g.
/// `warn,spot_guard=debug,kube_client=info`).
pub fn init(level: &str, json: bool) -> Result<(), LoggingError> {
    let error = |detail: String| LoggingError {
        level: level.to_string(),
        detail,
    };
    let filter = match std::env::var("RUST_LOG") {
        Ok(directives) if !directives.trim().is_empty() => directives
            .parse::<Targets>()
            .map_err(|e| error(format!("RUST_LOG '{directives}': {e}")))?,
        _ => {
            let own: LevelFilter = level
                .parse()
                .map_err(|e: tracing::metadata::ParseLevelFilterError| error(e.to_string()))?;
            Targets::new()
                .with_default(LevelFilter::WARN)
                .with_target("spot_guard", own)
        }
    };
    let registry = tracing_subscriber::registry().with(filter);
    let layer = tracing_subscriber::fmt::layer().with_writer(std::io::stdout);
    if json {
        registry
            .with(
                layer
                    .json()
                    .flatten_event(true)
                    .with_current_span(true)
                    .with_span_list(true),
            )
            .try_init()
    } else {
        // kubectl logs is no terminal: colour codes there would be noise.
        registry
            .with(
                layer
                    .compact()
                    .with_target(false)
                    .with_ansi(std::io::stdout().is_terminal()),
            )
            .try_init()
    }
    .map_err(|e| error(e.to_string()))
}
