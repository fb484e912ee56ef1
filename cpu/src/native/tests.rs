//! Native stretches against the interpreter: random runs of whitelisted instructions from
//! random register and flag states must end in bit-identical states (every register and
//! every RFLAGS bit) with native code on and off, run whole and one instruction at a time
//! (the budget ending inside every stretch); plus the stretch finder's cut rules.

use iced_x86::code_asm::*;
use proptest::prelude::*;

use super::{effect, stretches, Effect, Plan};
use crate::exec::RunExit;
use crate::state::rflags::{AF, CF, FIXED, OF, PF, SF, STATUS, ZF};
use crate::testing::{RecordingObserver, TestMachine};

mod memory;

const R64: [AsmRegister64; 16] = [
    rax, rcx, rdx, rbx, rsp, rbp, rsi, rdi, r8, r9, r10, r11, r12, r13, r14, r15,
];
const R32: [AsmRegister32; 16] = [
    eax, ecx, edx, ebx, esp, ebp, esi, edi, r8d, r9d, r10d, r11d, r12d, r13d, r14d, r15d,
];
const R16: [AsmRegister16; 16] = [
    ax, cx, dx, bx, sp, bp, si, di, r8w, r9w, r10w, r11w, r12w, r13w, r14w, r15w,
];
const R8: [AsmRegister8; 16] = [
    al, cl, dl, bl, spl, bpl, sil, dil, r8b, r9b, r10b, r11b, r12b, r13b, r14b, r15b,
];

/// Number of register-only instruction forms [`put`] knows (and two that cut runs).
const FORMS: u8 = 35;

/// Assemble form `f` with registers `a`, `b`, `c` (0..16) and immediate `imm`: every
/// whitelisted op at its sizes, plus a few that are not (a memory load, ROL) to cut runs.
fn put(
    x: &mut CodeAssembler,
    f: u8,
    a: usize,
    b: usize,
    c: usize,
    imm: u64,
) -> Result<(), IcedError> {
    let i32v = imm as i32;
    // RSP is no index register.
    let c = if c == 4 { 12 } else { c };
    let sh64 = (imm % 63 + 1) as u32;
    let sh32 = (imm % 31 + 1) as u32;
    match f {
        0 => x.mov(R64[a], R64[b]),
        1 => x.mov(R32[a], R32[b]),
        2 => x.mov(R64[a], imm),
        3 => x.mov(R32[a], imm as u32),
        4 => x.add(R64[a], R64[b]),
        5 => x.adc(R64[a], R64[b]),
        6 => x.sub(R32[a], R32[b]),
        7 => x.sbb(R64[a], i32v),
        8 => x.and(R64[a], R64[b]),
        9 => x.or(R32[a], i32v),
        10 => x.xor(R64[a], R64[b]),
        11 => x.cmp(R64[a], R64[b]),
        12 => x.test(R32[a], R32[b]),
        13 => x.inc(R64[a]),
        14 => x.dec(R32[a]),
        15 => x.neg(R64[a]),
        16 => x.not(R32[a]),
        17 => x.shl(R64[a], sh64),
        18 => x.shr(R32[a], sh32),
        19 => x.sar(R64[a], sh64),
        20 => x.imul_2(R64[a], R64[b]),
        21 => x.imul_3(R32[a], R32[b], i32v),
        22 => x.lea(R64[a], qword_ptr(R64[b] + R64[c] * 4 + (i32v >> 8))),
        23 => x.lea(R32[a], dword_ptr(R64[c] * 8 + 0x10)),
        24 => x.movzx(R32[a], R8[b]),
        25 => x.movsx(R64[a], R16[b]),
        26 => x.movsxd(R64[a], R32[b]),
        27 => match imm % 4 {
            0 => x.cmovb(R64[a], R64[b]),
            1 => x.cmovl(R32[a], R32[b]),
            2 => x.cmovbe(R64[a], R64[b]),
            _ => x.cmovo(R32[a], R32[b]),
        },
        28 => match imm % 4 {
            0 => x.setae(R8[a]),
            1 => x.setg(R8[a]),
            2 => x.setp(R8[a]),
            _ => x.sets(R8[a]),
        },
        29 => x.cmp(R32[a], i32v),
        30 => x.shl(R32[a], 1u32),
        31 => x.add(R64[a], i32v),
        32 => x.rol(R64[a], sh64),
        33 => match imm % 3 {
            0 => x.nop(),
            1 => x.nop_1(dword_ptr(R64[b] + 8)),
            _ => x.prefetcht0(byte_ptr(R64[b])),
        },
        34 => x.mov(R64[a], qword_ptr(0x20_0000u64)),
        // Memory forms (see `mem_program`).
        35 => x.mov(R64[a], qword_ptr(target(imm))),
        36 => x.mov(R32[a], dword_ptr(target(imm))),
        37 => x.mov(qword_ptr(target(imm)), R64[b]),
        38 => x.mov(dword_ptr(target(imm)), R32[b]),
        39 => x.mov(qword_ptr(target(imm)), i32v),
        40 => x.mov(dword_ptr(target(imm)), imm as u32),
        // Register-addressed, the register first set inside a data page.
        41 => {
            x.mov(R32[c], (imm >> 8) as u32 & 0x7f8)?;
            x.mov(R64[a], qword_ptr(R64[c] * 2 + 0x40_0000))
        }
        42 => {
            x.mov(R32[c], (imm >> 8) as u32 & 0xff8)?;
            x.mov(qword_ptr(R64[c] + 0x40_1000), R64[b])
        }
        // Extending loads of bytes and words.
        43 => match imm >> 4 & 3 {
            0 => x.movzx(R32[a], byte_ptr(target(imm))),
            1 => x.movzx(R64[a], word_ptr(target(imm))),
            2 => x.movsx(R32[a], word_ptr(target(imm))),
            _ => x.movsx(R64[a], byte_ptr(target(imm))),
        },
        // Arithmetic with a memory source.
        44 => {
            let m = target(imm);
            match imm >> 4 & 7 {
                0 => x.add(R64[a], qword_ptr(m)),
                1 => x.sub(R32[a], dword_ptr(m)),
                2 => x.adc(R64[a], qword_ptr(m)),
                3 => x.sbb(R32[a], dword_ptr(m)),
                4 => x.and(R64[a], qword_ptr(m)),
                5 => x.or(R32[a], dword_ptr(m)),
                6 => x.xor(R64[a], qword_ptr(m)),
                _ => x.cmp(R32[a], dword_ptr(m)),
            }
        }
        // Compares of memory with a register or an immediate, absolute or register-addressed.
        45 => {
            let m = target(imm);
            match imm >> 4 & 7 {
                0 => x.cmp(qword_ptr(m), R64[b]),
                1 => x.test(dword_ptr(m), R32[b]),
                2 => x.cmp(qword_ptr(m), i32v >> 8),
                3 => x.test(dword_ptr(m), imm as u32 >> 8),
                4 => x.cmp(dword_ptr(m), R32[b]),
                5 => x.test(qword_ptr(m), R64[b]),
                6 => {
                    x.mov(R32[c], (imm >> 8) as u32 & 0x7f8)?;
                    x.add(R64[a], qword_ptr(R64[c] * 2 + 0x40_0000))
                }
                _ => {
                    x.mov(R32[c], (imm >> 8) as u32 & 0xff8)?;
                    x.cmp(qword_ptr(R64[c] + 0x40_1000), R64[b])
                }
            }
        }
        // A compare of memory fused with the Jcc after it, over an ADD.
        46 => {
            let m = target(imm);
            if imm & 0x10 == 0 {
                x.cmp(qword_ptr(m), R64[b])?;
            } else {
                x.cmp(dword_ptr(m), R32[b])?;
            }
            let mut over = x.create_label();
            jcc(x, imm >> 20 & 15, over)?;
            x.add(R64[c], R64[b])?;
            x.set_label(&mut over)
        }
        // Pushes and pops with RSP first set in a data page, or at a page's start (a push
        // then crosses into the page before: a side exit), or by `pop rsp` to anything.
        STACK => {
            let top = if imm & 0x100 == 0 {
                0x40_0800 + ((imm >> 9) as u32 & 0x3f8)
            } else {
                0x40_1004u32
            };
            x.mov(esp, top)?;
            match imm % 5 {
                0 => {
                    x.push(R64[b])?;
                    x.push(R64[c])
                }
                1 => {
                    x.pop(R64[a])?;
                    x.pop(R64[c])
                }
                2 => {
                    x.push(R64[b])?;
                    x.pop(R64[a])
                }
                3 => {
                    x.push(rsp)?;
                    x.pop(R64[a])
                }
                _ => {
                    x.pop(rsp)?;
                    x.push(R64[b])
                }
            }
        }
        // CALL and RET ending stretches, with RSP first set in a data page, at a page's
        // start (the push crosses into the page before), in a page whose quick tags miss
        // for stores, a read-only page or one that is not present.
        CALLS => {
            let top: u32 = match imm >> 8 & 7 {
                0..=3 => 0x40_0800 + ((imm >> 12) as u32 & 0x3f8),
                4 => 0x40_1004,
                5 => 0x200_0800,
                6 => 0x60_0800,
                _ => 0xa0_0800,
            };
            x.mov(esp, top)?;
            match imm % 3 {
                // A call to the next instruction.
                0 => {
                    let mut next = x.create_label();
                    x.mov(R64[a], R64[b])?;
                    x.add(R64[a], i32v)?;
                    x.xor(R64[c], R64[b])?;
                    x.call(next)?;
                    x.set_label(&mut next)
                }
                // A call to a body ending in RET, which returns to a jump past it.
                1 => {
                    let (mut body, mut after) = (x.create_label(), x.create_label());
                    x.call(body)?;
                    x.jmp(after)?;
                    x.set_label(&mut body)?;
                    x.sub(R64[a], R64[b])?;
                    x.lea(R64[c], qword_ptr(R64[a] + 8))?;
                    x.adc(R64[c], i32v)?;
                    x.ret()?;
                    x.set_label(&mut after)
                }
                // A RET to an address that is not canonical (#GP at the RET), stored by a
                // block before it (the store teaches the TLB the page, so that the RET's
                // read can hit).
                _ => {
                    let mut next = x.create_label();
                    x.mov(R64[a], 0x8000_0000_0000_0000 | (imm & 0xffff))?;
                    x.mov(qword_ptr(u64::from(top - 8)), R64[a])?;
                    x.jmp(next)?;
                    x.set_label(&mut next)?;
                    x.mov(esp, top - 8)?;
                    x.mov(R64[c], R64[b])?;
                    x.add(R64[c], i32v)?;
                    x.shl(R64[c], 1u32)?;
                    x.ret()
                }
            }
        }
        // A conditional branch (alone, or after a compare it fuses with) over an ADD.
        _ => {
            if f != JCC {
                if imm & 0x10 == 0 {
                    x.cmp(R64[a], R64[b])?;
                } else {
                    x.test(R32[a], i32v)?;
                }
            }
            let mut over = x.create_label();
            jcc(x, imm % 16, over)?;
            x.add(R64[c], R64[b])?;
            x.set_label(&mut over)
        }
    }
}

/// Form of [`put`]: a Jcc; `JCC + 1`: a compare and a Jcc.
const JCC: u8 = 50;

/// Form of [`put`]: pushes and pops (memory programs only).
const STACK: u8 = JCC + 2;

/// Form of [`put`]: CALL and RET (memory programs only).
const CALLS: u8 = JCC + 3;

/// Jcc number `n` (0..16, iced's condition order from JO) to `to`.
fn jcc(x: &mut CodeAssembler, n: u64, to: CodeLabel) -> Result<(), IcedError> {
    match n {
        0 => x.jo(to),
        1 => x.jno(to),
        2 => x.jb(to),
        3 => x.jae(to),
        4 => x.je(to),
        5 => x.jne(to),
        6 => x.jbe(to),
        7 => x.ja(to),
        8 => x.js(to),
        9 => x.jns(to),
        10 => x.jp(to),
        11 => x.jnp(to),
        12 => x.jl(to),
        13 => x.jge(to),
        14 => x.jle(to),
        _ => x.jg(to),
    }
}

/// Forms `0..n` of [`put`] and the forms from [`JCC`] on (drawn as `n` and up).
fn with_branches(f: u8, n: u8) -> u8 {
    if f >= n {
        JCC + (f - n)
    } else {
        f
    }
}

/// Forms with memory operands: [`put`]'s 35 and above.
const MEM_FORMS: u8 = 47;

/// An address of a memory form, from its immediate: mostly in two data pages (where the
/// quick tags hit once the TLB knows them), else one that needs a side exit: a page
/// crossing (into a page that is not present, too), an address past RAM, the code's page (stores there invalidate it), a
/// read-only page (stores fault) or a page that is not present (everything faults).
fn target(imm: u64) -> u64 {
    let off = (imm >> 8) & 0xff8;
    match imm % 16 {
        0..=5 => 0x40_0000 + off,
        6..=10 => 0x40_1000 + off,
        // Into the next data page, or into the page that is not present.
        11 if imm & 0x100 == 0 => 0x40_0ffd,
        11 => 0x9f_fffd,
        12 => 0x200_0000 + off,
        13 => crate::testing::CODE_BASE + 0x800 + off,
        14 => 0x60_0000 + off,
        _ => 0xa0_0000 + off,
    }
}

/// A machine running `prog` then HLT, from registers `gpr` and status flags `flags`, with
/// native stretches on or off.
fn machine(
    prog: &[(u8, usize, usize, usize, u64)],
    gpr: &[u64; 16],
    flags: u64,
    native: bool,
) -> TestMachine {
    let mut m = TestMachine::assemble(|x| {
        for &(f, a, b, c, imm) in prog {
            put(x, f, a, b, c, imm)?;
        }
        x.hlt()
    });
    m.code.set_native(native);
    m.cpu.state.gpr = *gpr;
    m.cpu.state.rflags = FIXED | (flags & STATUS);
    m
}

fn program() -> impl Strategy<Value = Vec<(u8, usize, usize, usize, u64)>> {
    proptest::collection::vec(
        (
            0..FORMS + 2,
            0..16usize,
            0..16usize,
            0..16usize,
            any::<u64>(),
        ),
        1..40,
    )
    .prop_map(|mut prog| {
        for op in prog.iter_mut() {
            op.0 = with_branches(op.0, FORMS);
        }
        prog
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    /// Whole runs: native on and off end in the same state.
    #[test]
    fn stretches_match_the_handlers(prog in program(), gpr in any::<[u64; 16]>(), flags in any::<u64>()) {
        let mut on = machine(&prog, &gpr, flags, true);
        let mut off = machine(&prog, &gpr, flags, false);
        prop_assert_eq!(on.run(1000), RunExit::Halted);
        prop_assert_eq!(off.run(1000), RunExit::Halted);
        prop_assert_eq!(&on.cpu.state, &off.cpu.state);
    }

    /// One instruction at a time (every budget ends inside any stretch): the same state after
    /// every step, and after the whole run.
    #[test]
    fn budget_cuts_inside_stretches(prog in program(), gpr in any::<[u64; 16]>(), flags in any::<u64>()) {
        let mut on = machine(&prog, &gpr, flags, true);
        let mut off = machine(&prog, &gpr, flags, false);
        for _ in 0..=prog.len() {
            let a = on.run(1);
            let b = off.run(1);
            prop_assert_eq!(&a, &b);
            prop_assert_eq!(&on.cpu.state, &off.cpu.state);
            if a == RunExit::Halted {
                break;
            }
        }
        // And with budgets of three, which cut some stretches and not others.
        let mut on = machine(&prog, &gpr, flags, true);
        let mut off = machine(&prog, &gpr, flags, false);
        for _ in 0..=prog.len() {
            let a = on.run(3);
            prop_assert_eq!(&a, &off.run(3));
            prop_assert_eq!(&on.cpu.state, &off.cpu.state);
            if a == RunExit::Halted {
                break;
            }
        }
    }
}

/// Run `m` under `obs` to HLT (at most `max` instructions per call, as a traced replay's
/// slices).
fn run_watched(m: &mut TestMachine, obs: &mut RecordingObserver, max: u64) -> RunExit {
    loop {
        match m.cpu.run(&mut m.bus, obs, &mut m.code, max) {
            RunExit::Budget => {}
            exit => return exit,
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    /// Under an observer (a traced replay) stretches run whole, and the observer sees
    /// exactly what it sees with native code off: every access with its count and
    /// address, and with `--fetch` every instruction's fetch; the states agree too.
    #[test]
    fn observers_see_the_same_with_stretches(
        prog in program(),
        gpr in any::<[u64; 16]>(),
        flags in any::<u64>(),
        fetches in any::<bool>(),
        max in 1..8u64,
    ) {
        let mut on = machine(&prog, &gpr, flags, true);
        let mut off = machine(&prog, &gpr, flags, false);
        let mut seen_on = RecordingObserver { fetches, ..RecordingObserver::default() };
        let mut seen_off = RecordingObserver { fetches, ..RecordingObserver::default() };
        prop_assert_eq!(run_watched(&mut on, &mut seen_on, max), RunExit::Halted);
        prop_assert_eq!(run_watched(&mut off, &mut seen_off, max), RunExit::Halted);
        prop_assert_eq!(&on.cpu.state, &off.cpu.state);
        prop_assert_eq!(&seen_on.accesses, &seen_off.accesses);
    }
}

/// The bignum loop body of the Linux boot (mpihelp_submul_1) compiles into stretches and
/// gives the interpreter's result.
#[test]
fn bignum_loop_body() {
    let body = |x: &mut CodeAssembler| {
        x.lea(rdi, qword_ptr(rax * 8))?;
        x.mov(rdx, rcx)?;
        x.mov(ecx, ecx)?;
        x.shr(rdx, 32)?;
        x.mov(rax, rcx)?;
        x.imul_2(rax, r9)?;
        x.mov(r13, rdx)?;
        x.imul_2(r13, r9)?;
        x.imul_2(rcx, r10)?;
        x.imul_2(rdx, r10)?;
        x.mov(r14, rax)?;
        x.mov(eax, eax)?;
        x.shr(r14, 32)?;
        x.add(rcx, r13)?;
        x.add(rcx, r14)?;
        x.mov(r14, rdx)?;
        x.add(rdx, rbp)?;
        x.cmp(rcx, r13)?;
        x.mov(r13, rcx)?;
        x.cmovae(rdx, r14)?;
        x.add(rax, rsi)?;
        x.shl(r13, 32)?;
        x.add(rax, r13)?;
        x.cmp(rax, rsi)?;
        x.setb(sil)?;
        x.add(rdi, r11)?;
        x.shr(rcx, 32)?;
        x.movzx(esi, sil)?;
        x.sub(r13, rax)?;
        x.adc(rsi, rcx)?;
        // Accumulator-only encodings are renamed through their ModRM forms.
        x.add(rax, 0x1234_5678)?;
        x.and(eax, 0x7654_3210)?;
        x.cmp(rax, 0x1000_0000)?;
        x.sbb(eax, 0x0fff_0000)?;
        x.hlt()
    };
    let gpr = [
        0x0123_4567_89ab_cdef,
        0xfedc_ba98_7654_3210,
        7,
        0,
        0x80_0000,
        0xffff_ffff,
        0x8000_0000_0000_0001,
        3,
        5,
        0x1234_5678,
        0x9abc_def0,
        0x40,
        0,
        0,
        0,
        0,
    ];
    let mut on = TestMachine::assemble(body);
    let mut off = TestMachine::assemble(body);
    off.code.set_native(false);
    for m in [&mut on, &mut off] {
        m.cpu.state.gpr = gpr;
    }
    assert_eq!(on.run(100), RunExit::Halted);
    assert_eq!(off.run(100), RunExit::Halted);
    assert_eq!(on.cpu.state, off.cpu.state);
    assert_eq!(on.cpu.state.retired, 35);
    // One stretch: the last SHR's undefined OF and AF are defined by the SUB after it.
    let (runs, insns, bytes) = on.code.native_stats();
    assert_eq!((runs, insns), (1, 34));
    assert!(bytes > 0);
    assert_eq!(off.code.native_stats().0, 0);
}

/// An effect writing register `w` from register `r` and flags as given.
fn fx(r: u16, w: u16, flags_in: u64, defines: u64, undefines: u64, zero: u64) -> Option<Effect> {
    Some(Effect {
        reads: r,
        writes: w,
        flags_in,
        defines,
        undefines,
        zero,
        mem: None,
        branch: None,
        stack: None,
        cheap: false,
    })
}

/// A Jcc on ZF.
fn je() -> Option<Effect> {
    Some(Effect {
        flags_in: ZF,
        branch: Some(iced_x86::ConditionCode::e),
        cheap: true,
        ..Effect::default()
    })
}

/// A Jcc ends a stretch but does not count towards its length: two moves and a Jcc are
/// no stretch, three moves and a Jcc are one of four.
#[test]
fn branches_end_stretches_and_do_not_pay() {
    let v = |n: usize| [vec![mv(0, 1); n], vec![je(), mv(2, 3)]].concat();
    assert!(stretches(&v(2)).is_empty());
    let found: Vec<(usize, usize)> = stretches(&v(3)).iter().map(|&(s, p, _)| (s, p)).collect();
    assert_eq!(found, vec![(0, 4)]);
    // Nothing follows a branch in a stretch.
    let found: Vec<(usize, usize)> = stretches(&[v(3), vec![mv(2, 3); 3]].concat())
        .iter()
        .map(|&(s, p, _)| (s, p))
        .collect();
    assert_eq!(found, vec![(0, 4), (4, 8)]);
}

/// A plain move (no flags).
fn mv(r: u8, w: u8) -> Option<Effect> {
    fx(1 << r, 1 << w, 0, 0, 0, 0)
}

/// An IMUL (CF OF defined, SF ZF AF PF undefined; the interpreter's ZF and AF are 0).
fn imul(r: u8) -> Option<Effect> {
    fx(1 << r, 1 << r, 0, CF | OF, SF | ZF | AF | PF, ZF | AF)
}

/// An ADD (every status flag defined).
fn add(r: u8) -> Option<Effect> {
    fx(1 << r, 1 << r, 0, STATUS, 0, 0)
}

/// The cut rules: a non-whitelisted instruction, undefined flags read or escaping, too many
/// registers, runs shorter than two.
#[test]
fn stretch_cut_rules() {
    // Not whitelisted in the middle: two stretches around it.
    let s = stretches(&[
        mv(0, 1),
        mv(1, 2),
        mv(1, 3),
        None,
        mv(2, 3),
        mv(3, 4),
        mv(4, 5),
    ]);
    let spans: Vec<_> = s.iter().map(|&(a, b, _)| (a, b)).collect();
    assert_eq!(spans, [(0, 3), (4, 7)]);
    // Runs shorter than MIN_LEN are no stretch.
    assert!(stretches(&[mv(0, 1), mv(1, 2), None, mv(1, 2)]).is_empty());
    // IMUL's SF and PF escape at the end: cut before it (the IMUL runs alone).
    let s = stretches(&[mv(0, 1), mv(1, 2), mv(2, 3), imul(2)]);
    assert_eq!((s[0].0, s[0].1), (0, 3));
    // ...unless a later ADD defines them.
    let s = stretches(&[mv(0, 1), imul(1), add(2)]);
    assert_eq!((s[0].0, s[0].1), (0, 3));
    assert_eq!(s[0].2.written, STATUS);
    assert_eq!(s[0].2.cleared, 0);
    // A reader of an undefined flag (SETcc of SF after IMUL) cuts before the IMUL, which
    // runs alone; the next stretch starts at the reader.
    let sets = fx(1 << 5, 1 << 5, SF, 0, 0, 0);
    let s = stretches(&[
        mv(0, 1),
        mv(1, 2),
        mv(2, 3),
        imul(1),
        sets,
        add(3),
        mv(3, 4),
    ]);
    let spans: Vec<_> = s.iter().map(|&(a, b, _)| (a, b)).collect();
    assert_eq!(spans, [(0, 3), (4, 7)]);
    // An escaping AF whose interpreter value is 0 (a logic op) is cleared on exit.
    let and = fx(1 << 1, 1 << 1, 0, STATUS & !AF, AF, AF);
    let s = stretches(&[mv(0, 1), mv(1, 2), and]);
    assert_eq!(s[0].2.cleared, AF);
    assert_eq!(s[0].2.written, STATUS);
    // A flag read before written is loaded on entry.
    let adc = fx(1 << 2, 1 << 2, CF, STATUS, 0, 0);
    let s = stretches(&[adc, mv(0, 1), mv(1, 2)]);
    assert_eq!(s[0].2.need_in, CF);
    // 14 registers: the run ends before the instruction that needs the 14th.
    let many: Vec<_> = (0..14).map(|r| mv(r, r)).collect();
    let s = stretches(&many);
    assert_eq!((s[0].0, s[0].1), (0, 13));
    // Plans alone.
    assert_eq!(Plan::of(&[]), Some(Plan::default()));
}

/// 16-bit forms and implicit-register forms are not whitelisted; register forms, plain
/// loads, conditional branches and register compares fused with them are.
#[test]
fn whitelist() {
    let m = TestMachine::assemble(|x| {
        x.add(rax, rbx)?;
        x.cmp(rax, rbx)?;
        x.jne(0x10_0000u64)?;
        x.mov(rax, qword_ptr(rbx))?;
        x.cdqe()?;
        x.shl(rax, 0u32)?;
        x.add(ax, bx)?;
        x.lea(rax, qword_ptr(0x1234u64))?;
        x.hlt()
    });
    let mut m = m;
    m.code.set_native(false);
    assert_eq!(m.run(1), RunExit::Budget);
    let id = m
        .code
        .lookup(crate::testing::CODE_BASE, 64)
        .expect("decoded");
    let b = m.code.block(id).expect("cached");
    // SAFETY: the block lives in the cache, which nothing changes while it is read here.
    let insns = unsafe { b.insns() };
    let wl: Vec<bool> = insns
        .iter()
        .map(|d| {
            let i = m.code.full_insn(id, d.idx).expect("full");
            effect(d, &i).is_some()
        })
        .collect();
    assert_eq!(
        wl[..8],
        [true, true, true, true, false, false, false, false]
    );
}

/// The native entries are MOVZX's own, which no MOVZX reaches: its source sizes (1 and 2
/// bytes) have the sized entries, at every destination size.
#[test]
fn movzx_never_uses_the_native_entry() {
    use crate::exec::fast::{handler_index, Op, Operands};
    for op in [Op::MovzxRR, Op::MovzxRM] {
        for size in [2u8, 4, 8] {
            for from in [1u64, 2] {
                let o = Operands {
                    size,
                    imm: from,
                    ..Operands::default()
                };
                assert_ne!(handler_index(op, &o), super::HANDLER);
                assert_ne!(handler_index(op, &o), super::HANDLER_IMM);
            }
        }
    }
}

/// Where the canonical-edge tests put their code: the last bytes of the lower canonical
/// half (virtual 2 MiB page 0x7fff_ffe0_0000 mapped onto physical 0).
const EDGE: u64 = 0x7fff_ffff_ff00;

/// A machine that ran (100 instructions at most, native code `native`) the code `f`
/// assembles at [`EDGE`].
fn run_at_the_canonical_edge(
    f: impl Fn(&mut CodeAssembler) -> Result<(), IcedError>,
    native: bool,
) -> (RunExit, TestMachine) {
    const PDPT: u64 = 0x9000;
    const PD: u64 = 0xa000;
    let mut x = CodeAssembler::new(64).unwrap();
    f(&mut x).unwrap();
    let code = x.assemble(EDGE).unwrap();
    let mut m = TestMachine::with_code(&[0xf4]);
    let put = |ram: &mut [u8], at: u64, v: u64| {
        ram[at as usize..at as usize + 8].copy_from_slice(&v.to_le_bytes());
    };
    // PML4[255] -> PDPT[511] -> PD[511]: a 2 MiB page at physical 0.
    put(&mut m.bus.ram, crate::testing::PML4 + 255 * 8, PDPT | 3);
    put(&mut m.bus.ram, PDPT + 511 * 8, PD | 3);
    put(&mut m.bus.ram, PD + 511 * 8, 0x83);
    let at = (EDGE & 0x1f_ffff) as usize;
    m.bus.ram[at..at + code.len()].copy_from_slice(&code);
    m.cpu.state.rip = EDGE;
    m.cpu.flush_tlb();
    m.code.set_native(native);
    (m.run(100), m)
}

/// A stretch ending in a CALL rel32 whose target is not canonical: the CALL faults (#GP)
/// before its push, as with native code off; the stretch before it runs record by record
/// (its target is checked before the host code runs; mutation-checked: without the check
/// the CALL pushes).
#[test]
fn a_stretch_calling_out_of_the_canonical_half_faults_like_the_interpreter() {
    const STACK: u64 = 0x40_0800;
    let code = |x: &mut CodeAssembler| {
        // A store in a block before teaches the TLB the stack's page (the push would hit).
        let mut next = x.create_label();
        x.mov(qword_ptr(STACK - 16), 0)?;
        x.jmp(next)?;
        x.set_label(&mut next)?;
        x.mov(rsp, STACK)?;
        x.mov(eax, 1)?;
        x.mov(ebx, 2)?;
        x.add(eax, ebx)?;
        x.call(0x8000_0000_0040u64)?;
        x.hlt()
    };
    let (on_exit, on) = run_at_the_canonical_edge(code, true);
    let (off_exit, off) = run_at_the_canonical_edge(code, false);
    let stack = |m: &TestMachine| m.bus.ram[STACK as usize - 8..STACK as usize].to_vec();
    assert_eq!(
        on.code.native_stats().1,
        5,
        "the stretch to the CALL was not compiled"
    );
    assert_eq!(on_exit, off_exit);
    assert_eq!(on.cpu.state, off.cpu.state);
    // Everything before the CALL retired; the CALL did not, and pushed nothing.
    assert_eq!(on.cpu.state.gpr[0], 3);
    assert_eq!(on.cpu.state.gpr[4], STACK);
    assert_eq!(stack(&on), vec![0; 8]);
    assert_eq!(stack(&on), stack(&off));
}

/// A stretch ending in a taken Jcc whose target is not canonical: the records before the
/// Jcc retire natively, the compare-and-branch then runs through its own handler and
/// raises the #GP, exactly as with native code off.
#[test]
fn a_stretch_branching_out_of_the_canonical_half_faults_like_the_interpreter() {
    let code = |x: &mut CodeAssembler| {
        x.mov(eax, 1)?;
        x.mov(ebx, 2)?;
        x.add(eax, ebx)?;
        x.cmp(eax, 3)?;
        x.je(0x8000_0000_0040u64)?;
        x.hlt()
    };
    let (on_exit, on) = run_at_the_canonical_edge(code, true);
    let (off_exit, off) = run_at_the_canonical_edge(code, false);
    assert!(
        on.code.native_stats().0 >= 1,
        "the stretch was not compiled"
    );
    assert_eq!(on_exit, off_exit);
    assert_eq!(on.cpu.state, off.cpu.state);
    // The MOVs and the ADD retired; the branch did not (its #GP has no IDT to go to).
    assert_eq!(on.cpu.state.gpr[0], 3);
    assert_ne!(on.cpu.state.rip, 0x8000_0000_0040);
}
