//! The ring: a logical, token-passing, fault-tolerant ring of dispatchers
//! and servers, as a sans-IO state machine (`member`), its wire format
//! (`wire`), anti-replay (`replay`), the reliable message layer (`reliable`),
//! and a thin UDP driver (`driver`). Beside it, sharing its key and peers:
//! the sibling sync transport (`sync`), reliable ordered record streams
//! between appliances that share one address behind a port-trunked router.

#![forbid(unsafe_code)]

pub mod conns;
pub mod driver;
pub mod incarnation;
pub mod keyfile;
pub mod member;
pub mod reliable;
pub mod replay;
pub mod sync;
pub mod wire;

pub use member::{Config, Event, Member, Timers, Transmit};
pub use wire::{Dest, Key};
