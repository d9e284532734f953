//! The operator's listeners, on a thread of their own: the control socket
//! (unix, mode 0600: root only) and, if asked for, the Prometheus endpoint
//! (HTTP `GET /metrics`). Each request is handed to the control thread
//! as a `Call` and its answer written back; one client at a time, each
//! bounded in size and time, so a slow or hostile client costs at most a
//! few seconds of this thread and nothing of the control loop's.

use super::protocol::{parse_request, Request, Response, MAX_REQUEST};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::os::fd::AsFd;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

/// A client has this long to send its request, and to read the answer.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(2);
/// The control thread has this long to answer.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(5);
/// Requests waiting for the control thread at most.
const PENDING: usize = 8;
/// The longest HTTP request head read.
const MAX_HTTP_HEAD: usize = 8192;

/// A request for the control thread, and where its answer goes.
pub struct Call {
    pub request: Request,
    reply: SyncSender<Response>,
}

impl Call {
    pub fn answer(self, response: Response) {
        // The client may have given up: nobody to tell.
        let _ = self.reply.try_send(response);
    }
}

/// The running listeners; dropping it stops them and removes the socket file.
pub struct OpsServer {
    quit: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    socket: Option<PathBuf>,
}

/// Binds the control socket at `socket` and the metrics endpoint at
/// `metrics` (each if given) and starts serving them. The control thread
/// takes the calls from the returned receiver.
pub fn start(socket: Option<&Path>, metrics: Option<SocketAddr>) -> Result<(OpsServer, Receiver<Call>), String> {
    let unix = socket.map(bind_socket).transpose()?;
    let http = match metrics {
        Some(addr) => {
            let l = TcpListener::bind(addr).map_err(|e| format!("metrics endpoint {addr}: {e}"))?;
            l.set_nonblocking(true).map_err(|e| format!("metrics endpoint {addr}: {e}"))?;
            Some(l)
        }
        None => None,
    };
    let (calls, inbox) = mpsc::sync_channel(PENDING);
    let quit = Arc::new(AtomicBool::new(false));
    let stop = Arc::clone(&quit);
    let thread = std::thread::Builder::new()
        .name("ringlb-ops".into())
        .spawn(move || serve(unix, http, &calls, &stop))
        .map_err(|e| format!("starting the control socket's thread: {e}"))?;
    Ok((OpsServer { quit, thread: Some(thread), socket: socket.map(Path::to_path_buf) }, inbox))
}

impl Drop for OpsServer {
    fn drop(&mut self) {
        self.quit.store(true, Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        if let Some(p) = &self.socket {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// A socket file left by an appliance that is gone is replaced; one that
/// a running appliance answers on is not.
fn bind_socket(path: &Path) -> Result<UnixListener, String> {
    let shown = path.display();
    if path.exists() {
        if UnixStream::connect(path).is_ok() {
            return Err(format!(
                "control socket {shown}: another ringlb answers there (give this one --control-socket)"
            ));
        }
        std::fs::remove_file(path).map_err(|e| format!("control socket {shown}: removing the stale file: {e}"))?;
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| format!("control socket {shown}: {}: {e}", dir.display()))?;
    }
    let l = UnixListener::bind(path).map_err(|e| format!("control socket {shown}: {e}"))?;
    // Root only: the socket can drain servers.
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| format!("control socket {shown}: {e}"))?;
    l.set_nonblocking(true).map_err(|e| format!("control socket {shown}: {e}"))?;
    Ok(l)
}

fn serve(unix: Option<UnixListener>, http: Option<TcpListener>, calls: &SyncSender<Call>, quit: &AtomicBool) {
    while !quit.load(Relaxed) {
        let mut fds = Vec::with_capacity(2);
        if let Some(u) = &unix {
            fds.push(PollFd::new(u.as_fd(), PollFlags::POLLIN));
        }
        if let Some(h) = &http {
            fds.push(PollFd::new(h.as_fd(), PollFlags::POLLIN));
        }
        if fds.is_empty() {
            return;
        }
        // A short wait: `quit` is looked at between waits.
        let _ = poll(&mut fds, PollTimeout::from(200u16));
        if let Some(Ok((stream, _))) = unix.as_ref().map(UnixListener::accept) {
            let _ = stream.set_nonblocking(false);
            let _ = stream.set_read_timeout(Some(CLIENT_TIMEOUT));
            let _ = stream.set_write_timeout(Some(CLIENT_TIMEOUT));
            serve_socket_client(stream, calls);
        }
        if let Some(Ok((stream, _))) = http.as_ref().map(TcpListener::accept) {
            let _ = stream.set_nonblocking(false);
            let _ = stream.set_read_timeout(Some(CLIENT_TIMEOUT));
            let _ = stream.set_write_timeout(Some(CLIENT_TIMEOUT));
            serve_http_client(stream, calls);
        }
    }
}

/// Hands `request` to the control thread and waits for its answer.
pub fn call(calls: &SyncSender<Call>, request: Request) -> Response {
    let (reply, answer) = mpsc::sync_channel(1);
    if calls.try_send(Call { request, reply }).is_err() {
        return Response::error("the appliance is busy with other requests: try again");
    }
    match answer.recv_timeout(ANSWER_TIMEOUT) {
        Ok(r) => r,
        Err(RecvTimeoutError::Timeout) => Response::error("the control thread did not answer in time"),
        Err(RecvTimeoutError::Disconnected) => Response::error("the appliance is stopping"),
    }
}

/// Reads until `done` says the request is whole, at most `max` bytes.
fn read_request(stream: &mut impl Read, max: usize, done: impl Fn(&[u8]) -> bool) -> Result<Vec<u8>, String> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    while !done(&buf) {
        if buf.len() > max {
            return Err(format!("request longer than {max} bytes"));
        }
        match stream.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) => return Err(format!("reading the request: {e}")),
        }
    }
    Ok(buf)
}

fn serve_socket_client(mut stream: UnixStream, calls: &SyncSender<Call>) {
    let response = match read_request(&mut stream, MAX_REQUEST, |b| b.contains(&b'\n')) {
        Ok(bytes) => {
            let line = bytes.split(|&b| b == b'\n').next().unwrap_or(&[]);
            match parse_request(line) {
                Ok(request) => call(calls, request),
                Err(e) => Response::error(e),
            }
        }
        Err(e) => Response::error(e),
    };
    let Ok(mut text) = serde_json::to_vec(&response) else { return };
    text.push(b'\n');
    let _ = stream.write_all(&text);
}

fn serve_http_client(mut stream: std::net::TcpStream, calls: &SyncSender<Call>) {
    let head = read_request(&mut stream, MAX_HTTP_HEAD, |b| b.windows(4).any(|w| w == b"\r\n\r\n"));
    let (status, body) = match head.as_deref().map(http_path) {
        Ok(Some((method, path))) if method == "GET" && (path == "/metrics" || path.starts_with("/metrics?")) => {
            let r = call(calls, Request::Metrics);
            match (r.ok, r.data.as_str()) {
                (true, Some(text)) => ("200 OK", text.to_owned()),
                _ => ("503 Service Unavailable", r.error.unwrap_or_default() + "\n"),
            }
        }
        Ok(Some(_)) => ("404 Not Found", "only GET /metrics is served here\n".to_owned()),
        Ok(None) | Err(_) => ("400 Bad Request", "not an HTTP/1.x request\n".to_owned()),
    };
    let out = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.write_all(out.as_bytes());
}

/// The method and path of an HTTP request head.
fn http_path(head: &[u8]) -> Option<(String, String)> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(head) {
        Ok(httparse::Status::Complete(_)) => Some((req.method?.to_owned(), req.path?.to_owned())),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::BufRead;

    /// Serves every call with what `answer` makes of it, until dropped.
    fn answering(inbox: Receiver<Call>, answer: fn(&Request) -> Response) -> JoinHandle<()> {
        std::thread::spawn(move || {
            while let Ok(c) = inbox.recv() {
                let r = answer(&c.request);
                c.answer(r);
            }
        })
    }

    fn ask(path: &Path, line: &[u8]) -> String {
        let mut s = UnixStream::connect(path).unwrap();
        s.write_all(line).unwrap();
        let mut out = String::new();
        std::io::BufReader::new(s).read_line(&mut out).unwrap();
        out
    }

    #[test]
    fn the_socket_answers_requests_refuses_garbage_and_is_root_only() {
        let dir = std::env::temp_dir().join(format!("ringlb-ops-{}", std::process::id()));
        let path = dir.join("a.sock");
        let (server, inbox) = start(Some(&path), None).unwrap();
        let t = answering(inbox, |r| Response::ok(serde_json::json!(format!("{r:?}"))));
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(ask(&path, b"{\"cmd\":\"servers\"}\n"), "{\"ok\":true,\"data\":\"Servers\"}\n");
        let bad = ask(&path, b"{\"cmd\":\"format\"}\n");
        assert!(bad.starts_with("{\"ok\":false,\"error\":\"bad request: unknown variant"), "{bad}");
        let long = ask(&path, &[b'x'; MAX_REQUEST + 2048]);
        assert!(long.contains("longer than"), "{long}");
        // A second appliance on the same socket is refused; the file stays.
        let e = start(Some(&path), None).err().unwrap();
        assert!(e.contains("another ringlb answers there"), "{e}");
        drop(server);
        t.join().unwrap();
        assert!(!path.exists(), "removed at the end");
        // A stale file is replaced.
        std::fs::write(&path, b"").unwrap();
        let (server, _inbox) = start(Some(&path), None).unwrap();
        drop(server);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_metrics_endpoint_serves_get_metrics_only() {
        // A free port: bound, then let go.
        let probe = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = probe.local_addr().unwrap();
        drop(probe);
        let (server, inbox) = start(None, Some(addr)).unwrap();
        let t = answering(inbox, |_| Response::ok(serde_json::json!("ringlb_rx_packets_total 7\n")));
        let get = |req: &str| {
            let mut s = std::net::TcpStream::connect(addr).unwrap();
            s.write_all(req.as_bytes()).unwrap();
            let mut out = String::new();
            s.read_to_string(&mut out).unwrap();
            out
        };
        let ok = get("GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
        assert!(ok.starts_with("HTTP/1.1 200 OK\r\n") && ok.ends_with("\r\n\r\nringlb_rx_packets_total 7\n"), "{ok}");
        assert!(get("GET / HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 404"));
        assert!(get("POST /metrics HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 404"));
        assert!(get("\x16\x03\x01garbage\r\n\r\n").starts_with("HTTP/1.1 400"));
        drop(server);
        t.join().unwrap();
    }
}
