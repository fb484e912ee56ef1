//! Instruction-level tests of the SSE module on the test machine, with known values.

use iced_x86::code_asm::*;
use iced_x86::{Code, IcedError};

use super::softfloat::mxcsr;
use crate::exec::RunExit;
use crate::state::{cr0, cr4, rflags};
use crate::testing::TestMachine;

/// A 16-byte aligned scratch address in the test machine's RAM.
const DATA: u64 = 0x20_0000;

/// Assemble, preset state with `setup`, run to HLT and return the machine.
fn run_with(
    setup: impl FnOnce(&mut TestMachine),
    code: impl FnOnce(&mut CodeAssembler) -> Result<(), IcedError>,
) -> TestMachine {
    let mut m = TestMachine::assemble(code);
    setup(&mut m);
    let exit = m.run(1000);
    assert_eq!(exit, RunExit::Halted, "machine did not halt");
    m
}

/// Assemble and run to HLT.
fn run(code: impl FnOnce(&mut CodeAssembler) -> Result<(), IcedError>) -> TestMachine {
    run_with(|_| {}, code)
}

/// Assemble, preset, run, and return the text of the stop (a triple fault without an IDT).
fn stop_text(
    setup: impl FnOnce(&mut TestMachine),
    code: impl FnOnce(&mut CodeAssembler) -> Result<(), IcedError>,
) -> String {
    let mut m = TestMachine::assemble(code);
    setup(&mut m);
    match m.run(1000) {
        RunExit::Stop(s) => s.to_string(),
        other => panic!("expected a stop, got {other:?}"),
    }
}

fn put(m: &mut TestMachine, addr: u64, bytes: &[u8]) {
    m.bus.ram[addr as usize..addr as usize + bytes.len()].copy_from_slice(bytes);
}

fn get16(m: &TestMachine, addr: u64) -> u128 {
    let mut b = [0u8; 16];
    b.copy_from_slice(&m.bus.ram[addr as usize..addr as usize + 16]);
    u128::from_le_bytes(b)
}

fn f64x2(lo: f64, hi: f64) -> u128 {
    lo.to_bits() as u128 | (hi.to_bits() as u128) << 64
}

fn f32x4(v: [f32; 4]) -> u128 {
    v.iter()
        .enumerate()
        .fold(0, |r, (k, x)| r | (x.to_bits() as u128) << (32 * k))
}

#[test]
fn claims_only_legacy_xmm_forms() {
    let codes: Vec<Code> = iced_x86::Code::values()
        .filter(|&c| super::claims(c))
        .collect();
    assert_eq!(codes.len(), 196);
    for c in &codes {
        let name = format!("{c:?}");
        assert!(
            !name.starts_with("VEX_") && !name.starts_with("EVEX_"),
            "{name}"
        );
        assert!(!name.contains("_mm_") && !name.ends_with("_mm"), "{name}");
    }
    assert!(!super::claims(Code::Movsd_m32_m32));
    assert!(!super::claims(Code::Cmpsd_m32_m32));
    assert!(!super::claims(Code::Pxor_mm_mmm64));
    assert!(super::claims(Code::Pxor_xmm_xmmm128));
    assert!(super::claims(Code::Movsd_xmm_xmmm64));
}

#[test]
fn strlen_style_zero_byte_search() {
    let mut m = run_with(
        |m| put(m, DATA, b"hello, world!\0xy"),
        |a| {
            a.mov(rdi, DATA)?;
            a.pxor(xmm0, xmm0)?;
            a.movdqa(xmm1, xmmword_ptr(rdi))?;
            a.pcmpeqb(xmm1, xmm0)?;
            a.pmovmskb(eax, xmm1)?;
            a.movdqu(xmm2, xmmword_ptr(rdi + 1))?;
            a.pminub(xmm2, xmmword_ptr(rdi))?;
            a.pmovmskb(rcx, xmm2)?;
            a.hlt()
        },
    );
    let s = &mut m.cpu.state;
    assert_eq!(s.gpr[0], 1 << 13);
    // min('e', 'h'); byte 15 of the unaligned load is beyond the string (zero RAM).
    assert_eq!(s.xmm[2] & 0xff, b'e' as u128);
    assert_eq!(s.gpr[1], 0);
}

#[test]
fn cvtsi2sd_then_divsd() {
    let m = run(|a| {
        a.mov(eax, 1)?;
        a.cvtsi2sd(xmm0, eax)?;
        a.mov(rax, 3u64)?;
        a.cvtsi2sd(xmm1, rax)?;
        a.divsd(xmm0, xmm1)?;
        a.cvttsd2si(ecx, xmm1)?;
        a.hlt()
    });
    let s = &m.cpu.state;
    assert_eq!(s.xmm[0] as u64, (1.0f64 / 3.0).to_bits());
    assert_eq!(s.mxcsr, 0x1f80 | mxcsr::PE);
    assert_eq!(s.gpr[1], 3);
}

#[test]
fn ucomisd_with_nan_is_unordered() {
    let m = run_with(
        |m| m.cpu.state.rflags |= rflags::OF | rflags::SF | rflags::AF,
        |a| {
            a.mov(rax, 0x7ff8_0000_0000_0000u64)?;
            a.movq(xmm0, rax)?;
            a.mov(rax, 1.5f64.to_bits())?;
            a.movq(xmm1, rax)?;
            a.ucomisd(xmm1, xmm0)?;
            a.hlt()
        },
    );
    let f = m.cpu.state.rflags & rflags::STATUS;
    assert_eq!(f, rflags::ZF | rflags::PF | rflags::CF);
    // A quiet NaN does not make UCOMISD invalid; COMISD would be.
    assert_eq!(m.cpu.state.mxcsr, 0x1f80);
}

#[test]
fn comisd_orders_and_flags_invalid_on_qnan() {
    let m = run_with(
        |m| {
            m.cpu.state.xmm[0] = f64x2(1.0, 0.0);
            m.cpu.state.xmm[1] = f64x2(2.0, 0.0);
            m.cpu.state.xmm[2] = f64x2(f64::NAN, 0.0);
        },
        |a| {
            a.comisd(xmm0, xmm1)?;
            a.hlt()
        },
    );
    assert_eq!(m.cpu.state.rflags & rflags::STATUS, rflags::CF);
    assert_eq!(m.cpu.state.mxcsr, 0x1f80);
    let m = run_with(
        |m| m.cpu.state.xmm[2] = f64x2(f64::NAN, 0.0),
        |a| {
            a.comisd(xmm0, xmm2)?;
            a.hlt()
        },
    );
    let unordered = rflags::ZF | rflags::PF | rflags::CF;
    assert_eq!(m.cpu.state.rflags & rflags::STATUS, unordered);
    assert_eq!(m.cpu.state.mxcsr & mxcsr::FLAGS, mxcsr::IE);
}

#[test]
fn movdqa_misaligned_is_gp() {
    let text = stop_text(
        |_| {},
        |a| {
            a.mov(rdi, DATA + 8)?;
            a.movdqa(xmm0, xmmword_ptr(rdi))?;
            a.hlt()
        },
    );
    assert!(
        text.contains("triple fault") && text.contains("#GP(0x0)"),
        "{text}"
    );
    assert!(text.contains("movdqa"), "{text}");
    // Arithmetic with an m128 operand also requires alignment; the U forms do not.
    let text = stop_text(
        |_| {},
        |a| {
            a.mov(rdi, DATA + 4)?;
            a.movups(xmm0, xmmword_ptr(rdi))?;
            a.addps(xmm0, xmmword_ptr(rdi))?;
            a.hlt()
        },
    );
    assert!(text.contains("#GP") && text.contains("addps"), "{text}");
}

#[test]
fn disabled_sse_is_ud_and_ts_is_nm() {
    let code = |a: &mut CodeAssembler| {
        a.xorps(xmm0, xmm0)?;
        a.hlt()
    };
    let text = stop_text(|m| m.cpu.state.cr4 &= !cr4::OSFXSR, code);
    assert!(text.contains("#UD"), "{text}");
    let text = stop_text(|m| m.cpu.state.cr0 |= cr0::EM, code);
    assert!(text.contains("#UD"), "{text}");
    let text = stop_text(|m| m.cpu.state.cr0 |= cr0::TS, code);
    assert!(text.contains("#NM"), "{text}");
    // MOVNTI is a plain integer store: CR0.TS does not matter.
    let m = run_with(
        |m| m.cpu.state.cr0 |= cr0::TS,
        |a| {
            a.mov(rax, 0x1234_5678_9abc_def0u64)?;
            a.movnti(qword_ptr(DATA), rax)?;
            a.hlt()
        },
    );
    assert_eq!(get16(&m, DATA) as u64, 0x1234_5678_9abc_def0);
}

#[test]
fn scalar_moves_zero_or_merge() {
    let m = run_with(
        |m| {
            put(m, DATA, &0x1122_3344_5566_7788u64.to_le_bytes());
            for r in 0..4 {
                m.cpu.state.xmm[r] = u128::MAX;
            }
            m.cpu.state.xmm[5] = 0xaaaa_bbbb_cccc_dddd;
        },
        |a| {
            a.movss(xmm0, dword_ptr(DATA))?;
            a.movsd_2(xmm1, qword_ptr(DATA))?;
            a.movss(xmm2, xmm5)?;
            a.movsd_2(xmm3, xmm5)?;
            a.movq(xmm4, xmm5)?;
            a.movd(xmm6, dword_ptr(DATA))?;
            a.movss(dword_ptr(DATA + 16), xmm5)?;
            a.hlt()
        },
    );
    let s = &m.cpu.state;
    assert_eq!(s.xmm[0], 0x5566_7788);
    assert_eq!(s.xmm[1], 0x1122_3344_5566_7788);
    assert_eq!(s.xmm[2], (u128::MAX << 32) | 0xcccc_dddd);
    assert_eq!(s.xmm[3], (u128::MAX << 64) | 0xaaaa_bbbb_cccc_dddd);
    assert_eq!(s.xmm[4], 0xaaaa_bbbb_cccc_dddd);
    assert_eq!(s.xmm[6], 0x5566_7788);
    assert_eq!(get16(&m, DATA + 16), 0xcccc_dddd);
}

#[test]
fn half_moves_and_gpr_moves() {
    let m = run_with(
        |m| {
            m.cpu.state.xmm[0] = 0x0000_1111_2222_3333_4444_5555_6666_7777;
            m.cpu.state.xmm[1] = 0x8888_9999_aaaa_bbbb_cccc_dddd_eeee_ffff;
            m.cpu.state.xmm[2] = m.cpu.state.xmm[0];
            m.cpu.state.xmm[3] = m.cpu.state.xmm[0];
        },
        |a| {
            a.movhlps(xmm2, xmm1)?;
            a.movlhps(xmm3, xmm1)?;
            a.movhps(qword_ptr(DATA), xmm1)?;
            a.movlps(xmm0, qword_ptr(DATA))?;
            a.movq(rax, xmm1)?;
            a.movd(ecx, xmm1)?;
            a.movmskpd(edx, xmm1)?;
            a.movmskps(ebx, xmm0)?;
            a.hlt()
        },
    );
    let s = &m.cpu.state;
    assert_eq!(s.xmm[2], 0x0000_1111_2222_3333_8888_9999_aaaa_bbbb);
    assert_eq!(s.xmm[3], 0xcccc_dddd_eeee_ffff_4444_5555_6666_7777);
    assert_eq!(s.xmm[0], 0x0000_1111_2222_3333_8888_9999_aaaa_bbbb);
    assert_eq!(s.gpr[0], 0xcccc_dddd_eeee_ffff);
    assert_eq!(s.gpr[1], 0xeeee_ffff);
    assert_eq!(s.gpr[2], 0b11);
    assert_eq!(s.gpr[3], 0b0011);
}

#[test]
fn packed_integer_arithmetic() {
    let a_val: u128 = 0x7fff_8000_0001_ffff_00ff_7f80_0102_fe01;
    let b_val: u128 = 0x0001_0001_ffff_0001_0101_0101_ff01_0203;
    let m = run_with(
        |m| {
            for r in 0..8 {
                m.cpu.state.xmm[r] = a_val;
            }
            m.cpu.state.xmm[8] = b_val;
        },
        |a| {
            a.paddw(xmm0, xmm8)?;
            a.paddsw(xmm1, xmm8)?;
            a.psubusb(xmm2, xmm8)?;
            a.pmullw(xmm3, xmm8)?;
            a.pmulhw(xmm4, xmm8)?;
            a.pcmpgtw(xmm5, xmm8)?;
            a.pmaddwd(xmm6, xmm8)?;
            a.psadbw(xmm7, xmm8)?;
            a.hlt()
        },
    );
    let s = &m.cpu.state;
    let words = |v: u128| -> Vec<u16> { (0..8).map(|k| (v >> (16 * k)) as u16).collect() };
    let (aw, bw) = (words(a_val), words(b_val));
    let paddw: Vec<u16> = aw
        .iter()
        .zip(&bw)
        .map(|(x, y)| x.wrapping_add(*y))
        .collect();
    assert_eq!(words(s.xmm[0]), paddw);
    let paddsw: Vec<u16> = aw
        .iter()
        .zip(&bw)
        .map(|(x, y)| (*x as i16).saturating_add(*y as i16) as u16)
        .collect();
    assert_eq!(words(s.xmm[1]), paddsw);
    let bytes = |v: u128| v.to_le_bytes();
    let psubusb: Vec<u8> = bytes(a_val)
        .iter()
        .zip(bytes(b_val).iter())
        .map(|(x, y)| x.saturating_sub(*y))
        .collect();
    assert_eq!(bytes(s.xmm[2]).to_vec(), psubusb);
    let pmullw: Vec<u16> = aw
        .iter()
        .zip(&bw)
        .map(|(x, y)| x.wrapping_mul(*y))
        .collect();
    assert_eq!(words(s.xmm[3]), pmullw);
    let pmulhw: Vec<u16> = aw
        .iter()
        .zip(&bw)
        .map(|(x, y)| ((*x as i16 as i32 * *y as i16 as i32) >> 16) as u16)
        .collect();
    assert_eq!(words(s.xmm[4]), pmulhw);
    let pcmpgtw: Vec<u16> = aw
        .iter()
        .zip(&bw)
        .map(|(x, y)| if (*x as i16) > (*y as i16) { 0xffff } else { 0 })
        .collect();
    assert_eq!(words(s.xmm[5]), pcmpgtw);
    for k in 0..4 {
        let p = |j: usize| aw[j] as i16 as i32 * bw[j] as i16 as i32;
        let want = p(2 * k).wrapping_add(p(2 * k + 1)) as u32;
        assert_eq!((s.xmm[6] >> (32 * k)) as u32, want);
    }
    let sad = |half: usize| -> u128 {
        (0..8)
            .map(|k| bytes(a_val)[half * 8 + k].abs_diff(bytes(b_val)[half * 8 + k]) as u128)
            .sum()
    };
    assert_eq!(s.xmm[7], sad(0) | sad(1) << 64);
}

#[test]
fn shifts_shuffles_packs_unpacks() {
    let v: u128 = 0x0f0e_0d0c_0b0a_0908_0706_0504_0302_0100;
    let m = run_with(
        |m| {
            for r in 0..16 {
                m.cpu.state.xmm[r] = v;
            }
            m.cpu.state.xmm[15] = 4; // shift count
        },
        |a| {
            a.psrldq(xmm0, 3)?;
            a.pslldq(xmm1, 17)?;
            a.psllw(xmm2, xmm15)?;
            a.psraw(xmm3, 20)?;
            a.pshufd(xmm4, xmm4, 0x1b)?;
            a.punpcklbw(xmm5, xmm14)?;
            a.packuswb(xmm6, xmm14)?;
            a.shufps(xmm7, xmm13, 0b01_00_11_10)?;
            a.pextrw(eax, xmm8, 5)?;
            a.pinsrw(xmm9, eax, 0)?;
            a.psrlq(xmm10, 64)?;
            a.pshuflw(xmm11, xmm11, 0)?;
            a.unpckhpd(xmm12, xmm14)?;
            a.hlt()
        },
    );
    let s = &m.cpu.state;
    assert_eq!(s.xmm[0], v >> 24);
    assert_eq!(s.xmm[1], 0);
    let words = |x: u128| -> Vec<u16> { (0..8).map(|k| (x >> (16 * k)) as u16).collect() };
    let want: Vec<u16> = words(v).iter().map(|w| w << 4).collect();
    assert_eq!(words(s.xmm[2]), want);
    assert_eq!(s.xmm[3], 0); // all words positive, shifted past 15 -> sign fill (0)
    assert_eq!(s.xmm[4], 0x0302_0100_0706_0504_0b0a_0908_0f0e_0d0c);
    assert_eq!(s.xmm[5], 0x0707_0606_0505_0404_0303_0202_0101_0000);
    // Words 0x0100.. are > 255: saturate to 0xff except the first (0x0100 -> 0xff too).
    assert_eq!(s.xmm[6], u128::MAX);
    assert_eq!(s.xmm[7], 0x0706_0504_0302_0100_0f0e_0d0c_0b0a_0908);
    assert_eq!(s.gpr[0], 0x0b0a);
    assert_eq!(s.xmm[9], (v & !0xffff) | 0x0b0a);
    assert_eq!(s.xmm[10], 0);
    assert_eq!(s.xmm[11], (v & !(u64::MAX as u128)) | 0x0100_0100_0100_0100);
    assert_eq!(s.xmm[12], (v >> 64) | (v >> 64) << 64);
}

#[test]
fn packed_float_arithmetic_and_compare() {
    let m = run_with(
        |m| {
            let s = &mut m.cpu.state;
            s.xmm[0] = f32x4([1.0, -2.0, 3.5, 0.0]);
            s.xmm[1] = f32x4([0.5, 4.0, f32::NAN, -0.0]);
            s.xmm[2] = s.xmm[0];
            s.xmm[3] = s.xmm[0];
            s.xmm[4] = s.xmm[0];
            s.xmm[5] = f64x2(2.0, 9.0);
            s.xmm[6] = f64x2(16.0, 0.25);
        },
        |a| {
            a.addps(xmm0, xmm1)?;
            a.minps(xmm2, xmm1)?;
            a.cmpps(xmm3, xmm1, 1)?; // LT
            a.mulps(xmm4, xmm4)?;
            a.sqrtpd(xmm6, xmm6)?;
            a.divsd(xmm5, xmm6)?;
            a.hlt()
        },
    );
    let s = &m.cpu.state;
    let lanes = |v: u128| -> [u32; 4] { [0, 1, 2, 3].map(|k| (v >> (32 * k)) as u32) };
    let add = lanes(s.xmm[0]);
    assert_eq!(add[0], 1.5f32.to_bits());
    assert_eq!(add[1], 2.0f32.to_bits());
    assert_eq!(add[2], f32::NAN.to_bits()); // the quiet NaN source propagates
    assert_eq!(add[3], 0); // +0 + -0 = +0
    let min = lanes(s.xmm[2]);
    assert_eq!(min, [0.5f32, -2.0, f32::NAN, -0.0].map(f32::to_bits));
    assert_eq!(lanes(s.xmm[3]), [0, u32::MAX, 0, 0]);
    assert_eq!(lanes(s.xmm[4]), [1.0f32, 4.0, 12.25, 0.0].map(f32::to_bits));
    assert_eq!(s.xmm[6], f64x2(4.0, 0.5));
    assert_eq!(s.xmm[5], f64x2(0.5, 9.0));
    // MINPS and CMPLTPS on a NaN raise IE.
    assert_eq!(s.mxcsr & mxcsr::FLAGS, mxcsr::IE);
}

#[test]
fn invalid_operations_give_the_negative_default_nan() {
    let m = run_with(
        |m| {
            let s = &mut m.cpu.state;
            s.xmm[0] = f64x2(f64::INFINITY, 0.0);
            s.xmm[1] = f64x2(f64::NEG_INFINITY, 0.0);
            s.xmm[2] = f32x4([0.0; 4]);
            s.xmm[3] = f32x4([0.0; 4]);
        },
        |a| {
            a.addsd(xmm0, xmm1)?;
            a.divss(xmm2, xmm3)?;
            a.hlt()
        },
    );
    let s = &m.cpu.state;
    assert_eq!(s.xmm[0] as u64, 0xfff8_0000_0000_0000);
    assert_eq!(s.xmm[2] as u32, 0xffc0_0000);
    assert_eq!(s.mxcsr & mxcsr::FLAGS, mxcsr::IE);
}

#[test]
fn conversions() {
    let m = run_with(
        |m| {
            let s = &mut m.cpu.state;
            s.xmm[0] = f64x2(1e20, 0.0);
            s.xmm[1] = f64x2(-2.5, 3.5);
            s.xmm[2] = f32x4([1.5, -1.5, 2.5, 1e10]);
            s.xmm[3] = 0x0000_0005_ffff_fffd;
            s.mxcsr = 0x1f80 | 1 << mxcsr::RC_SHIFT; // round down
        },
        |a| {
            a.cvttsd2si(eax, xmm0)?;
            a.cvtsd2si(rcx, xmm1)?;
            a.cvtps2dq(xmm4, xmm2)?;
            a.cvttpd2dq(xmm5, xmm1)?;
            a.cvtdq2pd(xmm6, xmm3)?;
            a.cvtps2pd(xmm7, xmm2)?;
            a.cvtpd2ps(xmm8, xmm1)?;
            a.cvtss2sd(xmm9, xmm2)?;
            a.hlt()
        },
    );
    let s = &m.cpu.state;
    assert_eq!(s.gpr[0], 0x8000_0000);
    assert_eq!(s.gpr[1], (-3i64) as u64);
    assert_eq!(s.xmm[4], 0x8000_0000_0000_0002_ffff_fffe_0000_0001);
    assert_eq!(s.xmm[5], 0x0000_0003_ffff_fffe);
    assert_eq!(s.xmm[6], f64x2(-3.0, 5.0));
    assert_eq!(s.xmm[7], f64x2(1.5, -1.5));
    assert_eq!(s.xmm[8], f32x4([-2.5, 3.5, 0.0, 0.0]));
    assert_eq!(s.xmm[9] as u64, 1.5f64.to_bits());
    assert_eq!(s.mxcsr & mxcsr::FLAGS, mxcsr::IE | mxcsr::PE);
}

#[test]
fn mxcsr_load_store_and_reserved_bits() {
    let m = run_with(
        |m| put(m, DATA, &0x7f80u32.to_le_bytes()),
        |a| {
            a.ldmxcsr(dword_ptr(DATA))?;
            a.stmxcsr(dword_ptr(DATA + 4))?;
            a.hlt()
        },
    );
    assert_eq!(m.cpu.state.mxcsr, 0x7f80);
    assert_eq!(get16(&m, DATA) >> 32 & 0xffff_ffff, 0x7f80);
    let text = stop_text(
        |m| put(m, DATA, &0x1_1f80u32.to_le_bytes()),
        |a| {
            a.ldmxcsr(dword_ptr(DATA))?;
            a.hlt()
        },
    );
    assert!(text.contains("#GP"), "{text}");
}

#[test]
fn unmasked_exception_is_xm_or_ud() {
    let code = |a: &mut CodeAssembler| {
        a.divsd(xmm0, xmm1)?;
        a.hlt()
    };
    let setup = |m: &mut TestMachine| {
        m.cpu.state.xmm[0] = f64x2(1.0, 0.0);
        m.cpu.state.mxcsr = 0x1f80 & !(mxcsr::ZE << mxcsr::MASK_SHIFT);
    };
    let text = stop_text(setup, code);
    assert!(text.contains("#XM"), "{text}");
    let text = stop_text(
        |m| {
            setup(m);
            m.cpu.state.cr4 &= !cr4::OSXMMEXCPT;
        },
        code,
    );
    assert!(text.contains("#UD"), "{text}");
    // Masked, the same division gives infinity and sets ZE.
    let m = run_with(|m| m.cpu.state.xmm[0] = f64x2(1.0, 0.0), code);
    assert_eq!(m.cpu.state.xmm[0], f64x2(f64::INFINITY, 0.0));
    assert_eq!(m.cpu.state.mxcsr, 0x1f80 | mxcsr::ZE);
}

#[test]
fn fxsave_fxrstor_round_trip() {
    let m = run_with(
        |m| {
            let s = &mut m.cpu.state;
            for r in 0..16 {
                s.xmm[r] = 0x0101_0101_0101_0101_0101_0101_0101_0101 * (r as u128 + 1);
            }
            s.st[3] = 0x4000_c000_0000_0000_0000;
            s.fcw = 0x27f;
            s.ftw = 0x08;
            s.mxcsr = 0x9fc0;
        },
        |a| {
            a.mov(rax, DATA)?;
            a.fxsave64(ptr(rax))?;
            a.pxor(xmm3, xmm3)?;
            a.pxor(xmm12, xmm12)?;
            a.fxrstor64(ptr(rax))?;
            a.hlt()
        },
    );
    let s = &m.cpu.state;
    assert_eq!(s.xmm[3], 0x0404_0404_0404_0404_0404_0404_0404_0404);
    assert_eq!(s.xmm[12], 0x0d0d_0d0d_0d0d_0d0d_0d0d_0d0d_0d0d_0d0d);
    assert_eq!(s.mxcsr, 0x9fc0);
    let area = |off: u64| get16(&m, DATA + off);
    assert_eq!(area(0) as u16, 0x27f);
    assert_eq!((area(0) >> 32) as u8, 0x08);
    assert_eq!((area(16) >> 64) as u32, 0x9fc0);
    assert_eq!((area(16) >> 96) as u32, 0xffff);
    assert_eq!(area(32 + 3 * 16), 0x4000_c000_0000_0000_0000);
    assert_eq!(area(160 + 15 * 16), s.xmm[15]);
}

/// Flags left in MXCSR by `op xmm0, xmm1` under `mx` (the instruction may fault).
fn flags_after(mx: u32, a: [f32; 4], b: [f32; 4], emit: Emit) -> u32 {
    let mut m = TestMachine::assemble(|c| {
        emit(c)?;
        c.hlt()
    });
    m.cpu.state.mxcsr = mx;
    m.cpu.state.xmm[0] = f32x4(a);
    m.cpu.state.xmm[1] = f32x4(b);
    m.run(10);
    m.cpu.state.mxcsr & mxcsr::FLAGS
}

type Emit = fn(&mut CodeAssembler) -> Result<(), IcedError>;

#[test]
fn unmasked_exception_flags_match_hardware() {
    // Values observed on an Intel Xeon with a SIGFPE handler reading MXCSR.
    let mulps: Emit = |c| c.mulps(xmm0, xmm1);
    let cvtps2dq: Emit = |c| c.cvtps2dq(xmm0, xmm1);
    let unmask = |e: u32| 0x1f80 & !(e << mxcsr::MASK_SHIFT);
    let p127 = f32::from_bits(0x7f00_0000);
    let one_ulp = f32::from_bits(0x3f80_0001);
    let (m63, m64) = (f32::from_bits(64 << 23), f32::from_bits(63 << 23));
    // An exact overflow: OE alone when unmasked (PE describes the unbounded rounding).
    let r = flags_after(
        unmask(mxcsr::OE),
        [1.0, 1.0, 1.0, p127],
        [1.0, 1.0, 1.0, 4.0],
        mulps,
    );
    assert_eq!(r, mxcsr::OE);
    // ... but flags of all lanes are gathered: lane 0 is inexact.
    let r = flags_after(
        unmask(mxcsr::OE),
        [1.1, 1.0, 1.0, p127],
        [1.1, 1.0, 1.0, 4.0],
        mulps,
    );
    assert_eq!(r, mxcsr::OE | mxcsr::PE);
    let r = flags_after(0x1f80, [1.0, 1.0, 1.0, p127], [1.0, 1.0, 1.0, 4.0], mulps);
    assert_eq!(r, mxcsr::OE | mxcsr::PE);
    // A tiny result with 24 significant bits: exact at full precision, inexact as a
    // denormal.
    let (a, b) = ([1.0, 1.0, 1.0, one_ulp * m63], [1.0, 1.0, 1.0, m64]);
    assert_eq!(flags_after(unmask(mxcsr::UE), a, b, mulps), mxcsr::UE);
    assert_eq!(flags_after(0x1f80, a, b, mulps), mxcsr::UE | mxcsr::PE);
    // An unmasked invalid operation stops before the precision exception of lane 1.
    let b = [f32::NAN, 1.5, 1.0, 1.0];
    assert_eq!(
        flags_after(unmask(mxcsr::IE), [0.0; 4], b, cvtps2dq),
        mxcsr::IE
    );
    assert_eq!(
        flags_after(0x1f80, [0.0; 4], b, cvtps2dq),
        mxcsr::IE | mxcsr::PE
    );
}
