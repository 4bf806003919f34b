//! Log output: readable text for `kubectl logs`, or one JSON object per line
//! (JSON_LOGGING) with the span fields (node, event id, ASG) on every line.
//!
//! Text reads as a story: the node is named once, at start ("Acting on node …"), so the
//! `node` field is left out of text lines, and event ids are shortened (NTH's ids end in a
//! 64-digit hash). JSON keeps every field in full, for machines.

use std::fmt::{self, Debug};
use std::io::IsTerminal;

use tracing::field::{Field, Visit};
use tracing::level_filters::LevelFilter;
use tracing_subscriber::field::RecordFields;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::fmt::FormatFields;
use tracing_subscriber::fmt::format::Writer;
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
                    .fmt_fields(TextFields)
                    .with_target(false)
                    .with_ansi(std::io::stdout().is_terminal()),
            )
            .try_init()
    }
    .map_err(|e| error(e.to_string()))
}

/// Hex digits of an event id's hash kept in text logs: enough to tell events apart.
const SHORT_HASH: usize = 8;
/// NTH's hashes are 64 digits (cut to 38 in a 63-character taint value); EC2's scheduled
/// event ids end in 17, and stay whole.
const LONG_HASH: usize = 32;

/// `rebalance-recommendation-<64 hex digits>` → `rebalance-recommendation-1a2b3c4d`; ids
/// without a long hash (scheduled events' `instance-event-…`) stay whole.
pub fn short_event_id(event_id: &str) -> &str {
    match event_id.rsplit_once('-') {
        Some((kind, hash))
            if hash.len() >= LONG_HASH && hash.bytes().all(|b| b.is_ascii_hexdigit()) =>
        {
            &event_id[..kind.len() + 1 + SHORT_HASH]
        }
        _ => event_id,
    }
}

/// Field formatting of text lines (events and spans alike): no `node`, short event ids.
struct TextFields;

impl<'writer> FormatFields<'writer> for TextFields {
    fn format_fields<R: RecordFields>(&self, writer: Writer<'writer>, fields: R) -> fmt::Result {
        let mut visitor = TextVisitor {
            writer,
            result: Ok(()),
            first: true,
        };
        fields.record(&mut visitor);
        visitor.result
    }
}

struct TextVisitor<'writer> {
    writer: Writer<'writer>,
    result: fmt::Result,
    first: bool,
}

impl TextVisitor<'_> {
    fn separate(&mut self) -> fmt::Result {
        if std::mem::take(&mut self.first) {
            Ok(())
        } else {
            self.writer.write_char(' ')
        }
    }
}

impl Visit for TextVisitor<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "event_id" {
            if self.result.is_ok() {
                self.result = self
                    .separate()
                    .and_then(|()| write!(self.writer, "event_id={}", short_event_id(value)));
            }
        } else {
            self.record_debug(field, &value);
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn Debug) {
        if self.result.is_err() || field.name() == "node" {
            return;
        }
        self.result = self.separate().and_then(|()| match field.name() {
            "message" => write!(self.writer, "{value:?}"),
            "event_id" => {
                let full = format!("{value:?}");
                write!(self.writer, "event_id={}", short_event_id(&full))
            }
            name => write!(self.writer, "{name}={value:?}"),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::short_event_id;

    #[test]
    fn event_ids_keep_their_kind_and_eight_hash_digits() {
        let hash = "5b8f1c2d3e4f5a6b7c8d9e0f1a2b3c4d5e6f7a8b9c0d1e2f3a4b5c6d7e8f9a0b";
        assert_eq!(
            short_event_id(&format!("rebalance-recommendation-{hash}")),
            "rebalance-recommendation-5b8f1c2d"
        );
        assert_eq!(
            short_event_id(&format!("spot-itn-{hash}")),
            "spot-itn-5b8f1c2d"
        );
        assert_eq!(
            short_event_id("instance-event-0d59937288b749b32"),
            "instance-event-0d59937288b749b32"
        );
        assert_eq!(short_event_id("odd"), "odd");
    }
}
