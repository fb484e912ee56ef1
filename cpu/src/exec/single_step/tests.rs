//! Single-step tests: guest code turns TF on with POPF (or gets it from IRET/SYSRET), and
//! handlers log every event they see (vector, pushed RIP, pushed RFLAGS), so each test
//! compares the log with the events the SDM's rules give.

use iced_x86::code_asm::*;

use super::DR6_BS;
use crate::exec::RunExit;
use crate::state::{rflags, Segment};
use crate::testing::{TestMachine, CODE_BASE};

/// The IDT.
const IDT: u64 = 0xa000;
/// The TSS (RSP0 for events from CPL 3).
const TSS: u64 = 0xb000;
/// The handlers' code.
const HANDLERS: u64 = 0x18_0000;
/// The log: the address of the next free entry, then entries of (vector, RIP, RFLAGS).
const LOG: u64 = 0x30_0000;
/// Where the handler of #GP resumes: this many bytes after the faulting instruction.
const GP_SKIP: u64 = 8;
/// The kernel stack for events from CPL 3.
const RSP0: u64 = 0x70_0000;

/// One logged event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Event {
    vector: u64,
    rip: u64,
    rflags: u64,
}

/// A machine running `f` at [`CODE_BASE`], with logging handlers for #DB, #BP, #GP and
/// vector 0x40 (interrupt gates, DPL 3).
fn machine(f: impl FnOnce(&mut CodeAssembler) -> Result<(), IcedError>) -> TestMachine {
    let mut m = TestMachine::assemble(f);
    let mut a = CodeAssembler::new(64).unwrap();
    let mut entries = Vec::new();
    for (vector, error_code) in [(1u8, false), (3, false), (13, true), (0x40, false)] {
        let mut l = a.create_label();
        a.set_label(&mut l).unwrap();
        entries.push((vector, l));
        let extra = if error_code { 8 } else { 0 };
        a.push(rax).unwrap();
        a.push(rbx).unwrap();
        a.mov(rbx, qword_ptr(LOG)).unwrap();
        a.mov(qword_ptr(rbx), vector as i32).unwrap();
        a.mov(rax, qword_ptr(rsp + 16 + extra)).unwrap();
        a.mov(qword_ptr(rbx + 8), rax).unwrap();
        a.mov(rax, qword_ptr(rsp + 32 + extra)).unwrap();
        a.mov(qword_ptr(rbx + 16), rax).unwrap();
        a.add(rbx, 24).unwrap();
        a.mov(qword_ptr(LOG), rbx).unwrap();
        a.pop(rbx).unwrap();
        a.pop(rax).unwrap();
        if error_code {
            // Drop the error code and resume past the faulting instruction.
            a.add(rsp, 8).unwrap();
            a.add(qword_ptr(rsp), GP_SKIP as i32).unwrap();
        }
        a.iretq().unwrap();
    }
    let result = a
        .assemble_options(
            HANDLERS,
            iced_x86::BlockEncoderOptions::RETURN_NEW_INSTRUCTION_OFFSETS,
        )
        .unwrap();
    let bytes = result.inner.code_buffer.clone();
    m.bus.ram[HANDLERS as usize..HANDLERS as usize + bytes.len()].copy_from_slice(&bytes);
    for (vector, l) in entries {
        let handler = result.label_ip(&l).unwrap();
        let lo = (handler & 0xffff) | 8 << 16 | (0x80 | 3 << 5 | 0xe) << 40 | (handler >> 16) << 48;
        let at = (IDT + u64::from(vector) * 16) as usize;
        m.bus.ram[at..at + 8].copy_from_slice(&lo.to_le_bytes());
        m.bus.ram[at + 8..at + 16].copy_from_slice(&(handler >> 32).to_le_bytes());
    }
    m.cpu.state.idtr.base = IDT;
    m.cpu.state.idtr.limit = 0xfff;
    m.bus.ram[LOG as usize..LOG as usize + 8].copy_from_slice(&(LOG + 8).to_le_bytes());
    m
}

/// The events logged so far.
fn log(m: &TestMachine) -> Vec<Event> {
    let word =
        |at: u64| u64::from_le_bytes(m.bus.ram[at as usize..at as usize + 8].try_into().unwrap());
    let end = word(LOG);
    (LOG + 8..end)
        .step_by(24)
        .map(|at| Event {
            vector: word(at),
            rip: word(at + 8),
            rflags: word(at + 16),
        })
        .collect()
}

/// The addresses after each instruction of `f` assembled at [`CODE_BASE`] (with labels
/// resolved), and the labels' addresses.
fn ends_of(f: impl FnOnce(&mut CodeAssembler) -> Result<(), IcedError>) -> Vec<u64> {
    let mut a = CodeAssembler::new(64).unwrap();
    f(&mut a).unwrap();
    let bytes = a.assemble(CODE_BASE).unwrap();
    let mut d = iced_x86::Decoder::with_ip(64, &bytes, CODE_BASE, 0);
    let mut ends = Vec::new();
    while d.can_decode() {
        let i = d.decode();
        ends.push(i.next_ip());
    }
    ends
}

/// `pushfq; or qword [rsp], TF; popfq`: TF on, from the instruction after the POPF.
fn tf_on(a: &mut CodeAssembler) -> Result<(), IcedError> {
    a.pushfq()?;
    a.or(qword_ptr(rsp), rflags::TF as i32)?;
    a.popfq()
}

/// `pushfq; and qword [rsp], !TF; popfq`: TF off after the POPF (which still traps).
fn tf_off(a: &mut CodeAssembler) -> Result<(), IcedError> {
    a.pushfq()?;
    a.and(qword_ptr(rsp), !(rflags::TF as i32))?;
    a.popfq()
}

fn db(rip: u64) -> Event {
    Event {
        vector: 1,
        rip,
        rflags: 0,
    }
}

/// The log with RFLAGS reduced to TF and RF (what the tests look at).
fn log_tf_rf(m: &TestMachine) -> Vec<Event> {
    log(m)
        .into_iter()
        .map(|e| Event {
            rflags: e.rflags & (rflags::TF | rflags::RF),
            ..e
        })
        .collect()
}

/// `events` whose last is the #DB after the POPF that clears TF: TF is clear in its image.
fn tf_cleared_at_end(mut events: Vec<Event>) -> Vec<Event> {
    if let Some(e) = events.last_mut() {
        e.rflags &= !rflags::TF;
    }
    events
}

fn with_tf(e: Event) -> Event {
    Event {
        rflags: rflags::TF,
        ..e
    }
}

/// A POPF that sets TF is not followed by a #DB; each instruction after it is, up to and
/// including the POPF that clears TF; the handler runs unstepped (IRETQ restores TF but
/// traps only after the instruction it returns to).
#[test]
fn popf_steps_every_instruction_until_it_clears_tf() {
    let program = |a: &mut CodeAssembler| {
        tf_on(a)?;
        a.mov(eax, 1)?;
        a.add(eax, 2)?;
        a.nop()?;
        tf_off(a)?;
        a.mov(ecx, 5)?;
        a.hlt()
    };
    let ends = ends_of(program);
    let mut m = machine(program);
    assert_eq!(m.run(1000), RunExit::Halted);
    // The instructions 3..=8 (mov, add, nop, pushfq, and, popfq) each trap, with TF set in
    // the pushed RFLAGS, except the POPF clearing TF: it traps too (TF was set when it
    // began), but with TF already clear in the image it pushes.
    let want = tf_cleared_at_end(ends[3..9].iter().map(|&r| with_tf(db(r))).collect());
    assert_eq!(log_tf_rf(&m), want);
    assert_eq!(m.cpu.state.gpr[0], 3);
    assert_eq!(m.cpu.state.gpr[1], 5);
    assert_ne!(m.cpu.state.dr[6] & DR6_BS, 0);
    assert_eq!(m.cpu.state.rflags & rflags::TF, 0);
    // Program + 6 handler runs of 13 instructions each.
    assert_eq!(m.cpu.state.retired, 11 + 6 * 13);
}

/// The run stops at the same instruction with the same state whatever the budgets, TF or not
/// (budget stops are sync points).
#[test]
fn stepping_in_slices_of_any_size_gives_the_same_run() {
    let program = |a: &mut CodeAssembler| {
        let mut top = a.create_label();
        let mut skip = a.create_label();
        tf_on(a)?;
        a.mov(ecx, 4)?;
        a.mov(rdi, 0x20_0000u64)?;
        a.set_label(&mut top)?;
        a.add(qword_ptr(rdi), rcx)?;
        a.cmp(ecx, 2)?;
        a.jne(skip)?;
        a.add(rax, 5)?;
        a.set_label(&mut skip)?;
        a.dec(ecx)?;
        a.jnz(top)?;
        tf_off(a)?;
        a.hlt()
    };
    let mut whole = machine(program);
    assert_eq!(whole.run(100_000), RunExit::Halted);
    for slice in [1, 2, 3, 7, 13] {
        let mut m = machine(program);
        loop {
            match m.run(slice) {
                RunExit::Budget => {}
                RunExit::Halted => break,
                other => panic!("slice {slice}: {other:?}"),
            }
        }
        assert_eq!(m.cpu.state, whole.cpu.state, "slice {slice}");
        assert!(m.bus.ram == whole.bus.ram, "slice {slice}");
    }
}

/// INT3 and INT n deliver their interrupt with no #DB after them (the entry clears TF); the
/// instruction after the handler's IRETQ is stepped again.
#[test]
fn software_interrupts_are_not_followed_by_a_trap() {
    let program = |a: &mut CodeAssembler| {
        tf_on(a)?;
        a.int3()?;
        a.int(0x40)?;
        a.nop()?;
        tf_off(a)?;
        a.hlt()
    };
    let ends = ends_of(program);
    let mut m = machine(program);
    assert_eq!(m.run(1000), RunExit::Halted);
    let ev = |vector, rip| {
        with_tf(Event {
            vector,
            rip,
            rflags: 0,
        })
    };
    let mut want = vec![ev(3, ends[3]), ev(0x40, ends[4])];
    want.extend(ends[5..9].iter().map(|&r| ev(1, r)));
    assert_eq!(log_tf_rf(&m), tf_cleared_at_end(want));
}

/// A stepped HLT traps after it, and the #DB wakes the CPU: the handler returns past it.
#[test]
fn a_stepped_hlt_traps_and_goes_on() {
    let program = |a: &mut CodeAssembler| {
        tf_on(a)?;
        a.hlt()?;
        tf_off(a)?;
        a.mov(eax, 9)?;
        a.hlt()
    };
    let ends = ends_of(program);
    let mut m = machine(program);
    assert_eq!(m.run(1000), RunExit::Halted);
    let want = tf_cleared_at_end(ends[3..7].iter().map(|&r| with_tf(db(r))).collect());
    assert_eq!(log_tf_rf(&m), want);
    assert_eq!(m.cpu.state.gpr[0], 9);
    assert_eq!(m.cpu.state.rip, ends[8]);
}

/// An instruction that faults raises its fault, not a #DB; the handler's return goes on
/// stepping.
#[test]
fn a_faulting_instruction_raises_no_trap() {
    let program = |a: &mut CodeAssembler| {
        tf_on(a)?;
        a.mov(rax, 0x8000_0000_0000_0000u64)?;
        // 8 bytes: the #GP handler resumes after it.
        a.mov(rdx, qword_ptr(rax + r8 + 0x1000_0000))?;
        a.nop()?;
        tf_off(a)?;
        a.hlt()
    };
    let ends = ends_of(program);
    assert_eq!(ends[4] - ends[3], GP_SKIP);
    let mut m = machine(program);
    assert_eq!(m.run(1000), RunExit::Halted);
    let ev = |vector, rip| {
        with_tf(Event {
            vector,
            rip,
            rflags: 0,
        })
    };
    assert_eq!(
        log_tf_rf(&m),
        tf_cleared_at_end(vec![
            ev(1, ends[3]),
            ev(13, ends[3]),
            ev(1, ends[5]),
            ev(1, ends[6]),
            ev(1, ends[7]),
            ev(1, ends[8]),
        ])
    );
}

/// A REP string instruction traps after each element, with RIP on itself and RF set in the
/// pushed RFLAGS for all but the last; the copy is the same as unstepped.
#[test]
fn rep_traps_after_each_element() {
    let program = |a: &mut CodeAssembler| {
        a.mov(rsi, 0x20_0000u64)?;
        a.mov(rdi, 0x20_1000u64)?;
        a.mov(ecx, 3)?;
        tf_on(a)?;
        a.rep().movsb()?;
        tf_off(a)?;
        a.hlt()
    };
    let ends = ends_of(program);
    let mut m = machine(program);
    m.bus.ram[0x20_0000..0x20_0003].copy_from_slice(&[7, 8, 9]);
    assert_eq!(m.run(1000), RunExit::Halted);
    let rep_at = ends[5];
    let mid = Event {
        vector: 1,
        rip: rep_at,
        rflags: rflags::TF | rflags::RF,
    };
    let mut want = vec![mid, mid, with_tf(db(ends[6]))];
    want.extend(ends[7..10].iter().map(|&r| with_tf(db(r))));
    assert_eq!(log_tf_rf(&m), tf_cleared_at_end(want));
    assert_eq!(&m.bus.ram[0x20_1000..0x20_1003], &[7, 8, 9]);
    assert_eq!(m.cpu.state.gpr[1], 0);
    // RF is only in the pushed images.
    assert_eq!(m.cpu.state.rflags & rflags::RF, 0);
}

/// A load of SS holds its #DB until after the next instruction: one #DB for both.
#[test]
fn mov_ss_holds_the_trap_for_one_instruction() {
    let program = |a: &mut CodeAssembler| {
        a.mov(eax, ss)?;
        tf_on(a)?;
        a.mov(ss, eax)?;
        a.nop()?;
        a.mov(ss, eax)?;
        a.int(0x40)?;
        tf_off(a)?;
        a.hlt()
    };
    let ends = ends_of(program);
    let mut m = machine(program);
    assert_eq!(m.run(1000), RunExit::Halted);
    let ev = |vector, rip| {
        with_tf(Event {
            vector,
            rip,
            rflags: 0,
        })
    };
    // No #DB after either MOV SS (ends[4], ends[6]); the one the second holds comes after
    // INT 0x40, in its handler, at its first instruction (whose RFLAGS have TF clear).
    let handler = log(&m)[1].rip;
    assert_eq!(
        log_tf_rf(&m),
        tf_cleared_at_end(vec![
            ev(1, ends[5]),
            Event {
                vector: 1,
                rip: handler,
                rflags: 0
            },
            ev(0x40, ends[7]),
            ev(1, ends[8]),
            ev(1, ends[9]),
            ev(1, ends[10]),
        ])
    );
    assert!((HANDLERS..HANDLERS + 0x1000).contains(&handler));
}

/// SYSCALL decides from TF after its RFLAGS mask: masked, the kernel's entry is not
/// stepped; unmasked, the #DB comes at the entry point.
#[test]
fn syscall_traps_only_if_its_mask_leaves_tf() {
    let program = |a: &mut CodeAssembler| {
        tf_on(a)?;
        a.syscall()?;
        a.hlt()
    };
    let ends = ends_of(program);
    let entry = CODE_BASE + 0x800;
    for (mask, stepped) in [(rflags::TF, false), (0, true)] {
        let mut m = machine(program);
        m.bus.ram[entry as usize..entry as usize + 2].copy_from_slice(&[0x90, 0xf4]);
        m.cpu.state.msr.star = 8 << 32;
        m.cpu.state.msr.lstar = entry;
        m.cpu.state.msr.sfmask = mask;
        m.run(300);
        let events = log_tf_rf(&m);
        if stepped {
            // After SYSCALL (at the entry), after NOP, after HLT (then it runs on into zeros).
            let want = [entry, entry + 1, entry + 2].map(|r| with_tf(db(r)));
            assert_eq!(events[..3], want);
        } else {
            assert_eq!(events, vec![]);
            assert_eq!(m.cpu.state.rip, entry + 2);
            assert!(m.cpu.state.halted);
        }
        assert_eq!(m.cpu.state.gpr[1], ends[3]);
    }
}

/// SYSRET loading TF from R11 traps at once, in user mode, before the first user
/// instruction (unlike IRET and POPF).
#[test]
fn sysret_loading_tf_traps_right_after_it() {
    let user = CODE_BASE + 0x800;
    let program = move |a: &mut CodeAssembler| {
        a.mov(rcx, user)?;
        a.mov(r11, rflags::TF | rflags::FIXED)?;
        a.sysretq()
    };
    let mut m = machine(program);
    // User-accessible pages, a TSS with RSP0, user code and data segments at STAR[63:48].
    for e in 0..4 * 512usize {
        m.bus.ram[0x3000 + e * 8] |= 4;
    }
    for at in [0x1000usize, 0x2000, 0x2008, 0x2010, 0x2018] {
        m.bus.ram[at] |= 4;
    }
    m.bus.ram[user as usize..user as usize + 3].copy_from_slice(&[0x90, 0x90, 0xeb]);
    m.bus.ram[user as usize + 3] = 0xfe; // jmp $
    m.bus.ram[TSS as usize + 4..TSS as usize + 12].copy_from_slice(&RSP0.to_le_bytes());
    m.cpu.state.tr = Segment {
        selector: 0x28,
        base: TSS,
        limit: 0x67,
        attrs: 0x8b,
    };
    m.cpu.state.msr.star = 0x10 << 48 | 8 << 32;
    // The three instructions, then the #DB handler up to its IRETQ (which would fail: the
    // GDT has no user segments).
    assert_eq!(m.run(3 + 12), RunExit::Budget);
    assert_eq!(log_tf_rf(&m), vec![with_tf(db(user))]);
    assert_eq!(m.cpu.state.tr.base, TSS);
}

/// Every instruction that bends the single-step rule (MOV SS, INT3, INT n, a REP string
/// instruction stopped between elements, SYSCALL), stepped or not, leaves it taken by the
/// time a run returns, whatever the budget: the rule is not part of the state, so one left
/// at the end of a run would be lost by a checkpoint taken there. Run in slices of every
/// size, the machine also ends as the whole run leaves it.
#[test]
fn a_bent_step_rule_never_outlives_its_instruction() {
    const SRC: u64 = 0x20_0000;
    const DST: u64 = 0x20_1000;
    let body = |a: &mut CodeAssembler| -> Result<(), IcedError> {
        a.mov(eax, ss)?;
        a.mov(rsi, SRC)?;
        a.mov(rdi, DST)?;
        a.mov(ss, eax)?;
        a.int3()?;
        a.int(0x40)?;
        a.mov(ecx, 3)?;
        a.rep().movsb()?;
        tf_on(a)?;
        a.mov(ss, eax)?;
        a.nop()?;
        a.int3()?;
        a.int(0x40)?;
        a.mov(ecx, 3)?;
        a.rep().movsb()?;
        a.syscall()
    };
    // SYSCALL enters the kernel at the instruction after it, with TF left set by its mask.
    let entry = *ends_of(body).last().unwrap();
    let program = move |a: &mut CodeAssembler| {
        body(a)?;
        a.nop()?;
        tf_off(a)?;
        a.hlt()
    };
    let start = |m: &mut TestMachine| {
        m.cpu.state.msr.star = 8 << 32;
        m.cpu.state.msr.lstar = entry;
        m.cpu.state.msr.sfmask = 0;
        m.cpu.state.msr.efer |= crate::state::efer::SCE;
    };
    let mut whole = machine(program);
    start(&mut whole);
    assert_eq!(whole.run(10_000), RunExit::Halted);
    assert_eq!(whole.cpu.step_rule, super::StepRule::Trap);
    // The stepped part trapped after its instructions (MOV SS held one), so it ran.
    assert!(log(&whole).iter().filter(|e| e.vector == 1).count() >= 10);
    for slice in 1..=8 {
        let mut m = machine(program);
        start(&mut m);
        loop {
            let exit = m.run(slice);
            assert_eq!(
                m.cpu.step_rule,
                super::StepRule::Trap,
                "slice {slice}, at {}",
                m.cpu.state.retired
            );
            match exit {
                RunExit::Budget => {}
                RunExit::Halted => break,
                other => panic!("slice {slice}: {other:?}"),
            }
        }
        assert_eq!(m.cpu.state, whole.cpu.state, "slice {slice}");
        assert!(m.bus.ram == whole.bus.ram, "slice {slice}");
    }
}
