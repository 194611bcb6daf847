//! How often one packet is resent. A receiver asks again for a packet its retransmission
//! did not reach, so each packet may be resent a few times; but a receiver that never
//! counts a retransmission as received (webrtc-rs 0.21 undoes RTX after its NACK
//! generator has looked, so that generator asks for every repaired packet again every
//! 100 ms until it ages out) would otherwise spend the subscriber's whole retransmission
//! budget on packets it already has, and the packets it lost next would get none. So a
//! packet is resent at most [`MAX_RESENDS`] times (LiveKit's SFU stops at three too).

/// The most times one packet of a stream is resent.
pub const MAX_RESENDS: u8 = 3;

/// Sequence numbers remembered per stream: a window of the newest packets (about 10 s of
/// video at 100 packets/s).
const SLOTS: usize = 1024;

/// The resends of one sent stream, by sequence number (a slot per `seq % SLOTS`, which
/// a later packet of the same slot takes over).
#[derive(Debug)]
pub struct Resends {
    seq: [u16; SLOTS],
    count: [u8; SLOTS],
}

impl Default for Resends {
    fn default() -> Self {
        Self {
            seq: [0; SLOTS],
            count: [0; SLOTS],
        }
    }
}

impl Resends {
    /// Whether packet `seq` may be resent once more; if so, that resend is counted.
    pub fn allow(&mut self, seq: u16) -> bool {
        let i = usize::from(seq) % SLOTS;
        if self.seq[i] != seq {
            self.seq[i] = seq;
            self.count[i] = 0;
        }
        if self.count[i] >= MAX_RESENDS {
            return false;
        }
        self.count[i] += 1;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_packet_is_resent_at_most_three_times_and_a_later_one_takes_its_slot() {
        let mut r = Resends::default();
        assert!((0..3).all(|_| r.allow(7)));
        assert!(!r.allow(7));
        // Another packet is counted on its own.
        assert!((0..3).all(|_| r.allow(8)));
        // 7 + 1024 takes 7's slot (7 is long gone from any send buffer by then), and 7
        // then counts afresh.
        assert!(r.allow(7 + SLOTS as u16));
        assert!(r.allow(7));
        // Packet 0 is a packet like any other (the slots start out holding 0).
        assert!((0..3).all(|_| r.allow(0)) && !r.allow(0));
    }
}
