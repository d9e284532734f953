//! The CLI's side of the control socket: one request, one answer, and the
//! human tables the answers are shown as (`--json` prints them as they came).

use super::protocol::{Request, Response, ServerRow, SessionRow, MAX_REQUEST};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

/// Sends `request` to the appliance listening on `socket`; its answer's
/// data, or the error it (or the connection) gave.
pub fn ask(socket: &Path, request: &Request) -> Result<serde_json::Value, String> {
    let shown = socket.display();
    let mut s = UnixStream::connect(socket).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused => {
            format!("{shown}: no ringlb is running there ({e}); is it started, with this --socket?")
        }
        std::io::ErrorKind::PermissionDenied => format!("{shown}: {e} (the control socket is root only)"),
        _ => format!("{shown}: {e}"),
    })?;
    let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
    let mut line = serde_json::to_vec(request).map_err(|e| e.to_string())?;
    debug_assert!(line.len() < MAX_REQUEST);
    line.push(b'\n');
    s.write_all(&line).map_err(|e| format!("{shown}: {e}"))?;
    let mut answer = String::new();
    BufReader::new(s).read_line(&mut answer).map_err(|e| format!("{shown}: reading the answer: {e}"))?;
    let r: Response = serde_json::from_str(&answer).map_err(|e| format!("{shown}: not an answer ({e}): {answer:?}"))?;
    match (r.ok, r.error) {
        (true, _) => Ok(r.data),
        (false, e) => Err(e.unwrap_or_else(|| "the appliance refused the request".into())),
    }
}

/// Rows of cells as a table with aligned columns (the first row: the header).
pub fn table(rows: &[Vec<String>]) -> String {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> =
        (0..cols).map(|c| rows.iter().filter_map(|r| r.get(c)).map(|s| s.chars().count()).max().unwrap_or(0)).collect();
    let mut out = String::new();
    for r in rows {
        let cells: Vec<String> = r.iter().zip(&widths).map(|(s, w)| format!("{s:<w$}")).collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out
}

/// `ringlb servers` (and drain's answer) for humans.
pub fn servers_table(rows: &[ServerRow]) -> String {
    let mut t =
        vec![["SERVER", "WEIGHT", "NOW", "STATE", "ACTIVE", "NEW SESSIONS", "REDIRECTED"].map(String::from).to_vec()];
    for r in rows {
        let state = match (r.up, r.drained) {
            (_, true) => "drained",
            (true, false) => "up",
            (false, false) => "down",
        };
        t.push(vec![
            r.server.clone(),
            r.weight.to_string(),
            r.weight_now.to_string(),
            state.into(),
            r.active_sessions.to_string(),
            r.new_sessions.to_string(),
            r.redirected.to_string(),
        ]);
    }
    table(&t)
}

/// `ringlb sessions` for humans (a sibling's session held here is marked).
pub fn sessions_table(rows: &[SessionRow]) -> String {
    let mut t = vec![["CLIENT", "PROTO", "SERVICE", "SERVER", "STATE"].map(String::from).to_vec()];
    for r in rows {
        let state = if r.replica { format!("{} (replica)", r.state) } else { r.state.clone() };
        t.push(vec![r.client.clone(), r.proto.clone(), r.service.clone(), r.server.clone(), state]);
    }
    let mut out = table(&t);
    out.push_str(&format!("{} session(s)\n", rows.len()));
    out
}

/// `ringlb status` for humans: the main figures of the status answer.
pub fn status_text(v: &serde_json::Value) -> String {
    let n = |path: &str| v.pointer(path).and_then(serde_json::Value::as_u64).unwrap_or(0).to_string();
    let mut rows = vec![
        vec!["uptime".into(), format!("{:.1} s", v["t_s"].as_f64().unwrap_or(0.0))],
        vec![
            "config".into(),
            format!(
                "version {}, cluster version {} generation {}",
                v["config_version"].as_str().unwrap_or("-"),
                v.pointer("/config/cluster_version").and_then(serde_json::Value::as_str).unwrap_or("-"),
                n("/config/generation")
            ),
        ],
        vec!["packets".into(), format!("rx {} tx {} handoff {}", n("/rx"), n("/tx"), n("/handoff"))],
        vec![
            "sessions".into(),
            format!(
                "active {} created {} expired {}",
                n("/sessions/active"),
                n("/sessions/created"),
                n("/sessions/expired")
            ),
        ],
    ];
    let drops: Vec<String> = v["drops"]
        .as_object()
        .map(|m| m.iter().filter(|(_, c)| c.as_u64() > Some(0)).map(|(k, c)| format!("{k}={c}")).collect())
        .unwrap_or_default();
    rows.push(vec!["drops".into(), format!("{} {}", n("/drops_total"), drops.join(" ")).trim_end().into()]);
    if v["syn_proxy"].is_object() {
        rows.push(vec![
            "proxied".into(),
            format!(
                "active {} cookies {} joined {} failed {} l7 redirects {} resumes {}",
                n("/syn_proxy/active"),
                n("/syn_proxy/cookies_sent"),
                n("/syn_proxy/joined"),
                n("/syn_proxy/failed"),
                n("/syn_proxy/l7_redirects"),
                n("/syn_proxy/l7_resumes")
            ),
        ]);
    }
    match v["cluster"].as_object() {
        None => rows.push(vec!["cluster".into(), "standalone".into()]),
        Some(c) => {
            let s = |k: &str| c.get(k).and_then(serde_json::Value::as_str).unwrap_or("-").to_string();
            let members: Vec<&str> =
                c["members"].as_array().into_iter().flatten().filter_map(|m| m["address"].as_str()).collect();
            rows.push(vec![
                "ring".into(),
                format!("{} as {}, view {} of {}", s("state"), s("address"), c["view_version"], s("master")),
            ]);
            rows.push(vec!["members".into(), members.join(" ")]);
            // Each appliance's configuration, as it last said.
            let configs: Vec<String> = v
                .pointer("/config/members")
                .and_then(serde_json::Value::as_array)
                .into_iter()
                .flatten()
                .map(|m| {
                    format!(
                        "{} {}@{}",
                        m["member"].as_str().unwrap_or("-"),
                        m["cluster_version"].as_str().unwrap_or("-"),
                        m["generation"]
                    )
                })
                .collect();
            rows.push(vec!["configs".into(), configs.join(" ")]);
            rows.push(vec!["dispatcher".into(), s("dispatcher")]);
        }
    }
    table(&rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_their_columns() {
        let t = table(&[vec!["A".into(), "BB".into()], vec!["ccc".into(), "d".into()]]);
        assert_eq!(t, "A    BB\nccc  d\n");
    }

    #[test]
    fn a_missing_socket_says_no_ringlb_runs_there() {
        let e = ask(Path::new("/nonexistent/ringlb.sock"), &Request::Status).unwrap_err();
        assert!(e.contains("no ringlb is running there"), "{e}");
    }
}
