//! A sample of the worker's sessions for the operator (`ringlb sessions`):
//! a cursor over the table, a slice of it per housekeeping call, each
//! session found sent to the control thread as an event, up to a limit.
//! It yields to live events as a dump does (the queue keeps room for them).

use super::{record, Worker};
use crate::control::channel::{Event, QUEUE_LEN};

/// Slots a sample visits per housekeeping call.
const SAMPLE_SLOTS: usize = 4096;

pub(super) struct Sample {
    id: u32,
    /// Only the sessions of this VIP and port.
    service: Option<(u32, u16)>,
    /// Sessions still to send.
    remaining: u32,
    cursor: usize,
}

impl Sample {
    pub fn new(id: u32, service: Option<(u32, u16)>, limit: u32) -> Sample {
        Sample { id, service, remaining: limit, cursor: 0 }
    }
}

impl Worker<'_> {
    pub(super) fn sample_step(&mut self) {
        let Some(mut s) = self.sample.take() else { return };
        let stats = self.stats;
        let mut visited = 0;
        while visited < SAMPLE_SLOTS && self.outbox.room() > QUEUE_LEN / 4 {
            if s.remaining == 0 || s.cursor >= self.table.slots() {
                if self.outbox.push(Event::SampleDone { id: s.id }, stats).is_none() {
                    break; // sent again on the next call
                }
                return;
            }
            if let Some((key, e)) = self.table.entry_at(s.cursor) {
                if s.service.is_none_or(|(vip, port)| key.vip == vip && key.vport == port) {
                    let ev = Event::Sampled { id: s.id, rec: record(&key, e), replica: e.is_replica() };
                    if self.outbox.push(ev, stats).is_none() {
                        break;
                    }
                    s.remaining -= 1;
                }
            }
            s.cursor += 1;
            visited += 1;
        }
        self.sample = Some(s);
    }
}
