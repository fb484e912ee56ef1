//! The x87 environment image: the 14- or 28-byte block FNSTENV stores and FLDENV loads
//! (control, status and tag words, the last instruction and data pointers and the last
//! opcode), in the four layouts the SDM gives for real and protected mode at 16 and 32 bits.
//!
//! Kept apart from the instructions so that the layouts are plain functions (and the
//! differential suite can build the emulator's side of a comparison from a `CpuState`).

use crate::state::CpuState;

/// FSW: the exception flags (IE, DE, ZE, OE, UE, PE).
pub const FSW_EXCEPTIONS: u16 = 0x3f;
/// FSW: stack fault.
pub const FSW_SF: u16 = 1 << 6;
/// FSW: error summary.
pub const FSW_ES: u16 = 1 << 7;
/// FSW: busy (mirrors ES).
pub const FSW_B: u16 = 1 << 15;

/// One of the four environment layouts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EnvFormat {
    /// Protected or long mode, 32-bit operand size (28 bytes; also the 64-bit mode form).
    Protected32,
    /// Protected mode, 16-bit operand size (14 bytes).
    Protected16,
    /// Real or virtual-8086 mode, 32-bit operand size (28 bytes).
    Real32,
    /// Real or virtual-8086 mode, 16-bit operand size (14 bytes).
    Real16,
}

impl EnvFormat {
    /// The layout an FNSTENV/FLDENV uses in real (or virtual-8086) mode or not, with a
    /// 28-byte (`wide`) or 14-byte operand.
    pub fn new(real: bool, wide: bool) -> EnvFormat {
        match (real, wide) {
            (false, true) => EnvFormat::Protected32,
            (false, false) => EnvFormat::Protected16,
            (true, true) => EnvFormat::Real32,
            (true, false) => EnvFormat::Real16,
        }
    }

    /// Bytes per slot: the image is seven slots of 4 or 2 bytes.
    pub fn slot_size(self) -> usize {
        match self {
            EnvFormat::Protected32 | EnvFormat::Real32 => 4,
            EnvFormat::Protected16 | EnvFormat::Real16 => 2,
        }
    }

    /// Size of the whole image in bytes.
    pub fn size(self) -> usize {
        7 * self.slot_size()
    }
}

/// The x87 environment as FNSTENV sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Environment {
    /// Control word.
    pub fcw: u16,
    /// Status word.
    pub fsw: u16,
    /// Full tag word (two bits per physical register).
    pub tag_word: u16,
    /// Last instruction pointer.
    pub ip: u64,
    /// Last data pointer.
    pub dp: u64,
    /// Last opcode (11 bits). The 16-bit protected layout does not carry it: loading one
    /// clears it, as Intel processors do (found by the differential suite).
    pub op: u16,
}

/// Bits of the last opcode.
const FOP_MASK: u32 = 0x7ff;
/// Reserved upper halves of the 16-bit fields of a 32-bit image, stored as ones as Intel
/// processors do (found by the differential suite on the control, status and tag slots).
const RESERVED_HIGH: u32 = 0xffff_0000;

impl Environment {
    /// The environment of a CPU.
    pub fn of(s: &CpuState) -> Environment {
        Environment {
            fcw: s.fcw,
            fsw: s.fsw,
            tag_word: full_tag_word(s),
            ip: s.fpu_ip,
            dp: s.fpu_dp,
            op: s.fpu_op,
        }
    }

    /// The seven slot values of the image in `format` (for the 16-bit layouts only the low
    /// 16 bits of each are stored). The code and data selectors are stored as 0: the CPUID
    /// profile advertises them as deprecated.
    pub fn encode(&self, format: EnvFormat) -> [u32; 7] {
        let (ip, dp) = (self.ip as u32, self.dp as u32);
        let op = self.op as u32 & FOP_MASK;
        let words = [self.fcw as u32, self.fsw as u32, self.tag_word as u32];
        match format {
            EnvFormat::Protected32 => [
                RESERVED_HIGH | words[0],
                RESERVED_HIGH | words[1],
                RESERVED_HIGH | words[2],
                ip,
                op << 16,
                dp,
                RESERVED_HIGH,
            ],
            EnvFormat::Protected16 => {
                [words[0], words[1], words[2], ip & 0xffff, 0, dp & 0xffff, 0]
            }
            EnvFormat::Real32 => [
                RESERVED_HIGH | words[0],
                RESERVED_HIGH | words[1],
                RESERVED_HIGH | words[2],
                RESERVED_HIGH | (ip & 0xffff),
                (ip >> 16) << 12 | op,
                RESERVED_HIGH | (dp & 0xffff),
                (dp >> 16) << 12,
            ],
            EnvFormat::Real16 => [
                words[0],
                words[1],
                words[2],
                ip & 0xffff,
                ((ip >> 16) & 0xf) << 12 | op,
                dp & 0xffff,
                ((dp >> 16) & 0xf) << 12,
            ],
        }
    }

    /// The environment an image in `format` holds (`slots` as read, 16-bit slots in the low
    /// bits).
    pub fn decode(slots: [u32; 7], format: EnvFormat) -> Environment {
        let low = |k: usize| slots[k] & 0xffff;
        let (ip, dp, op) = match format {
            EnvFormat::Protected32 => (slots[3], slots[5], slots[4] >> 16 & FOP_MASK),
            EnvFormat::Protected16 => (low(3), low(5), 0),
            EnvFormat::Real32 => (
                low(3) | (slots[4] >> 12 & 0xffff) << 16,
                low(5) | (slots[6] >> 12 & 0xffff) << 16,
                slots[4] & FOP_MASK,
            ),
            EnvFormat::Real16 => (
                low(3) | (low(4) >> 12) << 16,
                low(5) | (low(6) >> 12) << 16,
                low(4) & FOP_MASK,
            ),
        };
        Environment {
            fcw: low(0) as u16,
            fsw: low(1) as u16,
            tag_word: low(2) as u16,
            ip: ip as u64,
            dp: dp as u64,
            op: op as u16,
        }
    }

    /// The image as bytes, little-endian, `format.size()` long.
    pub fn to_bytes(&self, format: EnvFormat) -> Vec<u8> {
        let n = format.slot_size();
        self.encode(format)
            .iter()
            .flat_map(|v| v.to_le_bytes().into_iter().take(n))
            .collect()
    }
}

/// The control word an FLDCW, FLDENV or FXRSTOR of `v` leaves: bits 13-15 are reserved and read as 0,
/// bit 6 is reserved and reads as 1 (what Intel processors store: the differential suite
/// found FLDCW 0x0202 reading back 0x0242; 0xffff reads back 0x1f7f).
pub fn control_word(v: u16) -> u16 {
    (v & 0x1f3f) | 0x0040
}

/// Recompute ES and B from the exception flags and masks (after the control word or the
/// status word changed).
pub fn update_summary(s: &mut CpuState) {
    let unmasked = s.fsw & FSW_EXCEPTIONS & !(s.fcw & FSW_EXCEPTIONS);
    if unmasked != 0 {
        s.fsw |= FSW_ES | FSW_B;
    } else {
        s.fsw &= !(FSW_ES | FSW_B);
    }
}

/// The two-bit tag of an 80-bit register value: 0 valid, 1 zero, 2 special.
fn classify(v: u128) -> u16 {
    let exponent = ((v >> 64) & 0x7fff) as u16;
    let mantissa = v as u64;
    match exponent {
        0x7fff => 2,
        0 if mantissa == 0 => 1,
        0 => 2,
        _ if mantissa >> 63 == 0 => 2,
        _ => 0,
    }
}

/// The full tag word (two bits per physical register) from the CPU's abridged one and the
/// register contents.
pub fn full_tag_word(s: &CpuState) -> u16 {
    let mut tw = 0u16;
    for p in 0..8u16 {
        let tag = if s.ftw & (1 << p) == 0 {
            3
        } else {
            classify(s.st[p as usize])
        };
        tw |= tag << (2 * p);
    }
    tw
}

/// The abridged tag word (one bit per physical register: not empty) from a full one.
pub fn abridged_tag_word(tw: u16) -> u8 {
    let mut ftw = 0u8;
    for p in 0..8 {
        if (tw >> (2 * p)) & 3 != 3 {
            ftw |= 1 << p;
        }
    }
    ftw
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tag_words_round_trip() {
        let mut s = CpuState {
            ftw: 0b1000_0011,
            fsw: 6 << 11,
            ..CpuState::default()
        };
        // Tags are per physical register, whatever TOP (6 here) says.
        s.st[0] = 1u128 << 63 | 0x3fffu128 << 64; // R0: 1.0, valid
        s.st[1] = 0; // R1: zero
        s.st[7] = 0x7fffu128 << 64; // R7: infinity-like, special
        let tw = full_tag_word(&s);
        assert_eq!(tw, 0b10_11_11_11_11_11_01_00);
        assert_eq!(abridged_tag_word(tw), 0b1000_0011);
    }

    fn sample() -> Environment {
        Environment {
            fcw: 0x37f,
            fsw: 0x3800,
            tag_word: 0xffff,
            ip: 0x000a_bcde,
            dp: 0x0009_8765,
            op: 0x5d9,
        }
    }

    #[test]
    fn every_layout_round_trips_what_it_can_hold() {
        let e = sample();
        for f in [EnvFormat::Protected32, EnvFormat::Real32, EnvFormat::Real16] {
            assert_eq!(Environment::decode(e.encode(f), f), e, "{f:?}");
        }
        let p16 = Environment::decode(e.encode(EnvFormat::Protected16), EnvFormat::Protected16);
        assert_eq!((p16.ip, p16.dp, p16.op), (0xbcde, 0x8765, 0));
    }

    #[test]
    fn layouts_place_the_pointers_where_the_sdm_says() {
        let e = sample();
        let p32 = e.encode(EnvFormat::Protected32);
        assert_eq!(p32[3], 0x000a_bcde);
        assert_eq!(p32[4], 0x5d9 << 16, "FCS deprecated (0), FOP in bits 16-26");
        assert_eq!(
            p32[6], 0xffff_0000,
            "FDS deprecated (0), reserved half ones"
        );
        let r16 = e.encode(EnvFormat::Real16);
        assert_eq!(r16[4], 0xa << 12 | 0x5d9, "FIP[19:16] above FOP");
        assert_eq!(r16[6], 0x9 << 12);
        assert_eq!(e.to_bytes(EnvFormat::Protected16).len(), 14);
        assert_eq!(e.to_bytes(EnvFormat::Real32).len(), 28);
    }
}
