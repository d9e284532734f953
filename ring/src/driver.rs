//! The thin runtime around a [`Member`]: one UDP socket, one thread, the
//! wall clock. It feeds datagrams and timeouts in, sends what the member
//! hands back, and passes events to the caller.

use crate::member::{Event, Member};
use std::net::{SocketAddr, SocketAddrV4, UdpSocket};
use std::time::{Duration, Instant};

pub struct Driver {
    socket: UdpSocket,
    epoch: Instant,
}

impl Driver {
    pub fn bind(addr: SocketAddrV4) -> std::io::Result<Driver> {
        let socket = UdpSocket::bind(addr)?;
        Ok(Driver { socket, epoch: Instant::now() })
    }

    /// Milliseconds since the driver started: the member's clock.
    pub fn now(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// Runs the member for at most `budget`, calling `on_event` for each
    /// event. Returns early when `on_event` returns false.
    pub fn run_for(
        &self,
        member: &mut Member,
        budget: Duration,
        mut on_event: impl FnMut(&mut Member, Event) -> bool,
    ) -> bool {
        let end = Instant::now() + budget;
        // A heartbeat of 256 members is ~6 KiB: take any UDP datagram whole.
        let mut buf = vec![0u8; 65_536];
        loop {
            self.flush(member);
            while let Some(e) = member.poll_event() {
                if !on_event(member, e) {
                    return false;
                }
                self.flush(member);
            }
            let now_i = Instant::now();
            if now_i >= end {
                return true;
            }
            let now = self.now();
            let wake = member.poll_timeout();
            if wake <= now {
                member.handle_timeout(now);
                continue;
            }
            let wait = Duration::from_millis(wake - now).min(end - now_i).max(Duration::from_millis(1));
            let _ = self.socket.set_read_timeout(Some(wait));
            match self.socket.recv_from(&mut buf) {
                Ok((n, SocketAddr::V4(from))) => member.handle_datagram(self.now(), from, &buf[..n]),
                Ok(_) => {} // IPv6 peers are not ring members
                Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
                Err(_) => {} // e.g. ICMP port unreachable from a dead peer: the protocol handles silence
            }
        }
    }

    fn flush(&self, member: &mut Member) {
        while let Some(tx) = member.poll_transmit() {
            // Loss is the protocol's business: a failed send is like a lost datagram.
            let _ = self.socket.send_to(&tx.bytes, tx.to);
        }
    }
}
