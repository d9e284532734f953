//! The kernel's current TCP connections, read from /proc/net/tcp and
//! /proc/net/tcp6: what a server reports when a new dispatcher rebuilds its
//! connection map (B9).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Conn {
    pub local: SocketAddr,
    pub remote: SocketAddr,
}

const ESTABLISHED: &str = "01";

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
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 4 || f[3] != ESTABLISHED {
                return None;
            }
            let c = Conn { local: parse_endpoint(f[1])?, remote: parse_endpoint(f[2])? };
            (ports.is_empty() || ports.contains(&c.local.port())).then_some(c)
        })
        .collect()
}

/// Established TCP connections to the given local ports, IPv4 and IPv6.
pub fn established(ports: &[u16]) -> Vec<Conn> {
    let mut all = Vec::new();
    for f in ["/proc/net/tcp", "/proc/net/tcp6"] {
        if let Ok(t) = std::fs::read_to_string(f) {
            all.extend(parse(&t, ports));
        }
    }
    all.sort();
    all
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
        let v6 = "h\n 0: 0000000000000000FFFF00000100007F:1F90 0000000000000000FFFF00000100007F:D431 01 x";
        assert_eq!(parse(v6, &[8080])[0].remote, "127.0.0.1:54321".parse().unwrap());
    }
}
