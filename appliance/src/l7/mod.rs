//! Content-based dispatch (service mode `l7`), its building blocks:
//!
//! - `cookie`: the SYN cookies the appliance answers a client's SYN with,
//!   so that no state exists until the client proves it saw the answer;
//! - `request`: gathering the client's request head across segments, and
//!   parsing it (httparse);
//! - `rules`: which server group a request goes to;
//! - `response`: a server's response head (status for error redirect;
//!   whether a download can resume elsewhere, the request that resumes
//!   it, and the check of the answer);
//! - `tcpopt`: a handshake's TCP options, read and written;
//! - `segment`: segments the appliance writes itself (the SYN-ACK with
//!   its cookie, in the SYN's place);
//! - `conn`: one proxied connection's handshake with its server (replay
//!   the client's SYN, fix the sequence delta, join the halves), without I/O;
//! - `table`: a worker's proxied connections, in a slab and an index
//!   allocated at start;
//! - `splice`: once the appliance has opened the server's side, the
//!   sequence-number translation that joins the two halves.

pub mod conn;
pub mod cookie;
pub mod request;
pub mod response;
pub mod rules;
pub mod segment;
pub mod splice;
pub mod table;
pub mod tcpopt;
