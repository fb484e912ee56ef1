//! `movement` judged in the segments of a parallel replay (issue 6): a segment's shadow
//! of the policy ([`MovementShadow`]), from an unknown start state, and the hand-over of
//! what it knows at the segment's end ([`Movement::set_holders`]).

use reprise_cpu::observer::{Access, AccessKind};

use super::shadow_lines::{self, ShadowLines};
use super::{field, Movement};

impl Movement {
    /// Set the holders of line number `line` to `holders` (CPU c is bit c; CPUs below 63):
    /// where a segment of a parallel replay left a line it wrote ([`MovementShadow`]).
    /// An empty set is ignored (no line the shadow knows has one).
    pub fn set_holders(&mut self, line: u64, holders: u64) {
        if holders == 0 {
            return;
        }
        self.lines.fit(63 - holders.leading_zeros());
        let at = self.lines.at(line);
        let words = &mut self.lines.words[at..at + self.lines.stride];
        words.iter_mut().for_each(|w| *w = 0);
        words[0] = holders;
    }

    /// A shadow of this policy for one segment of a parallel replay, which starts with no
    /// knowledge of the lines (see [`MovementShadow`]).
    pub fn shadow(&self) -> MovementShadow {
        self.shadow_with_direct(shadow_lines::DIRECT_LINES)
    }

    /// [`Self::shadow`] with at most `most` directly indexed lines (tests: a small
    /// direct range, to judge lines on both sides of it).
    pub(super) fn shadow_with_direct(&self, most: u64) -> MovementShadow {
        MovementShadow {
            shift: self.shift,
            lines: ShadowLines::new(self.shift, most),
        }
    }
}

/// What a segment's shadow says of one access.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Kept, whatever the state before the segment.
    Keep,
    /// Dropped, whatever the state before the segment.
    Drop,
    /// Depends on the state before the segment: the merging side asks the real policy.
    Ask,
    /// Beyond what the shadow handles (a CPU number above 62, an access over two lines):
    /// hand over what it knows ([`MovementShadow::known`]) and ask the real policy from now
    /// on.
    Off,
}

/// `movement` run inside one segment of a parallel replay, from an unknown start state.
///
/// For each line it keeps the CPUs known to hold it and whether the whole set is known.
/// A read by a CPU known to hold the line is dropped and one on a known line is judged;
/// a write makes the set known ({writer}), and is kept for sure when another CPU is known
/// to hold the line. Everything else (a first read of an unknown line by a CPU, a write to
/// a line only the writer is known to hold) depends on the start state: those accesses
/// go to the merging side's real policy, in order — and only those touch an unknown line,
/// so the real policy's state of such a line is right when it is asked. At the segment's
/// end the lines the shadow knows are handed over ([`Movement::set_holders`]): the real
/// policy then is where a sequential replay would have left it. Decided drops never leave
/// the segment's thread, which is what makes the parallel replay pay.
#[derive(Clone, Debug)]
pub struct MovementShadow {
    shift: u32,
    /// Per line: holder bits 0-62, bit 63 set when the set is known.
    pub(super) lines: ShadowLines,
}

/// Bit 63 of a shadow line's word: its holder set is known.
pub(super) const KNOWN: u64 = 1 << 63;

impl MovementShadow {
    /// Judge one access (which should lie in one line).
    #[inline]
    pub fn judge(&mut self, a: &Access) -> Verdict {
        let line = a.paddr >> self.shift;
        let last = a.paddr.wrapping_add(field(&a.size).max(1) as u64 - 1) >> self.shift;
        if a.cpu >= 63 || line != last {
            return Verdict::Off;
        }
        let bit = 1u64 << a.cpu;
        let w = self.lines.get_mut(line);
        match field(&a.kind) {
            AccessKind::Read | AccessKind::Fetch => {
                if *w & bit != 0 {
                    Verdict::Drop
                } else {
                    *w |= bit;
                    if *w & KNOWN != 0 {
                        Verdict::Keep
                    } else {
                        Verdict::Ask
                    }
                }
            }
            AccessKind::Write | AccessKind::ReadModifyWrite => {
                let before = *w;
                *w = bit | KNOWN;
                if before & KNOWN != 0 {
                    if before & !KNOWN == bit {
                        Verdict::Drop
                    } else {
                        Verdict::Keep
                    }
                } else if before & !bit != 0 {
                    Verdict::Keep
                } else {
                    Verdict::Ask
                }
            }
        }
    }

    /// Whether [`Self::judge`] would drop `a` — which changes nothing in the shadow, so
    /// this is that verdict alone, asked without changing anything: the common case of
    /// a segment's per-access path (a CPU that holds the line reads it again, or writes
    /// a line known to be its alone), inlined there. `false` says only "not this way".
    #[inline(always)]
    pub fn drops(&self, a: &Access) -> bool {
        self.drops_sized(a, field(&a.size))
    }

    /// [`Self::drops`] with `a`'s size already loaded (`size`, which must be `a.size`):
    /// the per-access path loads it once for its own line test and this one.
    #[inline(always)]
    pub fn drops_sized(&self, a: &Access, size: u8) -> bool {
        self.drops_with(a, size, |line| Some(self.lines.get(line)))
    }

    /// [`Self::drops_sized`] for an access to a line with a direct word (one load, no call:
    /// see `ShadowLines`); `false` for any other line, whose verdict this does not say.
    #[inline(always)]
    pub fn drops_direct(&self, a: &Access, size: u8) -> bool {
        self.drops_with(a, size, |line| self.lines.direct(line))
    }

    /// Whether `a` is dropped, given its line's word from `word` (`None`: not this way).
    #[inline(always)]
    fn drops_with(&self, a: &Access, size: u8, word: impl Fn(u64) -> Option<u64>) -> bool {
        let line = a.paddr >> self.shift;
        let last = a.paddr.wrapping_add(size.max(1) as u64 - 1) >> self.shift;
        if a.cpu >= 63 || line != last {
            return false;
        }
        // A line never judged has the word 0, which drops nothing.
        let Some(w) = word(line) else {
            return false;
        };
        let bit = 1u64 << a.cpu;
        match field(&a.kind) {
            // `judge`: a read by a CPU known to hold the line.
            AccessKind::Read | AccessKind::Fetch => w & bit != 0,
            // `judge`: a write to a line whose set is known to be exactly {writer} (the
            // set stays {writer}, known).
            AccessKind::Write | AccessKind::ReadModifyWrite => w == bit | KNOWN,
        }
    }

    /// The lines whose holder set is known, as (line number, holders), in table order
    /// (which depends only on the accesses judged).
    pub fn known(&self) -> Vec<(u64, u64)> {
        self.lines.known()
    }
}
