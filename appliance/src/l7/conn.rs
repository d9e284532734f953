//! One proxied connection's handshake with its server, as a state machine
//! without I/O (segments in, decisions and segments to send out), so
//! every step is testable on numbers alone. This is the part `syn_proxy`
//! needs (TCP state migration: the appliance takes the client's handshake,
//! then hands the connection to a server by replaying it; DPVS's synproxy in
//! spirit):
//!
//! 1. The client's SYN was answered with a cookie and a zero window, so
//!    no state exists until its ACK returns the cookie. Then the
//!    connection is made (`Conn::open`) and the client's SYN is replayed
//!    to the chosen server: the client's own ISN and options, so the
//!    client's sequence numbers mean the same on both sides.
//! 2. The server's SYN-ACK fixes the delta between its ISN and the cookie.
//!    The appliance ACKs it, and opens the client's window with a window
//!    update: from then on segments are spliced (see `splice`).
//!
//! An `l7` connection has a step before (delayed binding): the
//! client's window is open, its cookie ACK makes the connection
//! `Buffering` (`Conn::accept`) while the appliance gathers and ACKs its
//! request; the request's head picks the server (`Conn::bind`), and once
//! the server answers the replayed SYN the gathered request is sent to it
//! (`Emit::RequestToServer`) instead of the window update.
//!
//! Sequence numbers compare modulo 2^32.

use super::cookie::SynOptions;
pub use crate::packet::tcp_flags::{ACK, FIN, RST, SYN};

/// How long the server has to answer a replayed SYN before it is sent
/// again, and how many times it is sent in all.
pub const SYN_RETRY_MS: u32 = 250;
pub const SYN_TRIES: u8 = 4;

/// The parts of a TCP segment the state machine reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Seg {
    pub seq: u32,
    pub ack: u32,
    pub flags: u8,
    /// The window field as sent (unscaled in a SYN).
    pub window: u16,
    pub payload_len: u32,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum State {
    /// `l7`: the client's request is being gathered; no server yet.
    Buffering,
    /// The SYN is replayed to the server; its SYN-ACK is awaited.
    Connecting,
    /// Both halves joined: segments are translated and forwarded.
    Spliced,
    /// A RST was seen, or a FIN from each side: segments are still
    /// translated (the last ACKs, retransmitted FINs; and a RST may have
    /// been forged, which the ends judge by its sequence number), and the
    /// entry goes after the closing timeout without traffic.
    Closing,
    /// The handshake failed and both sides were told: nothing passes.
    #[default]
    Closed,
}

/// A segment the appliance sends of its own.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Emit {
    /// The client's SYN, replayed to the server.
    SynToServer { isn: u32, opts: SynOptions },
    /// The ACK that completes the server's handshake.
    AckToServer { seq: u32, ack: u32 },
    /// Opens the window the cookie SYN-ACK kept at 0.
    WindowToClient { seq: u32, ack: u32, window: u16 },
    /// Ends the client's side.
    RstToClient { seq: u32 },
    /// Ends the server's side.
    RstToServer { seq: u32 },
    /// `l7`: the request gathered from the client, sent to the server from
    /// `seq` (its first byte) with acknowledgement `ack`.
    RequestToServer { seq: u32, ack: u32 },
}

/// What becomes of the segment in hand.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Translate it and send it on.
    Forward,
    /// Taken by the appliance; nothing goes on.
    Consume,
    /// Refused: it does not belong to this connection as it stands.
    Drop(Refused),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refused {
    /// A server segment whose acknowledgement is not the replayed SYN's.
    ForgedSynAck,
    /// A RST outside what the receiver would accept.
    BlindReset,
    /// Data or a SYN where the state has none.
    Unexpected,
}

/// One connection's handshake state (the default is a closed one, a
/// table's free entry).
#[derive(Clone, Copy, Debug, Default)]
pub struct Conn {
    pub state: State,
    /// The appliance's ISN toward the client.
    pub cookie: u32,
    pub client_isn: u32,
    /// The options agreed with the client (the cookie's).
    pub opts: SynOptions,
    /// The window scale the appliance offered the client (None: declined).
    pub our_wscale: Option<u8>,
    pub server_isn: u32,
    /// Added to the server's sequence numbers on the way to the client.
    pub delta: u32,
    /// `l7`: bytes of the client's request the appliance ACKed itself
    /// (0 for `syn_proxy`, whose client sends nothing before the join).
    pub request_len: u32,
    syn_sent_ms: u32,
    syn_sent: u8,
    fins: u8,
}

const CLIENT_FIN: u8 = 1;
const SERVER_FIN: u8 = 2;

impl Conn {
    /// A connection whose client returned a valid cookie: `ack` is the
    /// client's ACK. Gives the SYN to replay to the server.
    pub fn open(ack: &Seg, cookie: u32, opts: SynOptions, our_wscale: Option<u8>, now_ms: u32) -> (Conn, Emit) {
        let client_isn = ack.seq.wrapping_sub(1);
        let conn = Conn {
            state: State::Connecting,
            cookie,
            client_isn,
            opts,
            our_wscale,
            server_isn: 0,
            delta: 0,
            request_len: 0,
            syn_sent_ms: now_ms,
            syn_sent: 1,
            fins: 0,
        };
        (conn, Emit::SynToServer { isn: client_isn, opts })
    }

    /// `l7`: a connection whose client returned a valid cookie, held while
    /// its request is gathered (no server yet).
    pub fn accept(ack: &Seg, cookie: u32, opts: SynOptions, our_wscale: Option<u8>) -> Conn {
        let (mut conn, _) = Conn::open(ack, cookie, opts, our_wscale, 0);
        conn.state = State::Buffering;
        conn.syn_sent = 0;
        conn
    }

    /// `l7`: the request's head is complete (`request_len` bytes gathered
    /// and ACKed to the client) and its server chosen: gives the SYN to
    /// replay to it.
    pub fn bind(&mut self, request_len: u32, now_ms: u32) -> Emit {
        debug_assert_eq!(self.state, State::Buffering);
        self.state = State::Connecting;
        self.request_len = request_len;
        self.syn_sent = 1;
        self.syn_sent_ms = now_ms;
        Emit::SynToServer { isn: self.client_isn, opts: self.opts }
    }

    /// `l7`: the bound server failed before any of its answer reached the
    /// client (it refused, stayed silent, closed, or answered with an
    /// error status); the request goes to another server (transparent
    /// error redirect): gives the SYN to replay to it.
    pub fn rebind(&mut self, now_ms: u32) -> Emit {
        self.state = State::Connecting;
        self.server_isn = 0;
        self.delta = 0;
        self.fins = 0;
        self.syn_sent = 1;
        self.syn_sent_ms = now_ms;
        Emit::SynToServer { isn: self.client_isn, opts: self.opts }
    }

    /// The client's next sequence number as the appliance has ACKed it.
    pub fn client_next(&self) -> u32 {
        self.client_isn.wrapping_add(1).wrapping_add(self.request_len)
    }

    /// A segment from the client.
    pub fn on_client(&mut self, seg: &Seg) -> (Action, Option<Emit>) {
        match self.state {
            State::Buffering => {
                // The caller gathers the request; a RST ends it all (in
                // the window the appliance offered the client).
                let offset = seg.seq.wrapping_sub(self.client_isn.wrapping_add(1));
                if seg.flags & RST != 0 {
                    if offset > super::request::HEAD_CAP as u32 {
                        return (Action::Drop(Refused::BlindReset), None);
                    }
                    self.state = State::Closed;
                }
                (Action::Consume, None)
            }
            State::Connecting => {
                if seg.flags & RST != 0 {
                    if seg.seq != self.client_next() {
                        return (Action::Drop(Refused::BlindReset), None);
                    }
                    // The client gave up: so does the server's half.
                    self.state = State::Closed;
                    return (Action::Consume, Some(Emit::RstToServer { seq: self.client_isn.wrapping_add(1) }));
                }
                // Its window is 0: ACKs and window probes wait for the server.
                (Action::Consume, None)
            }
            State::Spliced | State::Closing => {
                if seg.flags & SYN != 0 {
                    return (Action::Drop(Refused::Unexpected), None);
                }
                self.note_close(seg.flags, CLIENT_FIN);
                (Action::Forward, None)
            }
            State::Closed => (Action::Drop(Refused::Unexpected), None),
        }
    }

    /// A segment from the bound server.
    pub fn on_server(&mut self, seg: &Seg) -> (Action, [Option<Emit>; 2]) {
        let replayed_ack = self.client_isn.wrapping_add(1);
        match self.state {
            State::Connecting => {
                if seg.ack != replayed_ack || seg.flags & ACK == 0 {
                    if seg.flags & (ACK | RST) == ACK && self.syn_sent < SYN_TRIES {
                        // An old connection of the tuple answered (a server
                        // whose TIME-WAIT has no listener behind it ACKs a
                        // new SYN for it): as RFC 9293 has it for SYN-SENT,
                        // reset that one (SEQ = its ACK), then the SYN again.
                        self.syn_sent += 1;
                        let syn = Emit::SynToServer { isn: self.client_isn, opts: self.opts };
                        return (
                            Action::Drop(Refused::ForgedSynAck),
                            [Some(Emit::RstToServer { seq: seg.ack }), Some(syn)],
                        );
                    }
                    return (Action::Drop(Refused::ForgedSynAck), [None, None]);
                }
                if seg.flags & RST != 0 {
                    // Refused: the client learns it as from the service.
                    self.state = State::Closed;
                    return (Action::Consume, [Some(Emit::RstToClient { seq: self.cookie.wrapping_add(1) }), None]);
                }
                if seg.flags & SYN == 0 {
                    return (Action::Drop(Refused::Unexpected), [None, None]);
                }
                self.server_isn = seg.seq;
                self.delta = self.cookie.wrapping_sub(seg.seq);
                self.state = State::Spliced;
                if self.request_len > 0 {
                    // `l7`: the request completes the server's handshake.
                    return (Action::Consume, [Some(self.request_to_server()), None]);
                }
                // A SYN's window is never scaled; the client reads ours
                // scaled by what the appliance offered it.
                let window = u16::try_from(u32::from(seg.window) >> self.our_wscale.unwrap_or(0)).unwrap_or(u16::MAX);
                let to_server = Emit::AckToServer { seq: replayed_ack, ack: seg.seq.wrapping_add(1) };
                let to_client =
                    Emit::WindowToClient { seq: self.cookie.wrapping_add(1), ack: replayed_ack, window: window.max(1) };
                (Action::Consume, [Some(to_server), Some(to_client)])
            }
            State::Spliced | State::Closing => {
                if seg.flags & SYN != 0 {
                    if seg.seq == self.server_isn && seg.ack == replayed_ack {
                        // Our ACK was lost: the server sends its SYN-ACK again.
                        let again = match self.request_len {
                            0 => Emit::AckToServer { seq: replayed_ack, ack: seg.seq.wrapping_add(1) },
                            _ => self.request_to_server(),
                        };
                        return (Action::Consume, [Some(again), None]);
                    }
                    return (Action::Drop(Refused::Unexpected), [None, None]);
                }
                self.note_close(seg.flags, SERVER_FIN);
                (Action::Forward, [None, None])
            }
            // No server yet, or nothing passes any more.
            State::Buffering | State::Closed => (Action::Drop(Refused::Unexpected), [None, None]),
        }
    }

    /// Time passes: the replayed SYN is sent again, or, when the server
    /// never answered, the client is reset.
    pub fn on_timer(&mut self, now_ms: u32) -> Option<Emit> {
        if self.state != State::Connecting || now_ms.wrapping_sub(self.syn_sent_ms) < SYN_RETRY_MS {
            return None;
        }
        if self.syn_sent >= SYN_TRIES {
            self.state = State::Closed;
            return Some(Emit::RstToClient { seq: self.cookie.wrapping_add(1) });
        }
        self.syn_sent += 1;
        self.syn_sent_ms = now_ms;
        Some(Emit::SynToServer { isn: self.client_isn, opts: self.opts })
    }

    /// The gathered request, from its first byte, to the joined server.
    pub fn request_to_server(&self) -> Emit {
        Emit::RequestToServer { seq: self.client_isn.wrapping_add(1), ack: self.server_isn.wrapping_add(1) }
    }

    /// A spliced segment's FIN or RST: a RST, or a FIN from each side,
    /// moves the connection to `Closing`.
    fn note_close(&mut self, flags: u8, side: u8) {
        if flags & FIN != 0 {
            self.fins |= side;
        }
        if flags & RST != 0 || self.fins == CLIENT_FIN | SERVER_FIN {
            self.state = State::Closing;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OPTS: SynOptions = SynOptions { mss: 1460, wscale: Some(7), sack_permitted: true };

    fn seg(seq: u32, ack: u32, flags: u8, window: u16) -> Seg {
        Seg { seq, ack, flags, window, payload_len: 0 }
    }

    /// A connection whose client's ISN is just below the wrap and whose
    /// server's ISN is just above it.
    fn spliced() -> Conn {
        let (mut c, _) = Conn::open(&seg(0, 0xffff_fff1, ACK, 0), 0xffff_fff0, OPTS, Some(7), 0);
        c.on_server(&seg(0x10, 0, SYN | ACK, 64240));
        c
    }

    #[test]
    fn the_handshake_replays_the_clients_syn_and_joins_the_halves() {
        // Client ISN 0xffff_ffff: its ACK carries seq 0 (ISN + 1, wrapped).
        let client_ack = seg(0, 0xffff_fff1, ACK, 0);
        let (mut c, syn) = Conn::open(&client_ack, 0xffff_fff0, OPTS, Some(7), 1000);
        assert_eq!(syn, Emit::SynToServer { isn: 0xffff_ffff, opts: OPTS });
        assert_eq!(c.state, State::Connecting);
        // The client probes its zero window meanwhile: nothing goes on.
        assert_eq!(c.on_client(&seg(0, 0xffff_fff1, ACK, 502)), (Action::Consume, None));
        // The server answers the replayed SYN.
        let (action, emits) = c.on_server(&seg(0x10, 0, SYN | ACK, 64240));
        assert_eq!(action, Action::Consume, "the SYN-ACK is the appliance's to answer");
        assert_eq!(emits[0], Some(Emit::AckToServer { seq: 0, ack: 0x11 }));
        assert_eq!(emits[1], Some(Emit::WindowToClient { seq: 0xffff_fff1, ack: 0, window: 64240 >> 7 }));
        assert_eq!((c.state, c.server_isn), (State::Spliced, 0x10));
        // Server byte 0x11 is the client's cookie + 1.
        assert_eq!(0x11u32.wrapping_add(c.delta), 0xffff_fff1);
    }

    #[test]
    fn a_synack_not_for_the_replayed_syn_is_refused() {
        let (mut c, _) = Conn::open(&seg(1001, 5, ACK, 0), 4, OPTS, Some(7), 0);
        let again = Emit::SynToServer { isn: 1000, opts: OPTS };
        // An ACK for something else (an old connection of the tuple, or
        // forged): reset at its ACK, and the SYN again, while tries last.
        for forged in [seg(77, 1000, SYN | ACK, 100), seg(77, 1002, ACK, 100), seg(77, 9, ACK, 100)] {
            let (action, emits) = c.on_server(&forged);
            assert_eq!(action, Action::Drop(Refused::ForgedSynAck), "{forged:?}");
            assert_eq!(emits, [Some(Emit::RstToServer { seq: forged.ack }), Some(again)], "{forged:?}");
        }
        // The 4 SYNs are used up: refused in silence; a SYN without ACK never is answered.
        for forged in [seg(77, 1002, SYN | ACK, 100), seg(77, 1001, SYN, 100)] {
            assert_eq!(c.on_server(&forged), (Action::Drop(Refused::ForgedSynAck), [None, None]), "{forged:?}");
        }
        assert_eq!(c.state, State::Connecting, "nothing changed");
        assert_eq!(c.on_server(&seg(77, 1001, ACK, 100)).0, Action::Drop(Refused::Unexpected), "no SYN");
    }

    #[test]
    fn a_server_reset_or_silence_resets_the_client() {
        let (mut c, _) = Conn::open(&seg(1001, 5, ACK, 0), 4, OPTS, Some(7), 0);
        assert_eq!(
            c.on_server(&seg(0, 1001, RST | ACK, 0)),
            (Action::Consume, [Some(Emit::RstToClient { seq: 5 }), None])
        );
        assert_eq!(c.state, State::Closed);

        let (mut c, _) = Conn::open(&seg(1001, 5, ACK, 0), 4, OPTS, Some(7), 0);
        assert_eq!(c.on_timer(SYN_RETRY_MS - 1), None);
        let mut now = 0;
        for _ in 1..SYN_TRIES {
            now += SYN_RETRY_MS;
            assert_eq!(c.on_timer(now), Some(Emit::SynToServer { isn: 1000, opts: OPTS }), "at {now} ms");
        }
        assert_eq!(c.on_timer(now + SYN_RETRY_MS), Some(Emit::RstToClient { seq: 5 }));
        assert_eq!(c.state, State::Closed);
        assert_eq!(c.on_timer(now + 10 * SYN_RETRY_MS), None);
    }

    #[test]
    fn a_client_reset_while_connecting_must_hit_its_sequence() {
        let (mut c, _) = Conn::open(&seg(1001, 5, ACK, 0), 4, OPTS, Some(7), 0);
        assert_eq!(c.on_client(&seg(5000, 0, RST, 0)), (Action::Drop(Refused::BlindReset), None));
        assert_eq!(c.on_client(&seg(1001, 0, RST, 0)), (Action::Consume, Some(Emit::RstToServer { seq: 1001 })));
        assert_eq!(c.state, State::Closed);
    }

    #[test]
    fn a_lost_ack_is_sent_again_and_other_syns_are_refused() {
        let mut c = spliced();
        assert_eq!(
            c.on_server(&seg(0x10, 0, SYN | ACK, 64240)),
            (Action::Consume, [Some(Emit::AckToServer { seq: 0, ack: 0x11 }), None])
        );
        assert_eq!(c.on_server(&seg(0x99, 0, SYN | ACK, 64240)).0, Action::Drop(Refused::Unexpected));
        assert_eq!(c.on_client(&seg(0, 0, SYN, 0)).0, Action::Drop(Refused::Unexpected));
        assert_eq!(c.state, State::Spliced);
    }

    #[test]
    fn both_fins_or_a_reset_start_closing_and_the_last_segments_still_pass() {
        let mut c = spliced();
        assert_eq!(c.on_client(&seg(0, 0xffff_fff1, ACK, 500)).0, Action::Forward);
        assert_eq!(c.on_server(&seg(0x11, 0, ACK, 500)).0, Action::Forward);
        assert_eq!(c.on_client(&seg(0, 0xffff_fff1, FIN | ACK, 500)).0, Action::Forward);
        assert_eq!(c.state, State::Spliced, "one FIN: half closed");
        assert_eq!(c.on_server(&seg(0x11, 1, FIN | ACK, 500)).0, Action::Forward);
        assert_eq!(c.state, State::Closing);
        // The client's last ACK, and a retransmitted FIN, still need translating.
        assert_eq!(c.on_client(&seg(1, 0xffff_fff2, ACK, 500)).0, Action::Forward);
        assert_eq!(c.on_server(&seg(0x11, 1, FIN | ACK, 500)).0, Action::Forward);

        // A RST (perhaps forged: the receiving end judges its sequence
        // number) does not stop the translation either.
        let mut c = spliced();
        assert_eq!(c.on_server(&seg(0x11, 0, RST, 0)).0, Action::Forward);
        assert_eq!(c.state, State::Closing);
        assert_eq!(c.on_client(&seg(0, 0xffff_fff1, ACK, 500)).0, Action::Forward);
    }

    #[test]
    fn the_window_update_never_offers_zero_and_scales_as_offered() {
        let (mut c, _) = Conn::open(&seg(1, 5, ACK, 0), 4, OPTS, None, 0);
        let (_, emits) = c.on_server(&seg(9, 1, SYN | ACK, 65535));
        assert_eq!(emits[1], Some(Emit::WindowToClient { seq: 5, ack: 1, window: 65535 }), "no scaling offered");
        let (mut c, _) = Conn::open(&seg(1, 5, ACK, 0), 4, OPTS, Some(14), 0);
        let (_, emits) = c.on_server(&seg(9, 1, SYN | ACK, 1000));
        assert_eq!(emits[1], Some(Emit::WindowToClient { seq: 5, ack: 1, window: 1 }), "rounded down, but open");
    }

    #[test]
    fn an_l7_connection_buffers_then_binds_and_sends_its_request_at_the_join() {
        // Client ISN 0xffff_fffe: the request's 40 bytes cross 2^32.
        let ack = seg(0xffff_ffff, 0x1000_0001, ACK, 0);
        let mut c = Conn::accept(&ack, 0x1000_0000, OPTS, Some(7));
        assert_eq!(c.state, State::Buffering);
        assert_eq!(c.on_timer(10_000), None, "no server, no SYN to send again");
        // A server segment before any server is chosen is nobody's.
        assert_eq!(c.on_server(&seg(5, 0xffff_ffff, SYN | ACK, 100)).0, Action::Drop(Refused::Unexpected));
        let syn = c.bind(40, 100);
        assert_eq!(syn, Emit::SynToServer { isn: 0xffff_fffe, opts: OPTS });
        assert_eq!(c.state, State::Connecting);
        // The client's RST must hit its next byte, past the request it sent.
        let mut rst = seg(0xffff_ffff, 0, RST, 0);
        assert_eq!(c.on_client(&rst).0, Action::Drop(Refused::BlindReset));
        // The server's SYN-ACK is answered with the request, not a window update.
        let (action, emits) = c.on_server(&seg(0x7000, 0xffff_ffff, SYN | ACK, 64240));
        assert_eq!(action, Action::Consume);
        assert_eq!(emits, [Some(Emit::RequestToServer { seq: 0xffff_ffff, ack: 0x7001 }), None]);
        assert_eq!((c.state, c.delta), (State::Spliced, 0x1000_0000u32.wrapping_sub(0x7000)));
        // The SYN-ACK again (the request was lost): the request again.
        let (_, emits) = c.on_server(&seg(0x7000, 0xffff_ffff, SYN | ACK, 64240));
        assert_eq!(emits[0], Some(Emit::RequestToServer { seq: 0xffff_ffff, ack: 0x7001 }));
        rst.seq = 0xffff_ffffu32.wrapping_add(40);
        assert_eq!(c.on_client(&rst).0, Action::Forward, "spliced: the ends judge it");
    }

    #[test]
    fn an_l7_client_reset_while_buffering_must_fall_in_the_offered_window() {
        let ack = seg(101, 0x1000_0001, ACK, 0);
        let mut c = Conn::accept(&ack, 0x1000_0000, OPTS, Some(7));
        assert_eq!(c.on_client(&seg(100 + 20_000, 0, RST, 0)).0, Action::Drop(Refused::BlindReset));
        assert_eq!(c.state, State::Buffering);
        assert_eq!(c.on_client(&seg(101 + 300, 0, RST, 0)), (Action::Consume, None));
        assert_eq!(c.state, State::Closed);
    }
}
