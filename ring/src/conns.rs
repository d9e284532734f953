//! The kernel's current TCP connections, read from /proc/net/tcp and
//! /proc/net/tcp6: what a server reports when a new dispatcher rebuilds its
//! connection map (state reconstruction).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::time::{Duration, Instant};

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Conn {
    pub local: SocketAddr,
    pub remote: SocketAddr,
}

const ESTABLISHED: &str = "01";
/// What a new dispatcher needs besides established connections: those in
/// the middle of their handshake (SYN_RECV: the client's ACK may come
/// through the new dispatcher) and those closing (FIN_WAIT1/2, CLOSE_WAIT,
/// LAST_ACK: their last packets still pass it).
const IN_PROGRESS: [&str; 6] = ["01", "03", "04", "05", "08", "09"];

fn parse_v4(hex: &str) -> Option<Ipv4Addr> {
    // The kernel prints the network-order bytes as one host-order u32.
    let v = u32::from_str_radix(hex, 16).ok()?;
    Some(Ipv4Addr::from(v.to_ne_bytes()))
}

fn parse_v6(hex: &str) -> Option<IpAddr> {
    if hex.len() != 32 {
        return None;
    }
    let mut b = [0u8; 16];
    for w in 0..4 {
        let v = u32::from_str_radix(&hex[w * 8..w * 8 + 8], 16).ok()?;
        b[w * 4..w * 4 + 4].copy_from_slice(&v.to_ne_bytes());
    }
    let a = Ipv6Addr::from(b);
    Some(match a.to_ipv4_mapped() {
        Some(v4) => IpAddr::V4(v4),
        None => IpAddr::V6(a),
    })
}

fn parse_endpoint(s: &str) -> Option<SocketAddr> {
    let (ip, port) = s.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let ip = if ip.len() == 8 { IpAddr::V4(parse_v4(ip)?) } else { parse_v6(ip)? };
    Some(SocketAddr::new(ip, port))
}

/// Parses the text of /proc/net/tcp or tcp6: established connections whose
/// local port is in `ports` (all if empty). Bad lines are skipped.
pub fn parse(text: &str, ports: &[u16]) -> Vec<Conn> {
    parse_states(text, ports, &[ESTABLISHED])
}

fn parse_states(text: &str, ports: &[u16], states: &[&str]) -> Vec<Conn> {
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 4 || !states.contains(&f[3]) {
                return None;
            }
            let c = Conn { local: parse_endpoint(f[1])?, remote: parse_endpoint(f[2])? };
            (ports.is_empty() || ports.contains(&c.local.port())).then_some(c)
        })
        .collect()
}

fn read(ports: &[u16], states: &[&str]) -> Vec<Conn> {
    let mut all = Vec::new();
    for f in ["/proc/net/tcp", "/proc/net/tcp6"] {
        if let Ok(t) = std::fs::read_to_string(f) {
            all.extend(parse_states(&t, ports, states));
        }
    }
    all.sort();
    all
}

/// Established TCP connections to the given local ports, IPv4 and IPv6.
pub fn established(ports: &[u16]) -> Vec<Conn> {
    read(ports, &[ESTABLISHED])
}

/// The connections a new dispatcher rebuilds its sessions from: established,
/// half-accepted (SYN_RECV) and closing ones, to the given local ports.
pub fn in_progress(ports: &[u16]) -> Vec<Conn> {
    read(ports, &IN_PROGRESS)
}

/// Questions waiting for the reader at most; more are refused.
const READER_QUEUE: usize = 8;

#[derive(Debug, Default, Clone, Copy)]
pub struct ReaderCounters {
    pub asked: u64,
    /// Refused: over the rate, or the reader is busy with earlier ones.
    pub rate_limited: u64,
    pub busy: u64,
    /// Answered from a list read less than the cache time ago.
    pub cached: u64,
}

/// Answers connection-list questions ("conns?") on one thread of its own,
/// whoever asks and however often: at most `per_second` questions (a
/// token bucket of as many), at most `READER_QUEUE` waiting, and a list
/// read less than `cache` ago is reused, so a flood of questions costs
/// neither threads nor memory nor /proc reads.
pub struct Reader {
    questions: SyncSender<(SocketAddrV4, Vec<u16>)>,
    answers: Receiver<(SocketAddrV4, Vec<u8>, bool)>,
    per_second: f64,
    tokens: f64,
    refilled: Instant,
    pub counters: ReaderCounters,
}

impl Reader {
    /// Starts the reader thread. `read(ports)` gives the list's text.
    pub fn spawn(
        per_second: u32,
        cache: Duration,
        read: impl Fn(&[u16]) -> Vec<u8> + Send + 'static,
    ) -> std::io::Result<Reader> {
        let (questions, asked) = mpsc::sync_channel::<(SocketAddrV4, Vec<u16>)>(READER_QUEUE);
        let (answer, answers) = mpsc::sync_channel(READER_QUEUE);
        std::thread::Builder::new().name("conns-reader".into()).spawn(move || {
            let mut last: Option<(Vec<u16>, Instant, Vec<u8>)> = None;
            for (to, ports) in asked {
                let fresh = last.as_ref().filter(|(p, at, _)| *p == ports && at.elapsed() < cache);
                let (text, cached) = match fresh {
                    Some((_, _, t)) => (t.clone(), true),
                    None => {
                        let t = read(&ports);
                        last = Some((ports, Instant::now(), t.clone()));
                        (t, false)
                    }
                };
                if answer.send((to, text, cached)).is_err() {
                    return;
                }
            }
        })?;
        let per_second = f64::from(per_second.max(1));
        Ok(Reader {
            questions,
            answers,
            per_second,
            tokens: per_second,
            refilled: Instant::now(),
            counters: ReaderCounters::default(),
        })
    }

    /// Queues `to`'s question; false (counted) when over the rate or busy.
    pub fn ask(&mut self, to: SocketAddrV4, ports: Vec<u16>) -> bool {
        self.counters.asked += 1;
        let now = Instant::now();
        let refill = now.duration_since(self.refilled).as_secs_f64() * self.per_second;
        self.tokens = (self.tokens + refill).min(self.per_second);
        self.refilled = now;
        if self.tokens < 1.0 {
            self.counters.rate_limited += 1;
            return false;
        }
        match self.questions.try_send((to, ports)) {
            Ok(()) => {
                self.tokens -= 1.0;
                true
            }
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.counters.busy += 1;
                false
            }
        }
    }

    /// The next answer ready: (who asked, the list).
    pub fn answer(&mut self) -> Option<(SocketAddrV4, Vec<u8>)> {
        let (to, text, cached) = self.answers.try_recv().ok()?;
        self.counters.cached += u64::from(cached);
        Some((to, text))
    }
}

/// The list a new dispatcher asks for: "local remote" per line.
pub fn answer_text(ports: &[u16]) -> Vec<u8> {
    let lines: Vec<String> = in_progress(ports).iter().map(|c| format!("{} {}", c.local, c.remote)).collect();
    lines.join("\n").into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_kernel_lines() {
        let t = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1F90 0100007F:D431 01 00000000:00000000 00:00000000 00000000     0        0 1 1 0 10 0 0 10 -1
   1: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 2 1 0 10 0 0 10 -1
   2: 0100007F:0050 0100007F:D432 01 garbage
   3: nonsense";
        let c = parse(t, &[8080]);
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].local, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(c[0].remote, "127.0.0.1:54321".parse().unwrap());
        assert_eq!(parse(t, &[]).len(), 2);
        // SYN_RECV counts for a rebuild, not as established; LISTEN never.
        let syn_recv = t.replace(" 01 00000000", " 03 00000000");
        assert_eq!(parse(&syn_recv, &[8080]).len(), 0);
        assert_eq!(parse_states(&syn_recv, &[8080], &IN_PROGRESS).len(), 1);
        assert_eq!(parse_states(t, &[], &IN_PROGRESS).len(), 2);
        let v6 = "h\n 0: 0000000000000000FFFF00000100007F:1F90 0000000000000000FFFF00000100007F:D431 01 x";
        assert_eq!(parse(v6, &[8080])[0].remote, "127.0.0.1:54321".parse().unwrap());
    }

    #[test]
    fn the_reader_is_rate_limited_bounded_and_caches() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        use std::sync::Arc;
        let reads = Arc::new(AtomicUsize::new(0));
        let r2 = Arc::clone(&reads);
        let mut r = Reader::spawn(5, Duration::from_secs(10), move |p| {
            r2.fetch_add(1, Ordering::Relaxed);
            format!("{p:?}").into_bytes()
        })
        .unwrap();
        let who = "10.0.0.1:7400".parse().unwrap();
        let taken = (0..1000).filter(|_| r.ask(who, vec![80])).count();
        assert_eq!(taken, 5, "the bucket holds 5 questions");
        assert_eq!(r.counters.rate_limited + r.counters.busy, 995);
        let mut got = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(5);
        while got.len() < 5 && Instant::now() < deadline {
            match r.answer() {
                Some(a) => got.push(a),
                None => std::thread::sleep(Duration::from_millis(5)),
            }
        }
        assert_eq!(got.len(), 5);
        assert_eq!(got[0], (who, b"[80]".to_vec()));
        assert_eq!(reads.load(Ordering::Relaxed), 1, "one /proc read served all five");
        assert_eq!(r.counters.cached, 4);
    }
}
