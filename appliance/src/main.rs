//! `ringlb`: run the appliance, check a configuration, or ask a running
//! appliance through its control socket.

#![forbid(unsafe_code)]

use clap::{CommandFactory, Parser, Subcommand};
use ringlb::ops::protocol::{Request, ServerRow, SessionRow};
use ringlb::ops::{self, client};
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

#[derive(Parser)]
#[command(name = "ringlb", version, about = "A DPDK load-balancing appliance", propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Start the appliance; stops on SIGINT/SIGTERM (or after --duration).
    Run {
        /// The configuration (YAML).
        #[arg(short, long = "config", value_name = "FILE.yaml")]
        config: PathBuf,
        /// Print the stats line every this many seconds (0: never).
        #[arg(long, value_name = "SECONDS", default_value = "1", value_parser = seconds)]
        stats_interval: Duration,
        /// Stop by itself after this many seconds.
        #[arg(long, value_name = "SECONDS", value_parser = seconds)]
        duration: Option<Duration>,
        /// Also write the counters as JSON here, every interval and at exit.
        #[arg(long, value_name = "PATH")]
        status_file: Option<PathBuf>,
        /// The control socket `ringlb status`, `servers`, `drain` … use (root only).
        #[arg(long, value_name = "PATH", default_value = ops::DEFAULT_SOCKET)]
        control_socket: PathBuf,
        /// Serve Prometheus metrics at http://ADDR/metrics (e.g. 127.0.0.1:9469).
        #[arg(long, value_name = "ADDR")]
        metrics: Option<SocketAddr>,
        /// How much to log (one line per event, on stdout).
        #[arg(long, value_enum, default_value_t)]
        log_level: ops::logging::LogLevel,
    },
    /// Validate a configuration and print it as the appliance reads it.
    Check {
        #[arg(short, long = "config", value_name = "FILE.yaml")]
        config: PathBuf,
    },
    /// A running appliance's counters, ring and health.
    Status(Ask),
    /// A running appliance's servers: weights, state, sessions.
    Servers(Ask),
    /// Some of a running appliance's sessions (up to --limit per worker).
    Sessions {
        /// Only this service's (by name).
        #[arg(long)]
        service: Option<String>,
        /// Sessions per worker at most.
        #[arg(long, default_value_t = ops::protocol::DEFAULT_SESSIONS)]
        limit: usize,
        #[command(flatten)]
        ask: Ask,
    },
    /// No new flows for SERVER (service/ip:port, ip:port or ip); its sessions stay.
    Drain {
        /// service/ip:port, ip:port (each service's) or ip (each port's).
        server: String,
        #[command(flatten)]
        ask: Ask,
    },
    /// New flows for SERVER again.
    Undrain {
        server: String,
        #[command(flatten)]
        ask: Ask,
    },
    /// Make a running appliance re-read its configuration file and apply
    /// it without a restart (as SIGHUP does); an invalid file, or a change
    /// only a restart can make, is refused and the running one stays.
    Reload(Ask),
    /// A running appliance's metrics, in Prometheus's text format.
    Metrics {
        #[arg(long, value_name = "PATH", default_value = ops::DEFAULT_SOCKET)]
        socket: PathBuf,
    },
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions { shell: clap_complete::Shell },
}

/// How to reach a running appliance, and how to show its answer.
#[derive(clap::Args)]
struct Ask {
    /// Its control socket.
    #[arg(long, value_name = "PATH", default_value = ops::DEFAULT_SOCKET)]
    socket: PathBuf,
    /// The answer as JSON (for scripts) instead of a table.
    #[arg(long)]
    json: bool,
}

fn seconds(v: &str) -> Result<Duration, String> {
    match v.parse::<f64>() {
        Ok(s) if s.is_finite() && s >= 0.0 => Ok(Duration::from_secs_f64(s)),
        _ => Err(format!("'{v}' is not a number of seconds")),
    }
}

fn main() -> ExitCode {
    match real_main(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ringlb: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Prints `text`; a reader that stops early (`| head`) is not an error.
fn print(text: &str) {
    let _ = write!(std::io::stdout(), "{text}");
}

fn real_main(cli: Cli) -> Result<(), String> {
    match cli.command {
        Cmd::Check { config } => {
            let file = config.display().to_string();
            let cfg = ringlb::config::load(&file).map_err(|e| e.to_string())?;
            print(&format!("# {file}: OK, version {}\n{}\n", cfg.version(), cfg.render()));
            Ok(())
        }
        Cmd::Run { config, stats_interval, duration, status_file, control_socket, metrics, log_level } => {
            ops::logging::init(log_level);
            let cfg = ringlb::config::load(&config.display().to_string()).map_err(|e| e.to_string())?;
            let opts = ringlb::app::RunOptions {
                stats_interval,
                duration,
                status_file,
                control_socket: Some(control_socket),
                metrics,
                config_path: Some(config),
            };
            ringlb::app::run(&cfg, &opts)
        }
        Cmd::Status(ask) => {
            let v = client::ask(&ask.socket, &Request::Status)?;
            print(&if ask.json { format!("{v}\n") } else { client::status_text(&v) });
            Ok(())
        }
        Cmd::Servers(ask) => show::<ServerRow>(&ask, &Request::Servers, client::servers_table),
        Cmd::Sessions { service, limit, ask } => {
            show::<SessionRow>(&ask, &Request::Sessions { service, limit }, client::sessions_table)
        }
        Cmd::Drain { server, ask } => show::<ServerRow>(&ask, &Request::Drain { server }, client::servers_table),
        Cmd::Undrain { server, ask } => show::<ServerRow>(&ask, &Request::Undrain { server }, client::servers_table),
        Cmd::Reload(ask) => {
            let v = client::ask(&ask.socket, &Request::Reload)?;
            print(&if ask.json { format!("{v}\n") } else { format!("{}\n", v.as_str().unwrap_or_default()) });
            Ok(())
        }
        Cmd::Metrics { socket } => {
            let v = client::ask(&socket, &Request::Metrics)?;
            print(v.as_str().ok_or("the metrics answer is not text")?);
            Ok(())
        }
        Cmd::Completions { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "ringlb", &mut std::io::stdout());
            Ok(())
        }
    }
}

/// Asks the appliance, and prints its answer: as JSON with `--json`, else
/// as rows of `T` in a table.
fn show<T: serde::de::DeserializeOwned>(ask: &Ask, request: &Request, table: fn(&[T]) -> String) -> Result<(), String> {
    let v = client::ask(&ask.socket, request)?;
    if ask.json {
        print(&format!("{v}\n"));
        return Ok(());
    }
    let rows: Vec<T> = serde_json::from_value(v).map_err(|e| format!("an answer this ringlb cannot read: {e}"))?;
    print(&table(&rows));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }
}
