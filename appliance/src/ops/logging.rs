//! The appliance's log: one line per event on stdout, with a UTC
//! timestamp and a level (`ringlb run --log-level`), through the `log`
//! facade (`env_logger` writes it). Nothing on the fast path logs: the
//! workers count, and the control thread turns what they report into
//! events.

use std::io::Write;

/// How much `ringlb run` logs (each level includes the ones before it).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogLevel {
    /// Failures only.
    Error,
    /// And what an operator should look at: servers down, resyncs, overflows.
    Warn,
    /// And every event: VIPs moving, members joining, drains, the stats line.
    #[default]
    Info,
    /// And detail for debugging the control plane.
    Debug,
}

impl LogLevel {
    fn filter(self) -> log::LevelFilter {
        match self {
            LogLevel::Error => log::LevelFilter::Error,
            LogLevel::Warn => log::LevelFilter::Warn,
            LogLevel::Info => log::LevelFilter::Info,
            LogLevel::Debug => log::LevelFilter::Debug,
        }
    }
}

/// Starts the log at `level` (once per process; later calls change nothing).
pub fn init(level: LogLevel) {
    let _ = env_logger::Builder::new()
        .filter_level(level.filter())
        .target(env_logger::Target::Stdout)
        .format(|out, record| writeln!(out, "{} {:<5} {}", out.timestamp_millis(), record.level(), record.args()))
        .try_init();
}
