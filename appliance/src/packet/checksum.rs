//! Incremental Internet checksum update (RFC 1624, eqn. 3):
//! `HC' = ~(~HC + ~m + m')`. Rewrites touch a few 16-bit words, so updating
//! the checksum costs a handful of adds instead of a pass over the payload.

#[inline]
fn fold(mut sum: u32) -> u16 {
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum as u16
}

/// The checksum after one 16-bit word of the covered data changed from `old` to `new`.
#[inline]
pub fn update16(check: u16, old: u16, new: u16) -> u16 {
    let sum = u32::from(!check) + u32::from(!old) + u32::from(new);
    !fold(sum)
}

/// The checksum after a 32-bit field (an IPv4 address) changed.
#[inline]
pub fn update32(check: u16, old: u32, new: u32) -> u16 {
    let check = update16(check, (old >> 16) as u16, (new >> 16) as u16);
    update16(check, old as u16, new as u16)
}

/// UDP's checksum field: 0 means "none" and must stay 0; a computed 0 is sent as 0xffff.
#[inline]
pub fn update_udp16(check: u16, old: u16, new: u16) -> u16 {
    if check == 0 {
        return 0;
    }
    match update16(check, old, new) {
        0 => 0xffff,
        c => c,
    }
}

#[inline]
pub fn update_udp32(check: u16, old: u32, new: u32) -> u16 {
    if check == 0 {
        return 0;
    }
    match update32(check, old, new) {
        0 => 0xffff,
        c => c,
    }
}

/// Whether `words` (a header that carries its own checksum; length a
/// multiple of 4) is intact: its one's-complement sum is all ones. The sum
/// is byte-order independent (RFC 1071), so 32-bit words are added as the
/// CPU loads them; a 20-byte header is five adds and one remainder.
#[inline]
pub fn sums_to_ones(words: &[u8]) -> bool {
    let word = |w: &[u8]| u64::from(u32::from_ne_bytes([w[0], w[1], w[2], w[3]]));
    let mut sum: u64 = match words.first_chunk::<20>() {
        Some(h) => word(&h[0..4]) + word(&h[4..8]) + word(&h[8..12]) + word(&h[12..16]) + word(&h[16..20]),
        None => 0,
    };
    let rest = if words.len() >= 20 { &words[20..] } else { words };
    for w in rest.chunks_exact(4) {
        sum += word(w);
    }
    // Folding with end-around carry keeps a sum's remainder mod 0xffff
    // (2^16 ≡ 1), with 0xffff standing for a non-zero multiple: all ones
    // is a non-zero multiple of 0xffff, and the compiler's division by a
    // constant is cheaper than the folds.
    sum != 0 && sum.is_multiple_of(0xffff)
}

/// A full one's-complement checksum, for packets the appliance builds itself
/// (ICMP replies keep using the incremental form).
pub fn full(data: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        sum += u32::from(u16::from_be_bytes([c[0], c[1]]));
    }
    if let [b] = chunks.remainder() {
        sum += u32::from(*b) << 8;
    }
    !fold(sum)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn incremental_matches_full_recompute() {
        let mut data = [0x45u8, 0, 0, 60, 0x1c, 0x46, 0x40, 0, 0x40, 6, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2];
        let c = full(&data);
        data[10..12].copy_from_slice(&c.to_be_bytes());
        assert_eq!(full(&data), 0);
        let old = u32::from_be_bytes([10, 0, 0, 2]);
        let new = u32::from_be_bytes([192, 168, 77, 254]);
        data[16..20].copy_from_slice(&new.to_be_bytes());
        let inc = update32(c, old, new);
        data[10..12].copy_from_slice(&[0, 0]);
        assert_eq!(inc, full(&data));
    }

    /// The word-at-a-time check agrees with the byte-pair checksum on
    /// headers of every IPv4 length, intact and with any one byte changed.
    #[test]
    fn sums_to_ones_agrees_with_the_full_checksum() {
        let mut x = 0x2545_f491_4f6c_dd1du64;
        for len in (20..=60).step_by(4) {
            for _ in 0..200 {
                let mut h: Vec<u8> = (0..len)
                    .map(|_| {
                        x ^= x << 13;
                        x ^= x >> 7;
                        x ^= x << 17;
                        x as u8
                    })
                    .collect();
                h[10..12].fill(0);
                let c = full(&h);
                h[10..12].copy_from_slice(&c.to_be_bytes());
                assert!(sums_to_ones(&h), "len {len}");
                let at = x as usize % len;
                let delta = (x >> 8) as u8 | 1;
                h[at] = h[at].wrapping_add(delta);
                assert_eq!(sums_to_ones(&h), full(&h) == 0, "len {len}, byte {at}");
            }
        }
    }

    #[test]
    fn udp_zero_checksum_stays_zero() {
        assert_eq!(update_udp32(0, 1, 2), 0);
    }
}
