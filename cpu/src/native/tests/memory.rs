//! Native stretches with memory accesses against the interpreter: random programs of
//! loads, stores, arithmetic reading memory and stack accesses, with TLB misses, page
//! crossings, read-only and code pages and faults forcing side exits; plus loops whose
//! bodies must compile into stretches with accesses.

use super::*;

/// A machine for memory programs: [`machine`]'s, running `prog` twice (the second time
/// the TLB knows the pages, so the quick tags hit), with the 2 MiB page at 0x60_0000
/// read-only and the one at 0xa0_0000 not present, and the data pages filled.
fn mem_machine(
    prog: &[(u8, usize, usize, usize, u64)],
    gpr: &[u64; 16],
    flags: u64,
    native: bool,
) -> TestMachine {
    let mut m = TestMachine::assemble(|x| {
        // Warm-up (see below): the TLB learns the readable pages.
        for page in WARM {
            x.mov(rax, qword_ptr(page))?;
        }
        for _ in 0..2 {
            for &(f, a, b, c, imm) in prog {
                put(x, f, a, b, c, imm)?;
            }
        }
        x.hlt()
    });
    m.code.set_native(native);
    m.cpu.state.gpr = *gpr;
    m.cpu.state.rflags = FIXED | (flags & STATUS);
    let pd = 0x3000;
    m.bus.ram[pd + 3 * 8..pd + 4 * 8].copy_from_slice(&(0x60_0000u64 | 0x81).to_le_bytes());
    m.bus.ram[pd + 5 * 8..pd + 6 * 8].copy_from_slice(&0u64.to_le_bytes());
    for (k, b) in m.bus.ram[0x40_0000..0x40_2000].iter_mut().enumerate() {
        *b = (k as u8).wrapping_mul(37) ^ 0x5a;
    }
    assert_eq!(m.run(WARM.len() as u64), RunExit::Budget);
    m.cpu.state.gpr = *gpr;
    m.cpu.state.rflags = FIXED | (flags & STATUS);
    m
}

/// Pages [`mem_machine`]'s warm-up reads, so that the first stores there meet read tags.
const WARM: [u64; 6] = [
    0x40_0000,
    0x9f_f000,
    0x40_1000,
    0x60_0000,
    0x200_0000,
    crate::testing::CODE_BASE + 0x800,
];

/// The RAM that memory programs may change.
fn touched(m: &TestMachine) -> Vec<u8> {
    let code = crate::testing::CODE_BASE as usize;
    [
        &m.bus.ram[0x40_0000..0x40_2000],
        &m.bus.ram[code..code + 0x2000],
    ]
    .concat()
}

fn mem_program() -> impl Strategy<Value = Vec<(u8, usize, usize, usize, u64)>> {
    proptest::collection::vec(
        (
            0..MEM_FORMS + 4,
            0..16usize,
            0..16usize,
            0..16usize,
            any::<u64>(),
        ),
        1..30,
    )
    .prop_map(|mut prog| {
        // Keep RSP: faults push onto the stack.
        for (f, a, _, c, _) in prog.iter_mut() {
            *f = with_branches(*f, MEM_FORMS);
            if *f >= 35 && *a == 4 {
                *a = 0;
            }
            if *f >= 41 && *c == 4 {
                *c = 12;
            }
        }
        prog
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    /// Memory stretches: native on and off end in the same state and RAM, run whole and
    /// with budgets ending inside stretches, with TLB misses, page crossings, stores to
    /// read-only and code pages, and faults forcing side exits.
    #[test]
    fn memory_stretches_match_the_handlers(
        prog in mem_program(),
        gpr in any::<[u64; 16]>(),
        flags in any::<u64>(),
        step in prop_oneof![Just(1000u64), Just(1), Just(3), Just(7)],
    ) {
        let mut on = mem_machine(&prog, &gpr, flags, true);
        let mut off = mem_machine(&prog, &gpr, flags, false);
        for _ in 0..=2 * prog.len() + 2 {
            let a = on.run(step);
            prop_assert_eq!(&a, &off.run(step));
            prop_assert_eq!(&on.cpu.state, &off.cpu.state);
            prop_assert!(touched(&on) == touched(&off));
            if a != RunExit::Budget {
                break;
            }
        }
    }

    /// Under an observer memory stretches run record by record: the same accesses.
    #[test]
    fn observers_see_every_access_of_memory_stretches(
        prog in mem_program(),
        gpr in any::<[u64; 16]>(),
        flags in any::<u64>(),
    ) {
        let mut on = mem_machine(&prog, &gpr, flags, true);
        let mut off = mem_machine(&prog, &gpr, flags, false);
        let mut seen_on = RecordingObserver::default();
        let mut seen_off = RecordingObserver::default();
        let a = on.cpu.run(&mut on.bus, &mut seen_on, &mut on.code, 1000);
        let b = off.cpu.run(&mut off.bus, &mut seen_off, &mut off.code, 1000);
        prop_assert_eq!(a, b);
        prop_assert_eq!(&on.cpu.state, &off.cpu.state);
        prop_assert_eq!(&seen_on.accesses, &seen_off.accesses);
    }
}

/// The machines of a native on/off comparison of `body`: native on, then off, each with the
/// page at 0x40_0000 filled with the same pattern.
fn on_and_off(
    body: impl Fn(&mut CodeAssembler) -> Result<(), iced_x86::IcedError>,
) -> [TestMachine; 2] {
    let mut on = TestMachine::assemble(&body);
    let mut off = TestMachine::assemble(&body);
    off.code.set_native(false);
    for m in [&mut on, &mut off] {
        for (k, b) in m.bus.ram[0x40_0000..0x40_1000].iter_mut().enumerate() {
            *b = (k as u8).wrapping_mul(91) ^ 0xc3;
        }
    }
    [on, off]
}

/// A loop of arithmetic with memory sources and a memory compare fused with its Jcc is one
/// stretch, from its first record to its branch, and ends as the interpreter does.
#[test]
fn arithmetic_memory_loop() {
    let body = |x: &mut CodeAssembler| {
        let mut top = x.create_label();
        x.set_label(&mut top)?;
        x.mov(rax, qword_ptr(rsi + rcx * 8))?;
        x.add(rax, qword_ptr(rsi + rcx * 8 + 8))?;
        x.adc(rbx, rax)?;
        x.sbb(edx, dword_ptr(rsi + rcx * 8 + 16))?;
        x.xor(r8, qword_ptr(rsi + rcx * 8 + 24))?;
        x.test(qword_ptr(rsi + rcx * 8), r8)?;
        x.setne(r9b)?;
        x.add(rcx, 1)?;
        x.cmp(qword_ptr(rdi), rcx)?;
        x.jne(top)?;
        x.hlt()
    };
    let [mut on, mut off] = on_and_off(body);
    for m in [&mut on, &mut off] {
        m.bus.ram[0x40_1000..0x40_1008].copy_from_slice(&100u64.to_le_bytes());
        m.cpu.state.gpr[6] = 0x40_0000;
        m.cpu.state.gpr[7] = 0x40_1000;
    }
    assert_eq!(on.run(10_000), RunExit::Halted);
    assert_eq!(off.run(10_000), RunExit::Halted);
    assert_eq!(on.cpu.state, off.cpu.state);
    let id = on
        .code
        .lookup(crate::testing::CODE_BASE, 64)
        .expect("decoded");
    let b = on.code.block(id).expect("cached");
    // SAFETY: the block lives in the cache, which nothing changes while it is read here.
    let first = unsafe { b.insns() }[0];
    assert_eq!(first.handler, crate::native::HANDLER_IMM);
    let w = crate::native::word::<true>(&first);
    assert_eq!(crate::native::length(w), 10);
    assert!(crate::native::has_memory(w));
}

/// A loop of loads, arithmetic and stores (the shape of the kernel's bignum loops) runs its
/// body natively once the TLB knows the pages: same state and memory as the interpreter,
/// and the stretch has memory accesses.
#[test]
fn memory_loop() {
    let body = |x: &mut CodeAssembler| {
        let mut top = x.create_label();
        x.mov(rsi, 0x40_0000u64)?;
        x.mov(rdi, 0x40_1000u64)?;
        x.mov(ecx, 0u32)?;
        x.set_label(&mut top)?;
        x.mov(rax, qword_ptr(rsi + rcx * 8))?;
        x.add(rax, rdx)?;
        x.mov(rbx, qword_ptr(rsi + rcx * 8 + 8))?;
        x.adc(rbx, rax)?;
        x.mov(qword_ptr(rdi + rcx * 8), rbx)?;
        x.setb(dl)?;
        x.imul_2(rbx, rax)?;
        x.mov(dword_ptr(rdi + rcx * 8 + 0x400), ebx)?;
        x.add(rdx, 1)?;
        x.add(rcx, 1)?;
        x.cmp(rcx, 100)?;
        x.jne(top)?;
        x.hlt()
    };
    let [mut on, mut off] = on_and_off(body);
    assert_eq!(on.run(10_000), RunExit::Halted);
    assert_eq!(off.run(10_000), RunExit::Halted);
    assert_eq!(on.cpu.state, off.cpu.state);
    assert!(on.bus.ram[0x40_0000..0x40_2000] == off.bus.ram[0x40_0000..0x40_2000]);
    let (runs, insns, _) = on.code.native_stats();
    assert!(runs >= 1 && insns >= 8, "{runs} {insns}");
}

/// A PUSH or POP joins a stretch only where its lookup need not save the host's flags:
/// after a flag-writing ADD it does not (the stretch is dropped), with the ADD after both
/// it does; either way the result is the interpreter's.
#[test]
fn stack_accesses_only_without_flag_saves() {
    let insns = |push_first: bool| {
        let body = |x: &mut CodeAssembler| {
            x.mov(rsp, 0x40_1000u64)?;
            if !push_first {
                x.add(rax, rbx)?;
            }
            x.push(rcx)?;
            x.mov(rdx, rsi)?;
            x.mov(rdi, r8)?;
            x.pop(r9)?;
            if push_first {
                x.add(rax, rbx)?;
            }
            x.mov(r10, rdx)?;
            x.hlt()
        };
        let mut on = TestMachine::assemble(body);
        let mut off = TestMachine::assemble(body);
        off.code.set_native(false);
        for m in [&mut on, &mut off] {
            m.cpu.state.gpr[0] = 3;
            m.cpu.state.gpr[3] = u64::MAX;
            m.cpu.state.gpr[1] = 0x1234;
            assert_eq!(m.run(100), RunExit::Halted);
        }
        assert_eq!(on.cpu.state, off.cpu.state);
        on.code.native_stats().1
    };
    assert_eq!(insns(false), 0);
    assert_eq!(insns(true), 7);
}

/// 50 rounds (RCX counts them, the stack below 0x40_0800) of `round` then a CALL of a
/// function whose body is `func` and a RET; HLT after the loop.
fn calls_in_a_loop(
    x: &mut CodeAssembler,
    round: impl FnOnce(&mut CodeAssembler) -> Result<(), iced_x86::IcedError>,
    func: impl FnOnce(&mut CodeAssembler) -> Result<(), iced_x86::IcedError>,
) -> Result<(), iced_x86::IcedError> {
    let (mut top, mut function) = (x.create_label(), x.create_label());
    x.mov(rsp, 0x40_0800u64)?;
    x.mov(ecx, 0u32)?;
    x.set_label(&mut top)?;
    round(x)?;
    x.call(function)?;
    x.add(rcx, 1)?;
    x.cmp(rcx, 50)?;
    x.jne(top)?;
    x.hlt()?;
    x.set_label(&mut function)?;
    func(x)?;
    x.ret()
}

/// Native on and off ended in the same state with the same stack.
fn assert_same_state_and_stack(on: &TestMachine, off: &TestMachine) {
    assert_eq!(on.cpu.state, off.cpu.state);
    assert!(on.bus.ram[0x40_0000..0x40_1000] == off.bus.ram[0x40_0000..0x40_1000]);
}

/// A loop calling a function: the stretches before the CALL end with it and the function's
/// body ends with its RET (the CALL and RET are compiled), with the interpreter's state and
/// stack.
#[test]
fn call_and_ret_end_stretches() {
    let body = |x: &mut CodeAssembler| {
        calls_in_a_loop(
            x,
            |x| {
                x.mov(rax, rcx)?;
                x.add(rax, 7)?;
                x.xor(rdx, rax)
            },
            |x| {
                x.imul_2(rdx, rax)?;
                x.add(rbx, rdx)?;
                x.sar(rbx, 3)
            },
        )
    };
    let [mut on, mut off] = on_and_off(body);
    assert_eq!(on.run(10_000), RunExit::Halted);
    assert_eq!(off.run(10_000), RunExit::Halted);
    assert_same_state_and_stack(&on, &off);
    // The first block (6 records to its CALL), the loop's (4) and the function (4, twice:
    // in its own block, and at the end of the block that returns to the loop's compare,
    // which goes on past the HLT).
    assert_eq!(on.code.native_stats().1, 18);
}

/// A stretch ending in a RET to an address that is not canonical: the records before the
/// RET retire natively, the RET faults (#GP, RSP unchanged) as the interpreter's does
/// (mutation-checked: taking the target without the check fails this).
#[test]
fn ret_to_a_non_canonical_address_faults() {
    let body = |x: &mut CodeAssembler| {
        // The return address is stored by the block before (which teaches the TLB the
        // page: the RET's read hits).
        let mut next = x.create_label();
        x.mov(rax, 0x8000_0000_0000_1234u64)?;
        x.mov(qword_ptr(0x40_07f8u64), rax)?;
        x.jmp(next)?;
        x.set_label(&mut next)?;
        x.mov(rsp, 0x40_07f8u64)?;
        x.mov(rbx, rcx)?;
        x.add(rbx, 5)?;
        x.shl(rbx, 1u32)?;
        x.ret()?;
        x.hlt()
    };
    let [mut on, mut off] = on_and_off(body);
    let a = on.run(100);
    assert_eq!(a, off.run(100));
    assert_eq!(on.cpu.state, off.cpu.state);
    // The stretch from the MOV to RSP to the RET.
    assert_eq!(on.code.native_stats().1, 5);
    // The records before the RET retired (natively); the RET did not.
    assert_eq!(on.cpu.state.gpr[4], 0x40_07f8);
    assert_eq!(
        on.cpu.state.gpr[3],
        on.cpu.state.gpr[1].wrapping_add(5) << 1
    );
}

/// A function of stack accesses around a single register move (a prologue and an
/// epilogue: `push; push; mov; pop; pop; ret`) is one stretch ending in its RET (it has
/// one instruction besides its accesses, `MIN_OTHERS`), and runs as the interpreter runs it:
/// same state and stack.
#[test]
fn stack_function_is_one_stretch() {
    let body = |x: &mut CodeAssembler| {
        calls_in_a_loop(
            x,
            |x| x.lea(rax, qword_ptr(rcx + 5)),
            |x| {
                x.push(rbx)?;
                x.push(rbp)?;
                x.mov(rbp, rax)?;
                x.pop(rbp)?;
                x.pop(rbx)
            },
        )
    };
    let [mut on, mut off] = on_and_off(body);
    for m in [&mut on, &mut off] {
        m.cpu.state.gpr[3] = 0x1111;
        m.cpu.state.gpr[5] = 0x2222;
        assert_eq!(m.run(10_000), RunExit::Halted);
    }
    assert_same_state_and_stack(&on, &off);
    // The first block's four records (to its CALL) and the function's six at least; with
    // `MIN_OTHERS` at 3 the function stays interpreted (4 in all).
    let (_, insns, _) = on.code.native_stats();
    assert!(insns >= 4 + 6, "{insns}");
}
