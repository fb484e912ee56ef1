//! The soft-float core checked against the host processor: the same operations, operands and
//! MXCSR settings (every rounding mode, FTZ, DAZ; exceptions masked) run through the host's
//! own SSE instructions, comparing result bits and the exception flags raised.

use std::arch::asm;
use std::arch::x86_64::__m128i;

use super::softfloat::{self, mxcsr, Env, Fmt, F32, F64};

fn to_m(v: u128) -> __m128i {
    // SAFETY: both are 16 plain bytes.
    unsafe { std::mem::transmute::<u128, __m128i>(v) }
}
fn from_m(v: __m128i) -> u128 {
    // SAFETY: both are 16 plain bytes.
    unsafe { std::mem::transmute::<__m128i, u128>(v) }
}

/// Define `fn $name(a, b, mxcsr) -> (result, mxcsr after)` running `$ins a, b` on the host.
macro_rules! host_xx {
    ($name:ident, $ins:literal) => {
        fn $name(a: u128, b: u128, m: u32) -> (u128, u32) {
            let mut a = to_m(a);
            let b = to_m(b);
            let mut m = m;
            let mut saved = 0u32;
            // SAFETY: the host MXCSR is saved and restored around the instruction; all
            // exceptions stay masked so nothing traps.
            unsafe {
                asm!(
                    "stmxcsr [{saved}]",
                    "ldmxcsr [{m}]",
                    concat!($ins, " {a}, {b}"),
                    "stmxcsr [{m}]",
                    "ldmxcsr [{saved}]",
                    saved = in(reg) &mut saved,
                    m = in(reg) &mut m,
                    a = inout(xmm_reg) a,
                    b = in(xmm_reg) b,
                    options(nostack),
                );
            }
            (from_m(a), m)
        }
    };
}

/// Define `fn $name(a, mxcsr) -> (integer, mxcsr after)` running `$ins r, a` on the host.
macro_rules! host_rx {
    ($name:ident, $ins:literal) => {
        fn $name(a: u128, m: u32) -> (u64, u32) {
            let a = to_m(a);
            let mut m = m;
            let mut saved = 0u32;
            let r: u64;
            // SAFETY: as in `host_xx`.
            unsafe {
                asm!(
                    "stmxcsr [{saved}]",
                    "ldmxcsr [{m}]",
                    $ins,
                    "stmxcsr [{m}]",
                    "ldmxcsr [{saved}]",
                    saved = in(reg) &mut saved,
                    m = in(reg) &mut m,
                    a = in(xmm_reg) a,
                    r = out(reg) r,
                    options(nostack),
                );
            }
            (r, m)
        }
    };
}

/// Define `fn $name(v, mxcsr) -> (xmm, mxcsr after)` running `$ins x, r` on the host.
macro_rules! host_xr {
    ($name:ident, $ins:literal) => {
        fn $name(v: u64, m: u32) -> (u128, u32) {
            let mut a = to_m(0);
            let mut m = m;
            let mut saved = 0u32;
            // SAFETY: as in `host_xx`.
            unsafe {
                asm!(
                    "stmxcsr [{saved}]",
                    "ldmxcsr [{m}]",
                    $ins,
                    "stmxcsr [{m}]",
                    "ldmxcsr [{saved}]",
                    saved = in(reg) &mut saved,
                    m = in(reg) &mut m,
                    a = inout(xmm_reg) a,
                    r = in(reg) v,
                    options(nostack),
                );
            }
            (from_m(a), m)
        }
    };
}

/// Define `fn $name(a, b, mxcsr) -> (rflags, mxcsr after)` running `$ins a, b` on the host.
macro_rules! host_flags {
    ($name:ident, $ins:literal) => {
        fn $name(a: u128, b: u128, m: u32) -> (u64, u32) {
            let a = to_m(a);
            let b = to_m(b);
            let mut m = m;
            let mut saved = 0u32;
            let f: u64;
            // SAFETY: as in `host_xx`; PUSHFQ/POP use the stack balanced.
            unsafe {
                asm!(
                    "stmxcsr [{saved}]",
                    "ldmxcsr [{m}]",
                    concat!($ins, " {a}, {b}"),
                    "pushfq",
                    "pop {f}",
                    "stmxcsr [{m}]",
                    "ldmxcsr [{saved}]",
                    saved = in(reg) &mut saved,
                    m = in(reg) &mut m,
                    a = in(xmm_reg) a,
                    b = in(xmm_reg) b,
                    f = out(reg) f,
                );
            }
            (f, m)
        }
    };
}

host_xx!(h_addsd, "addsd");
host_xx!(h_subsd, "subsd");
host_xx!(h_mulsd, "mulsd");
host_xx!(h_divsd, "divsd");
host_xx!(h_sqrtsd, "sqrtsd");
host_xx!(h_minsd, "minsd");
host_xx!(h_maxsd, "maxsd");
host_xx!(h_addss, "addss");
host_xx!(h_subss, "subss");
host_xx!(h_mulss, "mulss");
host_xx!(h_divss, "divss");
host_xx!(h_sqrtss, "sqrtss");
host_xx!(h_minss, "minss");
host_xx!(h_maxss, "maxss");
host_xx!(h_cvtsd2ss, "cvtsd2ss");
host_xx!(h_cvtss2sd, "cvtss2sd");
host_xx!(h_cmpsd0, "cmpeqsd");
host_xx!(h_cmpsd1, "cmpltsd");
host_xx!(h_cmpsd2, "cmplesd");
host_xx!(h_cmpsd3, "cmpunordsd");
host_xx!(h_cmpsd4, "cmpneqsd");
host_xx!(h_cmpsd5, "cmpnltsd");
host_xx!(h_cmpsd6, "cmpnlesd");
host_xx!(h_cmpsd7, "cmpordsd");
host_rx!(h_cvtsd2si64, "cvtsd2si {r}, {a}");
host_rx!(h_cvttsd2si64, "cvttsd2si {r}, {a}");
host_rx!(h_cvtsd2si32, "cvtsd2si {r:e}, {a}");
host_rx!(h_cvttsd2si32, "cvttsd2si {r:e}, {a}");
host_rx!(h_cvtss2si64, "cvtss2si {r}, {a}");
host_rx!(h_cvttss2si32, "cvttss2si {r:e}, {a}");
host_xr!(h_cvtsi2sd64, "cvtsi2sd {a}, {r}");
host_xr!(h_cvtsi2ss64, "cvtsi2ss {a}, {r}");
host_xr!(h_cvtsi2ss32, "cvtsi2ss {a}, {r:e}");
host_flags!(h_ucomisd, "ucomisd");
host_flags!(h_comiss, "comiss");

/// A small deterministic generator (xorshift64*).
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

/// Operands that exercise the corners: zeros, denormals, the normal range's ends, values
/// whose results round across the normal/denormal and finite/infinite boundaries, NaNs.
fn operands(f: Fmt, rng: &mut Rng, random: usize) -> Vec<u64> {
    let (eb, fb) = if f == F32 { (8u32, 23u32) } else { (11, 52) };
    let emax = (1u64 << eb) - 1;
    let bias = emax / 2;
    let frac = (1u64 << fb) - 1;
    let make = |s: u64, e: u64, m: u64| (s << (eb + fb)) | (e << fb) | (m & frac);
    let mut v = Vec::new();
    for s in 0..2 {
        for (e, m) in [
            (0, 0),
            (0, 1),
            (0, 2),
            (0, frac),
            (0, frac >> 1),
            (1, 0),
            (1, 1),
            (1, frac),
            (2, 0),
            (bias, 0),
            (bias, 1 << (fb - 1)),
            (bias, frac),
            (bias, 0x5555_5555_5555_5555),
            (bias + 1, 0),
            (bias - 1, 3),
            (bias + fb as u64, 7),
            (bias + 31, 0),
            (bias + 63, 0),
            (bias + 64, 1),
            (emax - 1, frac),
            (emax - 1, 0),
            (emax - 2, 1),
            (emax, 0),
            (emax, 1),
            (emax, 1 << (fb - 1)),
            (emax, (1 << (fb - 1)) | 0x1234),
        ] {
            v.push(make(s, e, m));
        }
    }
    for _ in 0..random {
        let r = rng.next();
        let s = r & 1;
        let e = match (r >> 1) % 8 {
            0 => (r >> 8) % 4,
            1 => emax - 1 - (r >> 8) % 4,
            2 => bias + (r >> 8) % 70 - 35,
            3 => bias / 2 + (r >> 8) % 8,
            4 => bias + bias / 2 + (r >> 8) % 8,
            5 => 0,
            _ => (r >> 8) % emax,
        };
        let m = match (r >> 20) % 4 {
            0 => rng.next(),
            1 => rng.next() << (fb - 3),
            2 => frac ^ ((rng.next() % 8) << ((r >> 24) % fb as u64)),
            _ => rng.next() >> ((r >> 30) % 64),
        };
        v.push(make(s, e, m));
    }
    v
}

/// The MXCSR settings to check: all exceptions masked, every rounding mode, FTZ and DAZ.
fn settings() -> Vec<u32> {
    let mut out = Vec::new();
    for rc in 0..4u32 {
        for extra in [0, mxcsr::FTZ, mxcsr::DAZ, mxcsr::FTZ | mxcsr::DAZ] {
            out.push(0x1f80 | rc << mxcsr::RC_SHIFT | extra);
        }
    }
    out
}

/// A host instruction with two XMM operands.
type HostXx = fn(u128, u128, u32) -> (u128, u32);
/// A host instruction from a general register to XMM.
type HostXr = fn(u64, u32) -> (u128, u32);

/// Result lane masks.
const M32: u128 = 0xffff_ffff;
const M64: u128 = u64::MAX as u128;

/// Compare a two-operand scalar operation over all operand pairs and settings.
fn check_binary(
    f: Fmt,
    out_mask: u128,
    name: &str,
    host: impl Fn(u128, u128, u32) -> (u128, u32),
    soft: impl Fn(&mut Env, u64, u64) -> u64,
    random: usize,
) {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ name.len() as u64);
    let vals = operands(f, &mut rng, random);
    let mut failures = Vec::new();
    for m in settings() {
        for &a in &vals {
            for &b in &vals {
                let (hr, hm) = host(a as u128, b as u128, m);
                let mut env = Env::new(m);
                let sr = soft(&mut env, a, b);
                let (hr, hf) = ((hr & out_mask) as u64, hm & mxcsr::FLAGS);
                if hr != sr || hf != env.flags {
                    failures.push(format!(
                        "{name} mxcsr={m:#x} a={a:#x} b={b:#x}: host {hr:#x} flags {hf:#x}, \
                         soft {sr:#x} flags {:#x}",
                        env.flags
                    ));
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} mismatches, first:\n{}",
        failures.len(),
        failures[..failures.len().min(20)].join("\n")
    );
}

#[test]
fn f64_arithmetic_matches_host() {
    use softfloat::*;
    check_binary(
        F64,
        M64,
        "addsd",
        h_addsd,
        |e, a, b| add(F64, e, a, b, false),
        120,
    );
    check_binary(
        F64,
        M64,
        "subsd",
        h_subsd,
        |e, a, b| add(F64, e, a, b, true),
        120,
    );
    check_binary(F64, M64, "mulsd", h_mulsd, |e, a, b| mul(F64, e, a, b), 120);
    check_binary(F64, M64, "divsd", h_divsd, |e, a, b| div(F64, e, a, b), 120);
    check_binary(F64, M64, "sqrtsd", h_sqrtsd, |e, _, b| sqrt(F64, e, b), 120);
    check_binary(
        F64,
        M64,
        "minsd",
        h_minsd,
        |e, a, b| min_max(F64, e, a, b, false),
        60,
    );
    check_binary(
        F64,
        M64,
        "maxsd",
        h_maxsd,
        |e, a, b| min_max(F64, e, a, b, true),
        60,
    );
}

#[test]
fn f32_arithmetic_matches_host() {
    use softfloat::*;
    check_binary(
        F32,
        M32,
        "addss",
        h_addss,
        |e, a, b| add(F32, e, a, b, false),
        120,
    );
    check_binary(
        F32,
        M32,
        "subss",
        h_subss,
        |e, a, b| add(F32, e, a, b, true),
        120,
    );
    check_binary(F32, M32, "mulss", h_mulss, |e, a, b| mul(F32, e, a, b), 120);
    check_binary(F32, M32, "divss", h_divss, |e, a, b| div(F32, e, a, b), 120);
    check_binary(F32, M32, "sqrtss", h_sqrtss, |e, _, b| sqrt(F32, e, b), 120);
    check_binary(
        F32,
        M32,
        "minss",
        h_minss,
        |e, a, b| min_max(F32, e, a, b, false),
        60,
    );
    check_binary(
        F32,
        M32,
        "maxss",
        h_maxss,
        |e, a, b| min_max(F32, e, a, b, true),
        60,
    );
}

#[test]
fn comparisons_match_host() {
    let preds: [HostXx; 8] = [
        h_cmpsd0, h_cmpsd1, h_cmpsd2, h_cmpsd3, h_cmpsd4, h_cmpsd5, h_cmpsd6, h_cmpsd7,
    ];
    for (p, host) in preds.into_iter().enumerate() {
        check_binary(
            F64,
            M64,
            "cmpsd",
            host,
            move |e, a, b| {
                if super::float::compare_pred(F64, e, a, b, p as u8) {
                    u64::MAX
                } else {
                    0
                }
            },
            40,
        );
    }
    let flags = |ord: Option<std::cmp::Ordering>| -> u64 {
        use crate::state::rflags::{CF, PF, ZF};
        match ord {
            None => ZF | PF | CF,
            Some(std::cmp::Ordering::Less) => CF,
            Some(std::cmp::Ordering::Equal) => ZF,
            Some(std::cmp::Ordering::Greater) => 0,
        }
    };
    let status = crate::state::rflags::STATUS;
    check_binary(
        F64,
        M64,
        "ucomisd",
        |a, b, m| {
            let (f, m) = h_ucomisd(a, b, m);
            ((f & status) as u128, m)
        },
        |e, a, b| flags(softfloat::compare(F64, e, a, b, false)),
        60,
    );
    check_binary(
        F32,
        M32,
        "comiss",
        |a, b, m| {
            let (f, m) = h_comiss(a, b, m);
            ((f & status) as u128, m)
        },
        |e, a, b| flags(softfloat::compare(F32, e, a, b, true)),
        60,
    );
}

#[test]
fn conversions_match_host() {
    use softfloat::*;
    check_binary(
        F64,
        M32,
        "cvtsd2ss",
        h_cvtsd2ss,
        |e, _, b| convert(F64, F32, e, b),
        200,
    );
    check_binary(
        F32,
        M64,
        "cvtss2sd",
        h_cvtss2sd,
        |e, _, b| convert(F32, F64, e, b),
        200,
    );
    type ToInt = fn(u128, u32) -> (u64, u32);
    let cases: [(&str, Fmt, ToInt, u32, bool); 6] = [
        ("cvtsd2si64", F64, h_cvtsd2si64, 64, false),
        ("cvttsd2si64", F64, h_cvttsd2si64, 64, true),
        ("cvtsd2si32", F64, h_cvtsd2si32, 32, false),
        ("cvttsd2si32", F64, h_cvttsd2si32, 32, true),
        ("cvtss2si64", F32, h_cvtss2si64, 64, false),
        ("cvttss2si32", F32, h_cvttss2si32, 32, true),
    ];
    for (name, f, host, bits, trunc) in cases {
        check_binary(
            f,
            M64,
            name,
            move |_, b, m| {
                let (r, m) = host(b, m);
                let r = if bits == 32 { r & 0xffff_ffff } else { r };
                (r as u128, m)
            },
            move |e, _, b| {
                let mut env = if trunc { e.with_round(Round::Zero) } else { *e };
                let r = to_int(f, &mut env, b, bits);
                e.flags = env.flags;
                r
            },
            150,
        );
    }
}

#[test]
fn integer_to_float_matches_host() {
    let mut rng = Rng(77);
    let mut ints: Vec<u64> = vec![0, 1, u64::MAX, 1 << 63, (1 << 63) - 1, 1 << 31, 0x7fff_ffff];
    for _ in 0..3000 {
        let r = rng.next();
        ints.push(r >> (r % 64));
        ints.push((r >> (r % 64)).wrapping_neg());
    }
    for m in settings() {
        for &v in &ints {
            let checks: [(Fmt, HostXr, i64); 3] = [
                (F64, h_cvtsi2sd64, v as i64),
                (F32, h_cvtsi2ss64, v as i64),
                (F32, h_cvtsi2ss32, v as u32 as i32 as i64),
            ];
            for (f, host, iv) in checks {
                let (hr, hm) = host(v, m);
                let mut env = Env::new(m);
                let sr = softfloat::from_int(f, &mut env, iv);
                let lane = if f == F32 { 0xffff_ffff } else { u64::MAX };
                assert_eq!(
                    ((hr as u64) & lane, hm & mxcsr::FLAGS),
                    (sr, env.flags),
                    "int {v:#x} to {f:?} under {m:#x}"
                );
            }
        }
    }
}

/// Random XMM values rich in lane-level corner cases: zeros, all-ones, sign bits, small
/// integers (shift counts), and float specials in both single and double lanes.
fn xmm_value(rng: &mut Rng) -> u128 {
    let mut v = 0u128;
    for q in 0..2 {
        let r = rng.next();
        let qword = match r % 8 {
            0 => [
                0u64,
                1,
                u64::MAX,
                1 << 63,
                0x7ff8_0000_0000_0000,
                0x7ff0_0000_0000_0001,
            ][(r >> 8) as usize % 6],
            1 => [1.0f64, -2.5, 1e300, -1e-310, 0.1, 3.0][(r >> 8) as usize % 6].to_bits(),
            2 => (r >> 8) % 40,
            _ => {
                let mut d = [0u32; 2];
                for x in d.iter_mut() {
                    let s = rng.next();
                    *x = match s % 8 {
                        0 => [
                            0u32,
                            u32::MAX,
                            0x8000_0000,
                            0x7fff_ffff,
                            0x80,
                            0x7f,
                            0xff00_ff00,
                        ][(s >> 8) as usize % 7],
                        1 => [1.0f32, -0.0, f32::NAN, 1e-40, 3e38, -7.25, 0.3]
                            [(s >> 8) as usize % 7]
                            .to_bits(),
                        2 => 0x7f80_0001, // signalling NaN
                        3 => (s >> 8) as u32 % 300,
                        _ => (s >> 16) as u32,
                    };
                }
                d[0] as u64 | (d[1] as u64) << 32
            }
        };
        v |= (qword as u128) << (64 * q);
    }
    v
}

/// Define a case: the host running `op xmm_a, xmm_b[, imm]` and the same instruction
/// assembled for the emulator.
macro_rules! case {
    ($op:ident $(, $imm:literal)?) => {{
        fn host(a: u128, b: u128, m: u32) -> (u128, u32) {
            let mut a = to_m(a);
            let b = to_m(b);
            let mut m = m;
            let mut saved = 0u32;
            // SAFETY: as in `host_xx`.
            unsafe {
                asm!(
                    "stmxcsr [{saved}]",
                    "ldmxcsr [{m}]",
                    concat!(stringify!($op), " {a}, {b}" $(, ", ", stringify!($imm))?),
                    "stmxcsr [{m}]",
                    "ldmxcsr [{saved}]",
                    saved = in(reg) &mut saved,
                    m = in(reg) &mut m,
                    a = inout(xmm_reg) a,
                    b = in(xmm_reg) b,
                    options(nostack),
                );
            }
            (from_m(a), m)
        }
        fn emit(c: &mut iced_x86::code_asm::CodeAssembler) -> Result<(), iced_x86::IcedError> {
            use iced_x86::code_asm::*;
            c.$op(xmm0, xmm1 $(, $imm)?)
        }
        (stringify!($op), host as HostXx, emit as Emit)
    }};
}

/// Emit one instruction with the assembler.
type Emit = fn(&mut iced_x86::code_asm::CodeAssembler) -> Result<(), iced_x86::IcedError>;

/// Run each case on the emulator and on the host over many operand pairs and MXCSR settings;
/// compare XMM0 and MXCSR.
fn check_instructions(cases: &[(&str, HostXx, Emit)], pairs: usize) {
    use crate::exec::RunExit;
    use crate::testing::{TestMachine, CODE_BASE};
    let mut failures = Vec::new();
    for &(name, host, emit) in cases {
        let mut machine = TestMachine::assemble(|c| {
            emit(c)?;
            c.hlt()
        });
        let mut rng = Rng(0x1234_5678 ^ (name.len() as u64 * 977));
        let configs = settings();
        for n in 0..pairs {
            let (a, b) = (xmm_value(&mut rng), xmm_value(&mut rng));
            let m = configs[n % configs.len()];
            let (want, want_m) = host(a, b, m);
            let s = &mut machine.cpu.state;
            s.xmm[0] = a;
            s.xmm[1] = b;
            s.mxcsr = m;
            s.rip = CODE_BASE;
            s.halted = false;
            let exit = machine.run(10);
            let s = &machine.cpu.state;
            if exit != RunExit::Halted || s.xmm[0] != want || s.mxcsr != want_m {
                failures.push(format!(
                    "{name} a={a:#034x} b={b:#034x} mxcsr={m:#x}: host {want:#034x} \
                     mxcsr {want_m:#x}, emulator {:#034x} mxcsr {:#x} ({exit:?})",
                    s.xmm[0], s.mxcsr
                ));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} mismatches, first:\n{}",
        failures.len(),
        failures[..failures.len().min(20)].join("\n")
    );
}

#[test]
fn integer_instructions_match_host() {
    let cases = [
        case!(pxor),
        case!(por),
        case!(pand),
        case!(pandn),
        case!(andps),
        case!(andnpd),
        case!(orps),
        case!(xorpd),
        case!(pcmpeqb),
        case!(pcmpeqw),
        case!(pcmpeqd),
        case!(pcmpgtb),
        case!(pcmpgtw),
        case!(pcmpgtd),
        case!(pminub),
        case!(pmaxub),
        case!(pminsw),
        case!(pmaxsw),
        case!(paddb),
        case!(paddw),
        case!(paddd),
        case!(paddq),
        case!(psubb),
        case!(psubw),
        case!(psubd),
        case!(psubq),
        case!(paddusb),
        case!(paddusw),
        case!(psubusb),
        case!(psubusw),
        case!(paddsb),
        case!(paddsw),
        case!(psubsb),
        case!(psubsw),
        case!(pshufd, 0x1b),
        case!(pshufd, 0xe4),
        case!(pshuflw, 0x93),
        case!(pshufhw, 0x4e),
        case!(punpcklbw),
        case!(punpcklwd),
        case!(punpckldq),
        case!(punpcklqdq),
        case!(punpckhbw),
        case!(punpckhwd),
        case!(punpckhdq),
        case!(punpckhqdq),
        case!(packuswb),
        case!(packsswb),
        case!(packssdw),
        case!(psllw),
        case!(pslld),
        case!(psllq),
        case!(psrlw),
        case!(psrld),
        case!(psrlq),
        case!(psraw),
        case!(psrad),
        case!(pmullw),
        case!(pmulhw),
        case!(pmulhuw),
        case!(pmuludq),
        case!(pmaddwd),
        case!(psadbw),
        case!(pavgb),
        case!(pavgw),
        case!(shufps, 0x4e),
        case!(shufps, 0xb1),
        case!(shufpd, 1),
        case!(shufpd, 2),
        case!(unpcklps),
        case!(unpckhps),
        case!(unpcklpd),
        case!(unpckhpd),
        case!(movhlps),
        case!(movlhps),
        case!(movss),
        case!(movq),
        case!(movaps),
        case!(movdqu),
    ];
    check_instructions(&cases, 400);
}

#[test]
fn float_instructions_match_host() {
    let cases = [
        case!(addps),
        case!(addpd),
        case!(addss),
        case!(addsd),
        case!(subps),
        case!(subpd),
        case!(subss),
        case!(subsd),
        case!(mulps),
        case!(mulpd),
        case!(mulss),
        case!(mulsd),
        case!(divps),
        case!(divpd),
        case!(divss),
        case!(divsd),
        case!(sqrtps),
        case!(sqrtpd),
        case!(sqrtss),
        case!(sqrtsd),
        case!(minps),
        case!(minpd),
        case!(minss),
        case!(minsd),
        case!(maxps),
        case!(maxpd),
        case!(maxss),
        case!(maxsd),
        case!(cmpps, 0),
        case!(cmpps, 1),
        case!(cmpps, 2),
        case!(cmpps, 3),
        case!(cmpps, 4),
        case!(cmpps, 5),
        case!(cmpps, 6),
        case!(cmpps, 7),
        case!(cmppd, 1),
        case!(cmppd, 4),
        case!(cmpss, 2),
        case!(cmpss, 7),
        case!(cvtdq2ps),
        case!(cvtdq2pd),
        case!(cvtps2pd),
        case!(cvtpd2ps),
        case!(cvtps2dq),
        case!(cvttps2dq),
        case!(cvtpd2dq),
        case!(cvttpd2dq),
        case!(cvtss2sd),
        case!(cvtsd2ss),
    ];
    check_instructions(&cases, 600);
}

#[test]
#[ignore = "timing only"]
fn soft_float_speed() {
    let mut rng = Rng(5);
    let vals: Vec<u64> = (0..4096)
        .map(|_| (1.0 + (rng.next() >> 12) as f64 / 1e6).to_bits())
        .collect();
    for m in [0x1f80, 0x1f80 | mxcsr::PE] {
        let t = std::time::Instant::now();
        let mut acc = 0u64;
        for _ in 0..100 {
            for w in vals.windows(2) {
                let mut env = Env::new(m);
                acc ^= softfloat::add(F64, &mut env, w[0], w[1], false);
                acc ^= softfloat::mul(F64, &mut env, w[0], w[1]);
                acc ^= softfloat::div(F64, &mut env, w[0], w[1]);
                acc ^= softfloat::sqrt(F64, &mut env, w[0]);
            }
        }
        let per = t.elapsed().as_nanos() as f64 / (100.0 * 4095.0 * 4.0);
        eprintln!("mxcsr {m:#x}: {per:.1} ns per op ({acc:x})");
    }
}
