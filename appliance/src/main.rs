//! `ringlb`: run the appliance, or check a configuration.

#![forbid(unsafe_code)]

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

const USAGE: &str = "usage:
  ringlb run   -c FILE.yaml [--stats-interval SECONDS] [--duration SECONDS] [--status-file PATH]
  ringlb check -c FILE.yaml

run     start the appliance; stats every --stats-interval seconds (default 1, 0 = off);
        stops on SIGINT/SIGTERM, or after --duration seconds if given;
        --status-file: the same counters (and the ring's and sync's) as JSON,
        rewritten every interval and at exit
check   validate FILE.yaml and print the effective configuration";

fn parse_secs(flag: &str, v: Option<&String>) -> Result<f64, String> {
    let v = v.ok_or_else(|| format!("{flag} needs a value"))?;
    match v.parse::<f64>() {
        Ok(s) if s.is_finite() && s >= 0.0 => Ok(s),
        _ => Err(format!("{flag}: '{v}' is not a number of seconds")),
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match real_main(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ringlb: {e}");
            ExitCode::FAILURE
        }
    }
}

fn real_main(args: &[String]) -> Result<(), String> {
    let Some(cmd) = args.first() else {
        return Err(format!("missing command\n{USAGE}"));
    };
    let mut file = None;
    let mut stats = 1.0;
    let mut duration = None;
    let mut status_file = None;
    let mut it = args[1..].iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "-c" | "--config" => file = Some(it.next().ok_or("-c needs a file")?.clone()),
            "--stats-interval" => stats = parse_secs(a, it.next())?,
            "--duration" => duration = Some(parse_secs(a, it.next())?),
            "--status-file" => status_file = Some(it.next().ok_or("--status-file needs a path")?.into()),
            "-h" | "--help" => {
                println!("{USAGE}");
                return Ok(());
            }
            other => return Err(format!("unknown argument '{other}'\n{USAGE}")),
        }
    }
    let file = file.ok_or_else(|| format!("-c FILE.yaml is required\n{USAGE}"))?;
    let cfg = ringlb::config::load(&file).map_err(|e| e.to_string())?;
    match cmd.as_str() {
        "check" => {
            // A reader that stops early (`| head`) is not an error.
            let _ = writeln!(std::io::stdout(), "# {file}: OK\n{}", cfg.render());
            Ok(())
        }
        "run" => {
            let opts = ringlb::app::RunOptions {
                stats_interval: Duration::from_secs_f64(stats),
                duration: duration.map(Duration::from_secs_f64),
                status_file,
            };
            ringlb::app::run(&cfg, &opts)
        }
        "-h" | "--help" | "help" => {
            println!("{USAGE}");
            Ok(())
        }
        other => Err(format!("unknown command '{other}'\n{USAGE}")),
    }
}
