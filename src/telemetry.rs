//! Logging setup: `tracing` to stderr, filtered by `RUST_LOG` (default: info for Tributary,
//! warnings for libraries; warnings only when quiet).

use tracing_subscriber::EnvFilter;

/// Installs the global subscriber once; later calls do nothing. `quiet` leaves warnings and
/// errors only, unless `RUST_LOG` says otherwise.
pub fn init(quiet: bool) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        EnvFilter::new(match quiet {
            true => "warn",
            false => "warn,tributary=info,tributary_connectors=info",
        })
    });
    // Colour only on a terminal: `tributary serve 2>server.log` writes plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr)
        .with_target(false)
        .try_init();
}
