//! The run loop's tests: blocks, faults, self-modifying code, budgets (here); chaining
//! from block to linked block (`chain_tests`); the instruction count devices see
//! (`count_tests`).

use super::*;
use crate::testing::{TestMachine, CODE_BASE};
use iced_x86::code_asm::*;

#[test]
fn runs_a_block_until_hlt() {
    let mut m = TestMachine::assemble(|a| {
        a.mov(rax, 0x1122_3344_5566_7788u64)?;
        a.mov(ecx, 5)?;
        a.mov(qword_ptr(0x20_0000), rax)?;
        a.mov(rdx, qword_ptr(0x20_0000))?;
        a.hlt()
    });
    assert_eq!(m.run(100), RunExit::Halted);
    let s = &m.cpu.state;
    assert_eq!(s.gpr[0], 0x1122_3344_5566_7788);
    assert_eq!(s.gpr[1], 5);
    assert_eq!(s.gpr[2], 0x1122_3344_5566_7788);
    assert_eq!(s.retired, 5);
}

#[test]
fn unimplemented_instruction_stops_with_disassembly() {
    // UD2 is claimed by no module yet... use an instruction reprise will never implement.
    let mut m = TestMachine::with_code(&[0x0f, 0x37]); // GETSEC
    match m.run(10) {
        RunExit::Stop(s) => {
            let text = s.to_string();
            assert!(text.contains("unimplemented"), "{text}");
            assert!(text.contains(&format!("{CODE_BASE:#x}")), "{text}");
            assert!(text.contains("getsec"), "{text}");
        }
        other => panic!("expected a stop, got {other:?}"),
    }
}

#[test]
fn no_idt_means_triple_fault_naming_first_fault() {
    // A load from a non-canonical address raises #GP; with no IDT it triple-faults.
    let mut m = TestMachine::assemble(|a| {
        a.mov(rax, 0x8000_0000_0000_0000u64)?;
        a.mov(rdx, qword_ptr(rax))?;
        a.hlt()
    });
    match m.run(10) {
        RunExit::Stop(s) => {
            let text = s.to_string();
            assert!(text.contains("triple fault"), "{text}");
            assert!(text.contains("#GP"), "{text}");
            assert!(text.contains("mov rdx"), "{text}");
        }
        other => panic!("expected a stop, got {other:?}"),
    }
}

#[test]
fn self_modifying_code_is_seen() {
    // mov byte [CODE_BASE+9], 0x42 patches the immediate of the next instruction, which
    // was decoded into the same block before the write.
    let patch = (CODE_BASE + 9) as u32;
    let mut code = vec![0xc6, 0x04, 0x25];
    code.extend_from_slice(&patch.to_le_bytes());
    code.push(0x42);
    code.extend_from_slice(&[0xb0, 0x00, 0xf4]); // mov al, 0; hlt
    let mut m = TestMachine::with_code(&code);
    assert_eq!(m.run(1000), RunExit::Halted);
    assert_eq!(m.cpu.state.gpr[0] & 0xff, 0x42);
}

/// PAUSE retires and then ends the run with `Paused` (the machine moves on to another
/// CPU); the next run continues after it.
#[test]
fn pause_ends_the_run_after_it() {
    let mut m = TestMachine::assemble(|a| {
        a.mov(eax, 1)?;
        a.pause()?;
        a.mov(eax, 2)?;
        a.hlt()
    });
    let mut obs = crate::observer::NoObserver;
    let exit = m.cpu.run(&mut m.bus, &mut obs, &mut m.code, 100);
    assert_eq!(exit, RunExit::Paused);
    assert_eq!(m.cpu.state.retired, 2);
    assert_eq!(m.cpu.state.gpr[0], 1);
    assert_eq!(m.cpu.state.rip, CODE_BASE + 7);
    let exit = m.cpu.run(&mut m.bus, &mut obs, &mut m.code, 100);
    assert_eq!(exit, RunExit::Halted);
    assert_eq!(m.cpu.state.gpr[0], 2);
    // With fast forms off, the same.
    let mut m2 = TestMachine::assemble(|a| {
        a.mov(eax, 1)?;
        a.pause()?;
        a.hlt()
    });
    m2.code.set_fast_paths(false);
    assert_eq!(
        m2.cpu.run(&mut m2.bus, &mut obs, &mut m2.code, 100),
        RunExit::Paused
    );
    assert_eq!(m2.cpu.state.retired, 2);
}

/// A loop that is one block and patches its own immediate each time round: every
/// iteration must see the previous one's write.
#[test]
fn self_modifying_loop_sees_each_write() {
    // top: add eax, imm32 (05 xx xx xx xx) ; inc dword [top+1] ; dec ecx ; jnz top ; hlt
    let imm_at = (CODE_BASE + 6) as u32;
    let mut code = vec![0xb9, 10, 0, 0, 0]; // mov ecx, 10
    code.extend_from_slice(&[0x05, 1, 0, 0, 0]); // top: add eax, 1
    code.extend_from_slice(&[0xff, 0x04, 0x25]); // inc dword [imm_at]
    code.extend_from_slice(&imm_at.to_le_bytes());
    code.extend_from_slice(&[0xff, 0xc9]); // dec ecx
    code.extend_from_slice(&[0x75, 0xf0]); // jnz top (-16)
    code.push(0xf4);
    let mut m = TestMachine::with_code(&code);
    assert_eq!(m.run(10_000), RunExit::Halted);
    // 1 + 2 + ... + 10.
    assert_eq!(m.cpu.state.gpr[0], 55);
}

/// A loop whose body calls a function on another page and rewrites that function's
/// immediate each time round: the chained successor (the function's block) is dropped by
/// each write, and every call must run the new code.
#[test]
fn chained_successor_rewritten_each_time_round() {
    let f = CODE_BASE + 0x1000;
    let mut code = vec![0xb9, 10, 0, 0, 0]; // mov ecx, 10
    code.push(0xe8); // top: call f
    code.extend_from_slice(&((f - (CODE_BASE + 10)) as u32).to_le_bytes());
    code.extend_from_slice(&[0xff, 0x04, 0x25]); // inc dword [f+1]
    code.extend_from_slice(&((f + 1) as u32).to_le_bytes());
    code.extend_from_slice(&[0xff, 0xc9]); // dec ecx
    code.extend_from_slice(&[0x75, 0xf0]); // jnz top (-16)
    code.push(0xf4); // hlt
    let mut m = TestMachine::with_code(&code);
    // f: add eax, 1 ; ret
    m.bus.ram[f as usize..f as usize + 6].copy_from_slice(&[0x05, 1, 0, 0, 0, 0xc3]);
    assert_eq!(m.run(10_000), RunExit::Halted);
    // 1 + 2 + ... + 10.
    assert_eq!(m.cpu.state.gpr[0], 55);
    assert_eq!(m.cpu.state.retired, 1 + 10 * 6 + 1);
}

/// A program run in slices of any size ends in the same state, with the same count, as
/// in one run: budgets land on the same instruction whatever the blocks (self-loops run
/// inside the block loop included).
#[test]
fn slices_of_any_size_give_the_same_run() {
    let program = |a: &mut CodeAssembler| {
        let mut top = a.create_label();
        let mut inner = a.create_label();
        let mut f = a.create_label();
        a.mov(ecx, 50)?;
        a.mov(rbx, 0x20_0000u64)?;
        a.set_label(&mut top)?;
        a.mov(edx, 7)?;
        a.set_label(&mut inner)?;
        a.add(qword_ptr(rbx + rdx * 8), rcx)?;
        a.xor(eax, edx)?;
        a.ror(eax, 3)?;
        a.dec(edx)?;
        a.jnz(inner)?;
        a.call(f)?;
        a.dec(ecx)?;
        a.jnz(top)?;
        a.hlt()?;
        a.set_label(&mut f)?;
        a.push(rax)?;
        a.imul_3(eax, eax, 13)?;
        a.pop(rsi)?;
        a.ret()
    };
    let mut whole = TestMachine::assemble(program);
    assert_eq!(whole.run(1_000_000), RunExit::Halted);
    for slice in [1, 2, 3, 5, 7, 64] {
        let mut m = TestMachine::assemble(program);
        let mut runs = 0;
        loop {
            let before = m.cpu.state.retired;
            let exit = m.run(slice);
            assert!(m.cpu.state.retired - before <= slice);
            runs += 1;
            match exit {
                RunExit::Budget => assert_eq!(m.cpu.state.retired - before, slice),
                RunExit::Halted => break,
                other => panic!("slice {slice}: {other:?}"),
            }
        }
        assert!(runs > 1);
        assert_eq!(m.cpu.state, whole.cpu.state, "slice {slice}");
        assert!(m.bus.ram == whole.bus.ram, "slice {slice}");
    }
}

/// The run loop goes on from block to linked block without returning to `Cpu::run`: what
/// must still stop it or be seen at every block entry.
mod chain_tests {
    use crate::exec::RunExit;
    use crate::testing::{TestMachine, CODE_BASE, PML4};
    use iced_x86::code_asm::*;

    /// A loop calling a function on another page (its block linked from the caller's).
    fn calls(a: &mut CodeAssembler) -> Result<(), iced_x86::IcedError> {
        let mut top = a.create_label();
        a.mov(ecx, 200)?;
        a.set_label(&mut top)?;
        a.mov(rax, CODE_BASE + 0x1000)?;
        a.call(rax)?;
        a.dec(ecx)?;
        a.jnz(top)?;
        a.hlt()
    }

    /// f: add edx, 1 ; ret
    const F: [u8; 4] = [0x83, 0xc2, 0x01, 0xc3];

    fn machine() -> TestMachine {
        let mut m = TestMachine::assemble(calls);
        let f = (CODE_BASE + 0x1000) as usize;
        m.bus.ram[f..f + F.len()].copy_from_slice(&F);
        m
    }

    /// Breakpoints set while links exist (as bisect's scouting does between chunks): a
    /// linked block holding one is still seen entering it.
    #[test]
    fn breakpoints_set_on_a_linked_block_are_seen() {
        let mut m = machine();
        // Long enough for the links to be made and used; it stops before the call (mov ecx,
        // then 16 rounds of mov, call, add, ret, dec, jnz, then the mov), so the next run
        // enters the function through a link, not from the outer loop.
        assert_eq!(m.run(98), RunExit::Budget);
        assert_eq!(m.cpu.state.rip, CODE_BASE + 15);
        m.code.set_breakpoints(&[CODE_BASE + 0x1003]);
        assert_eq!(m.run(10), RunExit::Budget);
        assert!(m.code.take_breakpoint_hit());
        // One nothing reaches: never set.
        m.code.set_breakpoints(&[CODE_BASE + 0x1004]);
        assert_eq!(m.run(10), RunExit::Budget);
        assert!(!m.code.take_breakpoint_hit());
        m.code.set_breakpoints(&[]);
        assert_eq!(m.run(10_000), RunExit::Halted);
        assert_eq!(m.cpu.state.gpr[2], 200);
    }

    /// The linked function is rewritten from outside between runs (a device's DMA, another
    /// CPU): the next call runs the new code, although the caller's link led to the old.
    #[test]
    fn a_linked_block_written_from_outside_is_decoded_again() {
        let mut m = machine();
        assert_eq!(m.run(100), RunExit::Budget);
        let done = m.cpu.state.gpr[2];
        assert!(done > 10);
        let f = CODE_BASE + 0x1000;
        // add edx, 3
        m.bus.ram[f as usize + 2] = 3;
        m.code.invalidate_page(f >> 12);
        assert_eq!(m.run(10_000), RunExit::Halted);
        // Calls made before the write added 1, the rest 3 (a call may have been cut by the
        // budget before its add: count from the loop counter).
        let left = 200 - done;
        assert_eq!(m.cpu.state.gpr[2], done + 3 * left);
    }

    /// Two address spaces map the same virtual page to different code; the block calling
    /// into it is the same in both, so links of one block lead to either. Each call must run
    /// the code of the address space it is made in.
    #[test]
    fn a_cr3_change_is_followed_by_the_links() {
        let pml4_b = 0x8000u64;
        let mut m = TestMachine::assemble(|a| {
            let mut top = a.create_label();
            a.mov(ecx, 10)?;
            a.mov(rbx, pml4_b)?;
            a.mov(rdx, PML4)?;
            a.set_label(&mut top)?;
            a.mov(cr3, rbx)?;
            a.xchg(rbx, rdx)?;
            a.mov(rax, 0x20_0000u64)?;
            a.call(rax)?;
            a.dec(ecx)?;
            a.jnz(top)?;
            a.hlt()
        });
        let ram = &mut m.bus.ram;
        let put = |ram: &mut [u8], at: u64, v: u64| {
            ram[at as usize..at as usize + 8].copy_from_slice(&v.to_le_bytes());
        };
        // Address space B: the identity map, but for virtual 0x20_0000..0x40_0000 (one
        // 2 MiB page), which maps physical 0x60_0000.
        put(ram, pml4_b, 0x9000 | 3);
        ram.copy_within(0x2000..0x3000, 0x9000);
        put(ram, 0x9000, 0xa000 | 3);
        ram.copy_within(0x3000..0x4000, 0xa000);
        put(ram, 0xa000 + 8, 0x60_0000 | 0x83);
        // A: add esi, 1 ; ret — B: add esi, 100 ; ret
        ram[0x20_0000..0x20_0004].copy_from_slice(&[0x83, 0xc6, 0x01, 0xc3]);
        ram[0x60_0000..0x60_0004].copy_from_slice(&[0x83, 0xc6, 0x64, 0xc3]);
        assert_eq!(m.run(10_000), RunExit::Halted);
        // B first, then A, five times each.
        assert_eq!(m.cpu.state.gpr[6], 5 * 101);
    }
}

/// Devices and bus calls inside a block see the instruction count of the instruction making
/// them, with or without an observer: a guard for any change to how the run loop counts
/// (the count is part of every device interaction a recording replays).
mod count_tests {
    use crate::bus::{GuestPhysAddr, RandomSource};
    use crate::exec::*;
    use crate::observer::NoObserver;
    use crate::testing::{FlatBus, RecordingObserver, TestMachine};
    use iced_x86::code_asm::*;

    /// RAM from this address on is device memory.
    const MMIO: u64 = 0xf0_0000;

    /// A flat bus that notes the instruction count of every device access and bus call.
    struct ClockBus {
        flat: FlatBus,
        seen: Vec<(&'static str, u64)>,
    }

    impl Bus for ClockBus {
        fn ram(&mut self) -> crate::RamWindow<'_> {
            self.flat.ram()
        }
        fn is_mmio(&self, pa: GuestPhysAddr) -> bool {
            (MMIO..MMIO + 0x1000).contains(&pa)
        }
        fn mmio_read(&mut self, clock: CpuClock, _pa: GuestPhysAddr, _size: u8) -> u64 {
            self.seen.push(("mmio_read", clock.retired));
            7
        }
        fn mmio_write(&mut self, clock: CpuClock, _pa: GuestPhysAddr, _size: u8, _value: u64) {
            self.seen.push(("mmio_write", clock.retired));
        }
        fn io_in(&mut self, clock: CpuClock, port: u16, size: u8) -> u32 {
            self.seen.push(("io_in", clock.retired));
            self.flat.io_in(clock, port, size)
        }
        fn io_out(&mut self, clock: CpuClock, port: u16, size: u8, value: u32) {
            self.seen.push(("io_out", clock.retired));
            self.flat.io_out(clock, port, size, value)
        }
        fn random(&mut self, clock: CpuClock, source: RandomSource) -> Option<u64> {
            self.seen.push(("random", clock.retired));
            self.flat.random(clock, source)
        }
        fn tsc(&mut self, clock: CpuClock) -> u64 {
            self.seen.push(("tsc", clock.retired));
            self.flat.tsc(clock)
        }
        fn wants_exit(&self) -> bool {
            self.flat.wants_exit()
        }
    }

    fn program(a: &mut CodeAssembler) -> Result<(), iced_x86::IcedError> {
        let mut top = a.create_label();
        a.mov(ecx, 3)?;
        a.mov(rbx, MMIO)?;
        a.set_label(&mut top)?;
        a.add(eax, 1)?;
        a.mov(rdx, qword_ptr(rbx))?; // device read
        a.xor(esi, esi)?;
        a.rdtsc()?; // bus call from a generic handler
        a.mov(qword_ptr(rbx + 8), rax)?; // device write
        a.lea(rdi, qword_ptr(rdi + 1))?;
        a.dec(ecx)?;
        a.jnz(top)?;
        a.in_(al, dx)?;
        a.hlt()
    }

    fn run<O: Observer>(obs: &mut O) -> (Vec<(&'static str, u64)>, u64) {
        let m = TestMachine::assemble(program);
        let (mut cpu, mut code) = (m.cpu, m.code);
        let mut bus = ClockBus {
            flat: m.bus,
            seen: Vec::new(),
        };
        let mut exits = 0;
        while cpu.run(&mut bus, obs, &mut code, 1000) != RunExit::Halted {
            exits += 1;
            assert!(exits < 100, "the program should halt");
        }
        (bus.seen, cpu.state.retired)
    }

    #[test]
    fn devices_see_the_count_of_their_instruction() {
        let (lazy, n) = run(&mut NoObserver);
        let (stored, n2) = run(&mut RecordingObserver::default());
        assert_eq!(lazy, stored);
        assert_eq!(n, n2);
        // mov, mov; then per iteration: add (+0), read (+1), xor, rdtsc (+3), write (+4),
        // lea, dec, jnz: 8 instructions.
        let mut want = Vec::new();
        for k in 0..3 {
            let at = 2 + 8 * k;
            want.push(("mmio_read", at + 1));
            want.push(("tsc", at + 3));
            want.push(("mmio_write", at + 4));
        }
        want.push(("io_in", 2 + 24));
        assert_eq!(lazy, want);
        assert_eq!(n, 2 + 24 + 2);
    }
}
