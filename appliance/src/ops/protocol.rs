//! The control socket's protocol: the client writes one request as a JSON
//! line (`{"cmd":"drain","server":"web/10.0.0.1:80"}`), the appliance
//! answers with one JSON line (`{"ok":true,"data":…}` or
//! `{"ok":false,"error":"…"}`) and closes the connection.

use serde::{Deserialize, Serialize};

/// The longest request line the appliance reads.
pub const MAX_REQUEST: usize = 4096;

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(tag = "cmd", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    /// Every counter, the ring and the servers' health (the status file's content).
    Status,
    /// One row per server: address, weights, drained, sessions.
    Servers,
    /// Up to `limit` sessions per worker (`MAX_SESSIONS` at most), of
    /// `service` only if given.
    Sessions {
        #[serde(default)]
        service: Option<String>,
        #[serde(default = "default_limit")]
        limit: usize,
    },
    /// No new flows for the servers `server` names; their sessions stay.
    Drain { server: String },
    /// New flows for them again.
    Undrain { server: String },
    /// The counters in Prometheus's text format.
    Metrics,
    /// Re-read the configuration file and apply it (`config::reload`).
    Reload,
}

/// Sessions `ringlb sessions` lists unless told otherwise, and at most.
pub const DEFAULT_SESSIONS: usize = 100;
pub const MAX_SESSIONS: usize = 100_000;

fn default_limit() -> usize {
    DEFAULT_SESSIONS
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct Response {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
    pub data: serde_json::Value,
}

impl Response {
    pub fn ok(data: serde_json::Value) -> Response {
        Response { ok: true, error: None, data }
    }

    pub fn error(message: impl Into<String>) -> Response {
        Response { ok: false, error: Some(message.into()), data: serde_json::Value::Null }
    }
}

/// One server as `ringlb servers` shows it.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct ServerRow {
    /// "service/ip:port", as in the stats line.
    pub server: String,
    pub service: String,
    pub address: String,
    /// The configured weight, and its weight for new flows now (0 while
    /// it is down or drained).
    pub weight: u32,
    pub weight_now: u32,
    /// Up by its agent and its probe (a drained server is still up).
    pub up: bool,
    pub drained: bool,
    /// Sessions created for it since the start, and those in the session
    /// tables now (`syn_proxy`/`l7` connections are not in them).
    pub new_sessions: u64,
    #[serde(default)]
    pub active_sessions: u64,
    /// `l7`: requests taken from it because it failed them.
    pub redirected: u64,
}

/// One session as `ringlb sessions` shows it.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct SessionRow {
    /// "ip:port" of the client, and the protocol.
    pub client: String,
    pub proto: String,
    pub service: String,
    pub server: String,
    pub state: String,
    /// A sibling's session held here (sync), not one this appliance made.
    pub replica: bool,
}

/// Parses a request line; the error says what was wrong with it.
pub fn parse_request(line: &[u8]) -> Result<Request, String> {
    serde_json::from_slice(line).map_err(|e| format!("bad request: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_read_back_and_bad_ones_say_why() {
        for r in [Request::Status, Request::Servers, Request::Drain { server: "web/10.0.0.1:80".into() }] {
            let line = serde_json::to_vec(&r).unwrap();
            assert_eq!(parse_request(&line).unwrap(), r);
        }
        assert_eq!(
            parse_request(br#"{"cmd":"undrain","server":"10.0.0.1"}"#).unwrap(),
            Request::Undrain { server: "10.0.0.1".into() }
        );
        for (bad, why) in [
            (&br#"{"cmd":"reboot"}"#[..], "unknown variant"),
            (br#"{"cmd":"drain"}"#, "missing field `server`"),
            (br#"{"cmd":"drain","server":"a","sever":"b"}"#, "unknown field"),
            (b"\xff\xfe", "expected value"),
            (b"", "EOF"),
        ] {
            let e = parse_request(bad).unwrap_err();
            assert!(e.contains(why), "{e}");
        }
    }

    #[test]
    fn an_error_answer_has_no_data_and_an_ok_one_no_error() {
        let e = serde_json::to_string(&Response::error("no such server")).unwrap();
        assert_eq!(e, r#"{"ok":false,"error":"no such server"}"#);
        let ok = serde_json::to_string(&Response::ok(serde_json::json!({"a": 1}))).unwrap();
        assert_eq!(ok, r#"{"ok":true,"data":{"a":1}}"#);
    }
}
