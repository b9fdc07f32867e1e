//! RFC 1982 serial-number arithmetic (SERIAL_BITS = 32), as RFC 7143 §4.2.2.1 requires
//! for CmdSN, StatSN, DataSN, R2TSN and ExpCmdSN/MaxCmdSN comparisons.

use std::cmp::Ordering;

/// A 32-bit sequence number compared by RFC 1982 rules: `a < b` when `b` is ahead of
/// `a` by less than 2^31. Two numbers exactly 2^31 apart are unordered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Serial(pub u32);

/// Half the number space: the largest distance that still orders two serials.
const HALF: u32 = 1 << 31;

impl Serial {
    /// The serial `n` steps ahead, wrapping as RFC 1982 §3.1 addition does.
    #[inline]
    pub fn plus(self, n: u32) -> Serial {
        Serial(self.0.wrapping_add(n))
    }

    /// The next serial.
    #[inline]
    pub fn next(self) -> Serial {
        self.plus(1)
    }

    /// How far `self` is ahead of `other`, wrapping (meaningful when `self >= other`).
    #[inline]
    pub fn distance_from(self, other: Serial) -> u32 {
        self.0.wrapping_sub(other.0)
    }

    /// `true` when `self` lies in the closed window `[lo, hi]` in serial order.
    #[inline]
    pub fn in_window(self, lo: Serial, hi: Serial) -> bool {
        let span = hi.0.wrapping_sub(lo.0);
        span < HALF && self.0.wrapping_sub(lo.0) <= span
    }
}

impl PartialOrd for Serial {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        let d = self.0.wrapping_sub(other.0);
        match d {
            0 => Some(Ordering::Equal),
            HALF => None,
            d if d < HALF => Some(Ordering::Greater),
            _ => Some(Ordering::Less),
        }
    }
}

impl From<u32> for Serial {
    fn from(v: u32) -> Self {
        Serial(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn wraps_around_zero() {
        assert!(Serial(u32::MAX) < Serial(0));
        assert!(Serial(0) > Serial(u32::MAX));
        assert!(Serial(5) < Serial(6));
        assert_eq!(Serial(u32::MAX).next(), Serial(0));
    }

    #[test]
    fn half_apart_is_unordered() {
        assert_eq!(Serial(0).partial_cmp(&Serial(HALF)), None);
    }

    #[test]
    fn window_across_wrap() {
        let lo = Serial(u32::MAX - 2);
        let hi = Serial(3);
        assert!(Serial(u32::MAX).in_window(lo, hi));
        assert!(Serial(0).in_window(lo, hi));
        assert!(Serial(3).in_window(lo, hi));
        assert!(!Serial(4).in_window(lo, hi));
        assert!(!Serial(u32::MAX - 3).in_window(lo, hi));
    }

    #[test]
    fn empty_window_when_max_is_one_behind() {
        // MaxCmdSN = ExpCmdSN - 1 means the window is closed (RFC 7143 §4.2.2.1).
        let exp = Serial(10);
        let max = Serial(9);
        assert!(!Serial(10).in_window(exp, max));
    }

    proptest! {
        #[test]
        fn add_orders_forward(a: u32, n in 1u32..HALF) {
            prop_assert!(Serial(a) < Serial(a).plus(n));
            prop_assert_eq!(Serial(a).plus(n).distance_from(Serial(a)), n);
        }
    }
}
