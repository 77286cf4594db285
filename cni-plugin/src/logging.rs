//! Logs go to stderr or to the config's `logFile`, never to stdout: stdout is
//! the CNI result channel, and tracing-subscriber writes to stdout unless told
//! otherwise.

use std::fs::OpenOptions;
use std::io::IsTerminal;
use std::path::Path;
use std::sync::Mutex;

use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::fmt::writer::BoxMakeWriter;
use tracing_subscriber::prelude::*;

/// Installs the global subscriber. The level comes from MOOR_LOG: a level
/// (`info`, `debug`, ...) applies to moor and caps the libraries at `warn`;
/// a directive list (`moor=debug,h2=info`) is taken as is. Default `warn`.
pub fn init(log_file: Option<&Path>, moor_log: Option<&str>) {
    let filter = filter(moor_log);
    let mut file_error = None;
    let (writer, ansi) = match log_file {
        Some(path) => match OpenOptions::new().create(true).append(true).open(path) {
            Ok(f) => (BoxMakeWriter::new(Mutex::new(f)), false),
            Err(e) => {
                file_error = Some(format!("cannot open logFile {}: {e}", path.display()));
                stderr_writer()
            }
        },
        None => stderr_writer(),
    };
    let layer = tracing_subscriber::fmt::layer()
        .with_writer(writer)
        .with_ansi(ansi)
        .with_filter(filter);
    // Ignore a second init (tests).
    let _ = tracing_subscriber::registry().with(layer).try_init();
    if let Some(e) = file_error {
        tracing::warn!("{e}; logging to stderr");
    }
}

fn stderr_writer() -> (BoxMakeWriter, bool) {
    (
        BoxMakeWriter::new(std::io::stderr),
        std::io::stderr().is_terminal(),
    )
}

fn filter(moor_log: Option<&str>) -> Targets {
    let default = Targets::new().with_default(LevelFilter::WARN);
    let Some(spec) = moor_log.map(str::trim).filter(|s| !s.is_empty()) else {
        return default;
    };
    if let Ok(level) = spec.parse::<LevelFilter>() {
        return Targets::new()
            .with_target("moor", level)
            .with_target("moor_proto", level)
            .with_default(level.min(LevelFilter::WARN));
    }
    spec.parse().unwrap_or(default)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracing::Level;

    #[test]
    fn level_applies_to_moor_only() {
        let f = filter(Some("debug"));
        assert!(f.would_enable("moor::commands", &Level::DEBUG));
        assert!(!f.would_enable("h2::codec", &Level::INFO));
        assert!(f.would_enable("h2::codec", &Level::WARN));
        let f = filter(Some("error"));
        assert!(!f.would_enable("moor", &Level::WARN));
        assert!(!f.would_enable("h2", &Level::WARN));
    }

    #[test]
    fn default_and_directives() {
        let f = filter(None);
        assert!(f.would_enable("moor", &Level::WARN));
        assert!(!f.would_enable("moor", &Level::INFO));
        let f = filter(Some("moor=trace,h2=info"));
        assert!(f.would_enable("moor", &Level::TRACE));
        assert!(f.would_enable("h2", &Level::INFO));
        // Garbage falls back to the default.
        let f = filter(Some("moor=loud"));
        assert!(f.would_enable("moor", &Level::WARN));
        assert!(!f.would_enable("moor", &Level::INFO));
    }
}
