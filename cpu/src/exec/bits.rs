//! Bit instructions: BT, BTS, BTR, BTC (register and immediate bit offsets), BSF, BSR, LZCNT,
//! TZCNT, POPCNT, BSWAP, and the rest of BMI1 (ANDN, BEXTR, BLSI, BLSMSK, BLSR), which the
//! default CPUID profile advertises along with TZCNT.
//!
//! With a memory operand and a register bit offset, BTx addresses a bit string: the offset
//! is signed (of the operand size) and may reach any operand-sized word before or after the
//! addressed one. An immediate offset, or a register destination, takes the offset modulo the
//! operand width.
//!
//! Undefined results and flags follow the Intel processors reprise was checked against:
//! - BSF/BSR of 0 set ZF and leave the destination unchanged (a 32-bit destination keeps
//!   its upper half too).
//! - BSWAP of a 16-bit register writes 0 to it.
//! - See [`bt_flags`] and [`scan`] for the undefined flags of BTx and BSF/BSR,
//!   LZCNT/TZCNT.

use iced_x86::{Code, Instruction, Mnemonic, OpKind};

use crate::bus::Bus;
use crate::exec::operand::op_size;
use crate::exec::Exec;
use crate::fault::{ExecResult, Fault};
use crate::flags::{mask, sign_extend, szp};
use crate::observer::Observer;
use crate::state::rflags::{CF, PF, SF, STATUS, ZF};

/// Whether this module executes `code`.
pub(crate) fn claims(code: Code) -> bool {
    use Mnemonic::*;
    let knc = matches!(
        code,
        // Knights Corner encodings, which iced decodes only on request.
        Code::VEX_KNC_Popcnt_r32_r32
            | Code::VEX_KNC_Popcnt_r64_r64
            | Code::VEX_KNC_Tzcnt_r32_r32
            | Code::VEX_KNC_Tzcnt_r64_r64
            | Code::VEX_KNC_Lzcnt_r32_r32
            | Code::VEX_KNC_Lzcnt_r64_r64
    );
    matches!(
        code.mnemonic(),
        Bt | Bts | Btr | Btc | Bsf | Bsr | Lzcnt | Tzcnt | Popcnt | Bswap
    ) && !knc
        || is_bmi1(code)
}

/// The VEX-encoded BMI1 codes (AMD's XOP/TBM forms of BEXTR are not advertised).
fn is_bmi1(code: Code) -> bool {
    matches!(
        code,
        Code::VEX_Andn_r32_r32_rm32
            | Code::VEX_Andn_r64_r64_rm64
            | Code::VEX_Bextr_r32_rm32_r32
            | Code::VEX_Bextr_r64_rm64_r64
            | Code::VEX_Blsi_r32_rm32
            | Code::VEX_Blsi_r64_rm64
            | Code::VEX_Blsmsk_r32_rm32
            | Code::VEX_Blsmsk_r64_rm64
            | Code::VEX_Blsr_r32_rm32
            | Code::VEX_Blsr_r64_rm64
    )
}

/// Execute one instruction this module claims.
pub(crate) fn exec<B: Bus, O: Observer>(x: &mut Exec<B, O>, i: &Instruction) -> ExecResult {
    let m = i.mnemonic();
    let old = x.cpu.state.rflags & STATUS;
    match m {
        Mnemonic::Bt | Mnemonic::Bts | Mnemonic::Btr | Mnemonic::Btc => bit_test(x, i, m, old),
        Mnemonic::Andn | Mnemonic::Bextr | Mnemonic::Blsi | Mnemonic::Blsmsk | Mnemonic::Blsr => {
            let size = op_size(i, 0);
            let a = x.read_op(i, 1)?;
            let b = if i.op_count() > 2 {
                x.read_op(i, 2)?
            } else {
                0
            };
            let (r, f) = bmi1(m, a, b, size);
            x.write_op(i, 0, r)?;
            x.set_status(f);
            Ok(())
        }
        Mnemonic::Bswap => {
            let size = op_size(i, 0);
            let v = x.read_op(i, 0)?;
            x.write_op(i, 0, bswap(v, size))
        }
        _ => {
            let size = op_size(i, 0);
            let src = x.read_op(i, 1)?;
            let (r, f) = scan(m, src, size);
            // BSF/BSR of 0 leave the whole destination register alone (`None`).
            if let Some(r) = r {
                x.write_op(i, 0, r)?;
            }
            x.set_status(f);
            Ok(())
        }
    }
}

/// BT, BTS, BTR and BTC in all their forms.
fn bit_test<B: Bus, O: Observer>(
    x: &mut Exec<B, O>,
    i: &Instruction,
    m: Mnemonic,
    old: u64,
) -> ExecResult {
    let size = op_size(i, 0);
    let bits = (size * 8) as u64;
    let writes = m != Mnemonic::Bt;
    if x.locked && (!writes || i.op0_kind() != OpKind::Memory) {
        return Err(Fault::INVALID_OPCODE.into());
    }
    let offset = x.read_op(i, 1)?;
    let (v, bit, addr) = if i.op0_kind() == OpKind::Memory && i.op1_kind() == OpKind::Register {
        // Bit string: the signed offset selects an operand-sized word relative to the
        // effective address (arithmetic shift = floor division), then a bit in it.
        let signed = sign_extend(offset, size) as i64;
        let word = signed >> bits.trailing_zeros();
        let off = x
            .effective_offset(i)
            .wrapping_add((word as u64).wrapping_mul(size as u64))
            & mask(x.address_size(i));
        let lin = x.linear(i.memory_segment(), off);
        let v = if writes {
            x.read_rmw(lin, size)?
        } else {
            x.read(lin, size)?
        };
        (v, offset & (bits - 1), Some(lin))
    } else {
        let v = if writes {
            x.read_op_rmw(i, 0)?
        } else {
            x.read_op(i, 0)?
        };
        (v, offset & (bits - 1), None)
    };
    let (r, f) = bit_op(m, v, bit, old);
    if writes {
        match addr {
            Some(lin) => x.write_rmw(lin, size, r)?,
            None => x.write_op_rmw(i, 0, r)?,
        }
    }
    x.set_status(f);
    Ok(())
}

/// The new value and status flags of BTx on `v` at bit `bit` (already reduced).
pub(crate) fn bit_op(m: Mnemonic, v: u64, bit: u64, old: u64) -> (u64, u64) {
    let b = 1u64 << bit;
    let set = v & b != 0;
    let r = match m {
        Mnemonic::Bts => v | b,
        Mnemonic::Btr => v & !b,
        Mnemonic::Btc => v ^ b,
        _ => v,
    };
    (r, bt_flags(set, old))
}

/// Status flags after BTx: CF = the selected bit, ZF unchanged; the undefined OF, SF, AF
/// and PF are left unchanged.
fn bt_flags(cf: bool, old: u64) -> u64 {
    (old & !CF) | if cf { CF } else { 0 }
}

/// BSF, BSR, LZCNT, TZCNT or POPCNT of `src`. Returns the value to write (`None` to leave
/// the destination untouched) and the status flags, which replace all six: the undefined
/// ones are what Intel hardware gives (BSF/BSR: CF = OF = SF = AF = 0, PF = parity of the
/// index, and ZF | PF for a zero source; LZCNT/TZCNT: OF = SF = AF = PF = 0).
pub(crate) fn scan(m: Mnemonic, src: u64, size: usize) -> (Option<u64>, u64) {
    let bits = (size * 8) as u32;
    let src = src & mask(size);
    match m {
        Mnemonic::Bsf | Mnemonic::Bsr => {
            if src == 0 {
                return (None, ZF | PF);
            }
            let r = if m == Mnemonic::Bsf {
                src.trailing_zeros()
            } else {
                63 - src.leading_zeros()
            } as u64;
            // PF is the parity of the index; ZF = 0, and the other flags are cleared.
            (Some(r), szp(r, 1) & PF)
        }
        Mnemonic::Tzcnt | Mnemonic::Lzcnt => {
            let r = if src == 0 {
                bits
            } else if m == Mnemonic::Tzcnt {
                src.trailing_zeros()
            } else {
                src.leading_zeros() - (64 - bits)
            };
            (Some(r as u64), bit(r == 0, ZF) | bit(src == 0, CF))
        }
        _ => {
            // POPCNT: all flags cleared but ZF, which says the source was 0.
            let r = src.count_ones() as u64;
            (Some(r), if src == 0 { ZF } else { 0 })
        }
    }
}

/// Flag bit `flag` if `cond`, else 0.
#[inline(always)]
fn bit(cond: bool, flag: u64) -> u64 {
    if cond {
        flag
    } else {
        0
    }
}

/// A BMI1 operation on operands of `size` bytes: ANDN `!a & b`, BEXTR of `a` with the
/// start:length control `b`, or BLSI/BLSMSK/BLSR of `a`. Returns the result and the status
/// flags; of the undefined ones AF and PF are cleared, as are SF after BEXTR (as on Intel).
pub(crate) fn bmi1(m: Mnemonic, a: u64, b: u64, size: usize) -> (u64, u64) {
    let mk = mask(size);
    let bits = (size * 8) as u64;
    let a = a & mk;
    let (r, cf) = match m {
        Mnemonic::Andn => (!a & b & mk, false),
        Mnemonic::Bextr => {
            let start = b & 0xff;
            let len = (b >> 8) & 0xff;
            let v = if start >= bits { 0 } else { a >> start };
            let r = if len >= 64 {
                v
            } else {
                v & ((1u64 << len) - 1)
            };
            (r & mk, false)
        }
        // Isolate the lowest set bit; CF says there was one.
        Mnemonic::Blsi => (a & a.wrapping_neg() & mk, a != 0),
        // Mask up to and including the lowest set bit; CF says there was none.
        Mnemonic::Blsmsk => ((a ^ a.wrapping_sub(1)) & mk, a == 0),
        // Clear the lowest set bit; CF says there was none.
        _ => (a & a.wrapping_sub(1) & mk, a == 0),
    };
    let mut f = szp(r, size) & (ZF | SF);
    if m == Mnemonic::Bextr {
        f &= !SF;
    }
    (r, f | bit(cf, CF))
}

/// BSWAP of a register of `size` bytes; the undefined 16-bit form gives 0.
pub(crate) fn bswap(v: u64, size: usize) -> u64 {
    match size {
        8 => v.swap_bytes(),
        4 => (v as u32).swap_bytes() as u64,
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exec::RunExit;
    use crate::fault::{vector, StopReason};
    use crate::state::rflags::{AF, OF, SF};
    use crate::testing::TestMachine;
    use iced_x86::code_asm::*;

    const BUF: u64 = 0x20_0000;

    fn run(f: impl FnOnce(&mut CodeAssembler) -> Result<(), IcedError>) -> TestMachine {
        let mut m = TestMachine::assemble(|a| {
            f(a)?;
            a.hlt()
        });
        assert_eq!(m.run(1000), RunExit::Halted);
        m
    }

    fn ram_u64(m: &TestMachine, at: u64) -> u64 {
        let at = at as usize;
        u64::from_le_bytes(m.bus.ram[at..at + 8].try_into().unwrap())
    }

    #[test]
    fn bt_register_offsets_wrap() {
        let m = run(|a| {
            a.mov(eax, 2)?;
            a.mov(ecx, 33)?;
            a.bt(eax, ecx)?; // bit 33 mod 32 = 1: set
            a.mov(ebx, 0)?;
            a.adc(ebx, 0)?; // CF into BL

            a.bts(rax, 64 + 4)?; // immediate 68 mod 64 = 4
            a.btr(ax, 17)?; // 17 mod 16 = 1
            a.btc(eax, 31)?;
            Ok(())
        });
        assert_eq!(m.cpu.state.gpr[3] & 0xff, 1);
        assert_eq!(m.cpu.state.gpr[0], 0x8000_0010);
        // BTC saw bit 31 clear.
        assert_eq!(m.cpu.state.rflags & CF, 0);
    }

    #[test]
    fn bt_memory_bit_strings() {
        let m = run(|a| {
            a.mov(rdi, BUF + 0x100)?;
            // Positive offset far beyond the operand: bit 1000 = byte 125, bit 0.
            a.mov(eax, 1000)?;
            a.bts(dword_ptr(rdi), eax)?;
            // Negative offset: bit -1 is bit 31 of the dword before.
            a.mov(rcx, -1i64)?;
            a.bts(dword_ptr(rdi), ecx)?;
            // A 64-bit negative offset: -64 is bit 0 of the qword before.
            a.mov(rdx, -64i64)?;
            a.bts(qword_ptr(rdi), rdx)?;
            // A 16-bit offset is signed too: 0xfff0 = -16, bit 0 of the word before.
            a.mov(esi, 0xfff0)?;
            a.bts(word_ptr(rdi + 0x40), si)?;
            // An immediate offset stays inside the operand: 35 mod 32 = 3.
            a.bts(dword_ptr(rdi + 0x80), 35)?;
            // BT reads back bit 1000 through a 16-bit operand (word 62, bit 8).
            a.mov(ebx, 1000)?;
            a.bt(word_ptr(rdi), bx)?;
            a.mov(ebx, 0)?;
            a.adc(bl, 0)?; // CF into BL
                           // BTC at a large offset through a 64-bit operand clears it again.
            a.mov(eax, 1000)?;
            a.btc(qword_ptr(rdi), rax)?;
            a.adc(bh, 0)?; // CF into BH
            Ok(())
        });
        let base = BUF + 0x100;
        assert_eq!(m.bus.ram[(base + 125) as usize], 0);
        assert_eq!(m.cpu.state.gpr[3] & 0xffff, 0x0101);
        assert_eq!(ram_u64(&m, base - 8), 0x8000_0000_0000_0001);
        assert_eq!(ram_u64(&m, base + 0x40 - 8), 0x0001_0000_0000_0000);
        assert_eq!(ram_u64(&m, base + 0x80), 8);
    }

    #[test]
    fn bt_flags_keep_zf_and_undefined_ones() {
        let (_, f) = bit_op(Mnemonic::Bt, 1, 0, ZF | SF | OF | AF | PF);
        assert_eq!(f, ZF | SF | OF | AF | PF | CF);
        let (r, f) = bit_op(Mnemonic::Btr, 0x10, 4, CF);
        assert_eq!((r, f), (0, CF));
        let (r, f) = bit_op(Mnemonic::Bts, 0x10, 4, CF);
        assert_eq!((r, f), (0x10, CF));
    }

    #[test]
    fn scans() {
        assert_eq!(scan(Mnemonic::Bsf, 0x18, 4), (Some(3), PF));
        assert_eq!(scan(Mnemonic::Bsr, 0x18, 4), (Some(4), 0));
        assert_eq!(scan(Mnemonic::Bsr, 1 << 63, 8), (Some(63), PF));
        assert_eq!(scan(Mnemonic::Bsf, 0, 8), (None, ZF | PF));
        // Only the operand's bits count.
        assert_eq!(scan(Mnemonic::Bsf, 0x1_0000, 2), (None, ZF | PF));
        assert_eq!(scan(Mnemonic::Lzcnt, 0, 2), (Some(16), CF));
        assert_eq!(scan(Mnemonic::Lzcnt, 1, 4), (Some(31), 0));
        assert_eq!(scan(Mnemonic::Lzcnt, 1 << 63, 8), (Some(0), ZF));
        assert_eq!(scan(Mnemonic::Tzcnt, 0, 8), (Some(64), CF));
        assert_eq!(scan(Mnemonic::Tzcnt, 0x8000, 2), (Some(15), 0));
        assert_eq!(scan(Mnemonic::Tzcnt, 1, 2), (Some(0), ZF));
        assert_eq!(scan(Mnemonic::Popcnt, 0, 4), (Some(0), ZF));
        assert_eq!(scan(Mnemonic::Popcnt, u64::MAX, 2), (Some(16), 0));
    }

    #[test]
    fn bsf_of_zero_leaves_the_whole_register() {
        let m = run(|a| {
            a.mov(rax, 0x1234_5678_9abc_def0u64)?;
            a.xor(ecx, ecx)?;
            a.bsf(eax, ecx)?;
            a.mov(rbx, 0xffu64)?;
            a.mov(edx, 0x100)?;
            a.bsr(ebx, edx)?; // 32-bit write
            Ok(())
        });
        assert_eq!(m.cpu.state.gpr[0], 0x1234_5678_9abc_def0);
        assert_eq!(m.cpu.state.gpr[3], 8);
    }

    #[test]
    fn bmi1_operations() {
        assert_eq!(bmi1(Mnemonic::Andn, 0xf0, 0xff, 4), (0x0f, 0));
        assert_eq!(bmi1(Mnemonic::Andn, u64::MAX, 0xff, 8), (0, ZF));
        // BEXTR: start 4, length 8; a start past the operand gives 0; a long length keeps all.
        assert_eq!(bmi1(Mnemonic::Bextr, 0x1234_5678, 0x0804, 4), (0x67, 0));
        assert_eq!(bmi1(Mnemonic::Bextr, 0x1234_5678, 0x0820, 4), (0, ZF));
        assert_eq!(
            bmi1(Mnemonic::Bextr, 1 << 63, 0xff00, 8),
            (1 << 63, 0) // SF is cleared after BEXTR
        );
        assert_eq!(bmi1(Mnemonic::Blsi, 0b1011000, 0, 4), (0b1000, CF));
        assert_eq!(bmi1(Mnemonic::Blsi, 0, 0, 4), (0, ZF));
        assert_eq!(bmi1(Mnemonic::Blsmsk, 0b1011000, 0, 4), (0b1111, 0));
        assert_eq!(bmi1(Mnemonic::Blsmsk, 0, 0, 4), (0xffff_ffff, CF | SF));
        assert_eq!(bmi1(Mnemonic::Blsr, 0b1011000, 0, 8), (0b1010000, 0));
        assert_eq!(bmi1(Mnemonic::Blsr, 0, 0, 8), (0, ZF | CF));
        assert_eq!(bmi1(Mnemonic::Blsr, 1 << 31, 0, 4), (0, ZF));
        let m = run(|a| {
            a.mov(ecx, 0xf0f0)?;
            a.mov(edx, 0xffff)?;
            a.andn(rax, rcx, rdx)?;
            a.mov(esi, 0x0404)?;
            a.bextr(ebx, ecx, esi)?;
            a.blsr(rdi, rcx)?;
            Ok(())
        });
        assert_eq!(m.cpu.state.gpr[0], 0x0f0f);
        assert_eq!(m.cpu.state.gpr[3], 0xf);
        assert_eq!(m.cpu.state.gpr[7], 0xf0e0);
    }

    #[test]
    fn bswap_sizes() {
        assert_eq!(bswap(0x1122_3344_5566_7788, 8), 0x8877_6655_4433_2211);
        assert_eq!(bswap(0x1122_3344, 4), 0x4433_2211);
        assert_eq!(bswap(0x1122, 2), 0);
        let m = run(|a| {
            a.mov(rax, 0x1122_3344_5566_7788u64)?;
            a.bswap(eax)?;
            a.mov(rbx, 0x1122_3344_5566_7788u64)?;
            a.db(&[0x66, 0x0f, 0xcb])?; // bswap bx
            Ok(())
        });
        assert_eq!(m.cpu.state.gpr[0], 0x8877_6655);
        assert_eq!(m.cpu.state.gpr[3], 0x1122_3344_5566_0000);
    }

    #[test]
    fn lock_on_bt_or_register_is_ud() {
        for code in [
            &[0xf0, 0x0f, 0xa3, 0x00][..], // lock bt [rax], eax
            &[0xf0, 0x0f, 0xab, 0xc0],     // lock bts eax, eax
            &[0xf0, 0x0f, 0xbc, 0xc0],     // lock bsf eax, eax
        ] {
            let mut m = TestMachine::with_code(code);
            match m.run(10) {
                RunExit::Stop(s) => match *s {
                    StopReason::TripleFault { first, .. } => assert_eq!(first.vector, vector::UD),
                    other => panic!("expected a triple fault, got {other}"),
                },
                other => panic!("expected a stop, got {other:?}"),
            }
        }
    }
}
