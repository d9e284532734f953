//! A member's incarnation, persisted: each start (or re-join) takes the
//! larger of the wall clock in milliseconds and the last one + 1, and
//! writes it down first. A clock stepped backwards then never makes a
//! restarted member look older than its previous run (the others would
//! take its new packets for a stale run's).

use std::path::Path;

/// The next incarnation, recorded in `path` (created if missing).
pub fn next(path: &Path, now_ms: u64) -> Result<u64, String> {
    let last = match std::fs::read_to_string(path) {
        Ok(t) => t.trim().parse::<u64>().map_err(|_| format!("{}: not an incarnation number", path.display()))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
        Err(e) => return Err(format!("{}: {e}", path.display())),
    };
    let next = now_ms.max(last.saturating_add(1));
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, format!("{next}\n")).map_err(|e| format!("{}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, path).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(next)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_clock_stepped_back_still_gives_a_larger_incarnation() {
        let p = std::env::temp_dir().join(format!("ringlb-incarnation-{}", std::process::id()));
        let _ = std::fs::remove_file(&p);
        assert_eq!(next(&p, 5_000).unwrap(), 5_000);
        assert_eq!(next(&p, 1_000).unwrap(), 5_001, "the clock went back 4 s");
        assert_eq!(next(&p, 9_000).unwrap(), 9_000);
        std::fs::write(&p, "garbage").unwrap();
        assert!(next(&p, 10_000).is_err(), "a damaged file is an error, not a silent restart from 0");
        let _ = std::fs::remove_file(&p);
    }
}
