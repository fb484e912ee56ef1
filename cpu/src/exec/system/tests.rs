//! Tests of the system instructions and of event delivery in every mode.
//!
//! [`TestMachine`] starts in long mode; tests of real and protected mode build their state
//! and tables by hand in its RAM.

use iced_x86::code_asm::*;

use crate::exec::RunExit;
use crate::observer::NoObserver;
use crate::state::{cr0, cr4, efer, rflags, CpuMode, SegReg, Segment};
use crate::testing::{TestMachine, CODE_BASE, GDT, PML4};

/// Flat descriptors.
const CODE64_K: u64 = 0x00af_9b00_0000_ffff;
const DATA_K: u64 = 0x00cf_9300_0000_ffff;
const CODE32_K: u64 = 0x00cf_9b00_0000_ffff;
const CODE32_U: u64 = 0x00cf_fb00_0000_ffff;
const DATA_U: u64 = 0x00cf_f300_0000_ffff;
const CODE64_U: u64 = 0x00af_fb00_0000_ffff;

/// Where tests put their IDT.
const IDT: u64 = 0xa000;
/// Where tests put their TSS.
const TSS: u64 = 0xb000;

fn put(m: &mut TestMachine, at: u64, bytes: &[u8]) {
    m.bus.ram[at as usize..at as usize + bytes.len()].copy_from_slice(bytes);
}

fn put_u64(m: &mut TestMachine, at: u64, v: u64) {
    put(m, at, &v.to_le_bytes());
}

fn put_u32(m: &mut TestMachine, at: u64, v: u32) {
    put(m, at, &v.to_le_bytes());
}

fn get_u64(m: &TestMachine, at: u64) -> u64 {
    u64::from_le_bytes(m.bus.ram[at as usize..at as usize + 8].try_into().unwrap())
}

fn get_u32(m: &TestMachine, at: u64) -> u32 {
    u32::from_le_bytes(m.bus.ram[at as usize..at as usize + 4].try_into().unwrap())
}

fn get_u16(m: &TestMachine, at: u64) -> u16 {
    u16::from_le_bytes(m.bus.ram[at as usize..at as usize + 2].try_into().unwrap())
}

/// Assemble `f` for `bitness` as if located at `ip`.
fn asm(
    bitness: u32,
    ip: u64,
    f: impl FnOnce(&mut CodeAssembler) -> Result<(), IcedError>,
) -> Vec<u8> {
    let mut a = CodeAssembler::new(bitness).unwrap();
    f(&mut a).unwrap();
    a.assemble(ip).unwrap()
}

/// Write a GDT of `entries` at [`GDT`] and load GDTR.
fn gdt(m: &mut TestMachine, entries: &[u64]) {
    for (k, &e) in entries.iter().enumerate() {
        put_u64(m, GDT + 8 * k as u64, e);
    }
    m.cpu.state.gdtr.base = GDT;
    m.cpu.state.gdtr.limit = (entries.len() * 8 - 1) as u16;
}

/// A TSS descriptor (two 8-byte halves; the second only matters in long mode).
fn tss_descriptor(base: u64, limit: u32) -> [u64; 2] {
    let lo = (limit as u64 & 0xffff)
        | (base & 0xff_ffff) << 16
        | 0x89 << 40
        | ((limit as u64 >> 16) & 0xf) << 48
        | ((base >> 24) & 0xff) << 56;
    [lo, base >> 32]
}

/// A 64-bit IDT gate (`kind` 0xe interrupt, 0xf trap).
fn gate64(m: &mut TestMachine, vec: u8, handler: u64, selector: u16, dpl: u8, ist: u8, kind: u8) {
    let lo = (handler & 0xffff)
        | (selector as u64) << 16
        | (ist as u64) << 32
        | ((0x80 | (dpl as u64) << 5 | kind as u64) << 40)
        | ((handler >> 16) & 0xffff) << 48;
    let at = IDT + vec as u64 * 16;
    put_u64(m, at, lo);
    put_u64(m, at + 8, handler >> 32);
    m.cpu.state.idtr.base = IDT;
    m.cpu.state.idtr.limit = 0xfff;
}

/// A 32-bit protected-mode IDT gate.
fn gate32(m: &mut TestMachine, vec: u8, handler: u32, selector: u16, dpl: u8, kind: u8) {
    let lo = (handler as u64 & 0xffff)
        | (selector as u64) << 16
        | ((0x80 | (dpl as u64) << 5 | kind as u64) << 40)
        | ((handler as u64 >> 16) & 0xffff) << 48;
    put_u64(m, IDT + vec as u64 * 8, lo);
    m.cpu.state.idtr.base = IDT;
    m.cpu.state.idtr.limit = 0x7ff;
}

/// Give every entry of the identity map's first GiB (and the tables above it) the user bit.
fn identity_map_user(m: &mut TestMachine) {
    put_u64(m, PML4, get_u64(m, PML4) | 4);
    put_u64(m, 0x2000, get_u64(m, 0x2000) | 4);
    for e in 0..512 {
        let at = 0x3000 + e * 8;
        put_u64(m, at, get_u64(m, at) | 4);
    }
}

fn run_to_halt(m: &mut TestMachine) {
    match m.run(100_000) {
        RunExit::Halted => {}
        other => panic!("expected HLT, got {other:?} at rip {:#x}", m.cpu.state.rip),
    }
}

fn interrupt(m: &mut TestMachine, vec: u8) {
    m.cpu
        .interrupt(&mut m.bus, &mut NoObserver, &mut m.code, vec)
        .expect("interrupt delivered");
}

fn cs_of(m: &TestMachine) -> Segment {
    m.cpu.state.seg[SegReg::Cs as usize]
}

fn ss_of(m: &TestMachine) -> Segment {
    m.cpu.state.seg[SegReg::Ss as usize]
}

/// The SMP trampoline's path: real mode → protected mode → long mode, the way Linux's
/// trampoline_64.S does it (LGDT, CR0.PE, far jump, data segments, CR4.PAE, CR3, EFER.LME via
/// RDMSR/WRMSR, CR0.PG, far jump into 64-bit code).
#[test]
fn real_to_protected_to_long_mode() {
    let mut m = TestMachine::with_code(&[]);
    let base = 0x8000u64;
    let pm32 = 0x8100u32;
    let lm64 = 0x8200u32;
    // Real-mode part, at CS = 0x0800 (linear 0x8000).
    let mut rm = asm(16, 0, |a| {
        let mut sub = a.create_label();
        a.cli()?;
        a.mov(ax, cs)?;
        a.mov(ds, ax)?;
        a.mov(ss, ax)?;
        a.mov(sp, 0x0f00)?;
        a.mov(bx, 0x1234)?;
        a.call(sub)?;
        a.pushfd()?;
        a.pop(ecx)?;
        a.lidt(ptr(0x848))?;
        a.lgdt(ptr(0x840))?;
        a.mov(edx, 0x10)?;
        a.mov(eax, cr0)?;
        a.or(eax, 1)?;
        a.mov(cr0, eax)?;
        a.db(&[0x66, 0xea])?;
        a.dd(&[pm32])?;
        a.dw(&[0x08])?;
        a.set_label(&mut sub)?;
        a.push(bx)?;
        a.pop(si)?;
        a.ret()
    });
    // Protected mode, 32-bit flat code.
    let mut p32 = asm(32, pm32 as u64, |a| {
        a.mov(ss, edx)?;
        a.mov(ds, edx)?;
        a.mov(es, edx)?;
        a.mov(fs, edx)?;
        a.mov(gs, edx)?;
        a.mov(esp, 0x9f00)?;
        a.mov(dword_ptr(0x9000), 0xcafe)?;
        a.mov(eax, cr4)?;
        a.or(eax, 0x20)?;
        a.mov(cr4, eax)?;
        a.mov(eax, PML4 as u32)?;
        a.mov(cr3, eax)?;
        a.mov(ecx, 0xc000_0080u32)?;
        a.rdmsr()?;
        a.or(eax, 0x100)?;
        a.wrmsr()?;
        a.mov(eax, cr0)?;
        a.or(eax, 0x8000_0000u32 as i32)?;
        a.mov(cr0, eax)?;
        a.db(&[0xea])?;
        a.dd(&[lm64])?;
        a.dw(&[0x18])
    });
    let l64 = asm(64, lm64 as u64, |a| {
        a.mov(rax, qword_ptr(0x9000))?;
        a.push(0x77)?;
        a.pop(rdi)?;
        a.hlt()
    });
    rm.resize(0x100, 0x90);
    p32.resize(0x100, 0x90);
    put(&mut m, base, &rm);
    put(&mut m, base + 0x100, &p32);
    put(&mut m, base + 0x200, &l64);
    // GDT pointer (limit, base) at 0x8840 and a null IDT pointer at 0x8848.
    let table = 0x8800u64;
    // The data descriptor starts not accessed: loading it must set the bit.
    let data_not_accessed = DATA_K & !(1 << 40);
    for (k, e) in [0, CODE32_K, data_not_accessed, CODE64_K]
        .iter()
        .enumerate()
    {
        put_u64(&mut m, table + 8 * k as u64, *e);
    }
    put(&mut m, base + 0x840, &31u16.to_le_bytes());
    put_u32(&mut m, base + 0x842, table as u32);
    put(&mut m, base + 0x848, &[0; 6]);
    m.cpu.reset();
    m.cpu.startup(0x08);
    assert_eq!(m.cpu.state.mode(), CpuMode::Real);
    assert_eq!(m.cpu.state.msr.efer, 0);
    run_to_halt(&mut m);
    let s = &m.cpu.state;
    assert_eq!(s.mode(), CpuMode::Long64);
    assert_eq!(s.msr.efer & (efer::LME | efer::LMA), efer::LME | efer::LMA);
    assert_eq!(s.cr0 & (cr0::PE | cr0::PG), cr0::PE | cr0::PG);
    assert_eq!(cs_of(&m).selector, 0x18);
    assert_eq!(ss_of(&m).selector, 0x10);
    assert_eq!(s.gpr[0], 0xcafe);
    assert_eq!(s.gpr[6] & 0xffff, 0x1234, "real-mode call/push/pop");
    assert_eq!(s.gpr[1] & rflags::IF, 0, "pushfd after cli");
    assert_eq!(s.gpr[7], 0x77);
    assert_eq!(s.gpr[4], 0x9f00);
    assert_eq!(s.gdtr.base, table);
    assert_eq!(s.idtr.limit, 0);
    assert_eq!(s.rip, lm64 as u64 + l64.len() as u64);
    // The data-segment descriptor was marked accessed when loaded.
    assert_eq!(m.bus.ram[table as usize + 16 + 5], 0x93);
}

/// Real-mode segment arithmetic: DS:offset is selector * 16 + offset; [BP] uses SS.
#[test]
fn real_mode_segments_and_addressing() {
    let code = asm(16, 0, |a| {
        a.mov(ax, 0x1234)?;
        a.mov(ds, ax)?;
        a.mov(word_ptr(0x10), ax)?;
        a.mov(ax, 0x2000)?;
        a.mov(ss, ax)?;
        a.mov(bp, 0x20)?;
        a.mov(word_ptr(bp + 2), 0x5678)?;
        a.mov(cx, word_ptr(0x10))?;
        a.hlt()
    });
    let mut m = TestMachine::with_code(&[]);
    put(&mut m, 0x7_0000, &code);
    m.cpu.reset();
    m.cpu.startup(0x70);
    run_to_halt(&mut m);
    assert_eq!(get_u16(&m, 0x12350), 0x1234);
    assert_eq!(get_u16(&m, 0x20022), 0x5678);
    assert_eq!(m.cpu.state.gpr[1] & 0xffff, 0x1234);
    assert_eq!(m.cpu.state.seg[SegReg::Ds as usize].base, 0x12340);
}

/// Real mode: an external interrupt goes through the IVT and pushes FLAGS, CS, IP; an
/// exception pushes the faulting IP; IRET returns.
#[test]
fn real_mode_interrupt_and_exception() {
    let mut m = TestMachine::with_code(&[]);
    // Main code at 0x0700:0000: STI, NOP, UD2 (→ #UD handler), then HLT.
    let main = asm(16, 0, |a| {
        a.sti()?;
        a.nop()?;
        a.ud2()?;
        a.hlt()
    });
    put(&mut m, 0x7000, &main);
    // #UD handler at 0x0900:0010: skip the UD2 (add 2 to the saved IP), IRET.
    let ud = asm(16, 0x10, |a| {
        a.mov(bp, sp)?;
        a.add(word_ptr(bp), 2)?;
        a.mov(di, 0x66)?;
        a.iret()
    });
    put(&mut m, 0x9010, &ud);
    // Vector 0x20 handler at 0x0900:0040: HLT.
    put(&mut m, 0x9040, &[0xf4]);
    put_u32(&mut m, 6 * 4, 0x0900_0010);
    put_u32(&mut m, 0x20 * 4, 0x0900_0040);
    m.cpu.reset();
    m.cpu.startup(0x07);
    m.cpu.state.seg[SegReg::Ss as usize].base = 0;
    m.cpu.state.gpr[4] = 0x6000;
    // STI holds interrupts off for one more instruction.
    assert_eq!(m.run(1), RunExit::Budget);
    assert!(!m.cpu.interrupts_enabled());
    assert_eq!(m.run(1), RunExit::Budget);
    assert!(m.cpu.interrupts_enabled());
    // UD2 → handler → IRET → HLT.
    run_to_halt(&mut m);
    assert_eq!(m.cpu.state.gpr[7] & 0xffff, 0x66);
    assert_eq!(m.cpu.state.rip, 5, "after the HLT at IP 4");
    assert_eq!(m.cpu.state.gpr[4], 0x6000, "IRET popped the frame");
    // Now an external interrupt while halted.
    interrupt(&mut m, 0x20);
    let s = &m.cpu.state;
    assert!(!s.halted);
    assert_eq!(cs_of(&m).selector, 0x0900);
    assert_eq!(cs_of(&m).base, 0x9000);
    assert_eq!(s.rip, 0x40);
    assert_eq!(s.rflags & rflags::IF, 0);
    assert_eq!(s.gpr[4], 0x6000 - 6);
    assert_eq!(get_u16(&m, 0x6000 - 6), 5, "IP");
    assert_eq!(get_u16(&m, 0x6000 - 4), 0x0700, "CS");
    assert_eq!(
        get_u16(&m, 0x6000 - 2) as u64,
        rflags::FIXED | rflags::IF,
        "FLAGS"
    );
}

/// Build a 32-bit protected-mode machine: flat kernel (0x08, 0x10) and user (0x1b, 0x23)
/// segments, a 32-bit TSS at 0x28 with ESP0 = 0x7f000, paging off.
fn protected_machine(code: &[u8]) -> TestMachine {
    let mut m = TestMachine::with_code(code);
    let [tss_lo, _] = tss_descriptor(TSS, 0x67);
    gdt(&mut m, &[0, CODE32_K, DATA_K, CODE32_U, DATA_U, tss_lo]);
    put_u32(&mut m, TSS + 4, 0x7f000);
    put_u32(&mut m, TSS + 8, 0x10);
    let s = &mut m.cpu.state;
    s.cr0 = cr0::PE | cr0::ET | cr0::NE;
    s.cr4 = 0;
    s.msr.efer = 0;
    let code_seg = Segment {
        selector: 0x08,
        base: 0,
        limit: 0xffff_ffff,
        attrs: 0xc09b,
    };
    let data = Segment {
        selector: 0x10,
        base: 0,
        limit: 0xffff_ffff,
        attrs: 0xc093,
    };
    s.seg = [data; 6];
    s.seg[SegReg::Cs as usize] = code_seg;
    s.tr = Segment {
        selector: 0x28,
        base: TSS,
        limit: 0x67,
        attrs: 0x8b,
    };
    s.gpr[4] = 0x80000;
    m.cpu.flush_tlb();
    m
}

/// Protected mode: IRETD to CPL 3; a #UD there switches to the TSS's SS0:ESP0 and pushes
/// SS, ESP, EFLAGS, CS, EIP; IRETD returns to CPL 3; a privileged HLT at CPL 3 raises #GP(0)
/// with its error code.
#[test]
fn protected_mode_privilege_change_and_back() {
    let user = CODE_BASE as u32 + 0x100;
    let kernel = asm(32, CODE_BASE, |a| {
        a.push(0x23)?;
        a.push(0x70000)?;
        a.push(0x202)?;
        a.push(0x1b)?;
        a.push(user as i32)?;
        a.iretd()
    });
    let user_code = asm(32, user as u64, |a| {
        a.mov(ebx, 0x55)?;
        a.ud2()?;
        a.mov(ecx, 0x66)?;
        a.hlt()
    });
    let ud_handler = asm(32, 0x30_0000, |a| {
        a.mov(esi, dword_ptr(esp + 16))?; // user SS
        a.mov(edi, dword_ptr(esp + 12))?; // user ESP
        a.add(dword_ptr(esp), 2)?;
        a.iretd()
    });
    let gp_handler = asm(32, 0x30_0100, |a| {
        a.mov(edx, dword_ptr(esp))?; // error code
        a.hlt()
    });
    let mut m = protected_machine(&kernel);
    put(&mut m, user as u64, &user_code);
    put(&mut m, 0x30_0000, &ud_handler);
    put(&mut m, 0x30_0100, &gp_handler);
    gate32(&mut m, 6, 0x30_0000, 0x08, 0, 0xe);
    gate32(&mut m, 13, 0x30_0100, 0x08, 0, 0xe);
    assert_eq!(m.cpu.state.mode(), CpuMode::Protected32);
    run_to_halt(&mut m);
    let s = &m.cpu.state;
    assert_eq!(s.gpr[3], 0x55);
    assert_eq!(s.gpr[1], 0x66, "returned past the UD2 at CPL 3");
    assert_eq!(s.gpr[6], 0x23);
    assert_eq!(s.gpr[7], 0x70000);
    assert_eq!(s.gpr[2], 0, "#GP(0) for HLT at CPL 3");
    assert_eq!(cs_of(&m).selector, 0x08);
    assert_eq!(ss_of(&m).selector, 0x10);
    // The #GP frame: error code, EIP of the HLT, CS, EFLAGS (IF set at CPL 3), ESP, SS.
    let top = s.gpr[4];
    assert_eq!(top, 0x7f000 - 24);
    assert_eq!(get_u32(&m, top + 4), user + 12);
    assert_eq!(get_u32(&m, top + 8), 0x1b);
    assert_eq!(get_u32(&m, top + 12) as u64 & rflags::IF, rflags::IF);
    assert_eq!(get_u32(&m, top + 16), 0x70000);
    assert_eq!(get_u32(&m, top + 20), 0x23);
    assert_eq!(s.rflags & rflags::IF, 0, "interrupt gate cleared IF");
}

/// Protected mode, same privilege: an external interrupt through a 32-bit trap gate pushes
/// EFLAGS, CS, EIP on the current stack and keeps IF.
#[test]
fn protected_mode_external_interrupt_same_privilege() {
    let mut m = protected_machine(&[0x90, 0xf4]);
    put(&mut m, 0x30_0000, &[0xf4]);
    gate32(&mut m, 0x30, 0x30_0000, 0x08, 0, 0xf);
    m.cpu.state.rflags |= rflags::IF;
    interrupt(&mut m, 0x30);
    let s = &m.cpu.state;
    assert_eq!(s.rip, 0x30_0000);
    assert_eq!(s.gpr[4], 0x80000 - 12);
    assert_eq!(get_u32(&m, 0x80000 - 12) as u64, CODE_BASE);
    assert_eq!(get_u32(&m, 0x80000 - 8), 0x08);
    assert_eq!(s.rflags & rflags::IF, rflags::IF, "trap gate keeps IF");
}

/// Long mode from user mode: an external interrupt through an IST gate switches to the IST
/// stack (aligned to 16), loads a null SS with RPL 0, and pushes SS, RSP, RFLAGS, CS, RIP.
#[test]
fn long_mode_interrupt_from_user_uses_tss_stacks() {
    let mut m = TestMachine::with_code(&[]);
    let [lo, hi] = tss_descriptor(TSS, 0x67);
    gdt(
        &mut m,
        &[0, CODE64_K, DATA_K, CODE32_U, DATA_U, CODE64_U, lo, hi],
    );
    put_u64(&mut m, TSS + 4, 0x70_0000); // RSP0
    put_u64(&mut m, TSS + 0x24 + 8, 0x60_0008); // IST2 (misaligned on purpose)
    m.cpu.state.tr = Segment {
        selector: 0x30,
        base: TSS,
        limit: 0x67,
        attrs: 0x8b,
    };
    put(&mut m, 0x30_0000, &[0xf4]);
    gate64(&mut m, 0x40, 0x30_0000, 0x08, 0, 0, 0xe);
    gate64(&mut m, 0x41, 0x30_0000, 0x08, 0, 2, 0xe);
    let s = &mut m.cpu.state;
    s.seg[SegReg::Cs as usize] = Segment {
        selector: 0x2b,
        base: 0,
        limit: 0xffff_ffff,
        attrs: 0xa0fb,
    };
    s.seg[SegReg::Ss as usize] = Segment {
        selector: 0x23,
        base: 0,
        limit: 0xffff_ffff,
        attrs: 0xc0f3,
    };
    s.gpr[4] = 0x12345;
    s.rip = 0x40_1000;
    s.rflags = rflags::FIXED | rflags::IF;
    assert_eq!(m.cpu.state.cpl(), 3);
    interrupt(&mut m, 0x40);
    let s = &m.cpu.state;
    assert_eq!(s.cpl(), 0);
    assert_eq!(ss_of(&m).selector, 0);
    assert_eq!(s.gpr[4], 0x70_0000 - 40);
    let f = 0x70_0000 - 40;
    assert_eq!(get_u64(&m, f), 0x40_1000);
    assert_eq!(get_u64(&m, f + 8), 0x2b);
    assert_eq!(get_u64(&m, f + 16), rflags::FIXED | rflags::IF);
    assert_eq!(get_u64(&m, f + 24), 0x12345);
    assert_eq!(get_u64(&m, f + 32), 0x23);
    // Back at CPL 3, the IST gate takes its own (aligned) stack.
    m.cpu.state.seg[SegReg::Cs as usize].selector = 0x2b;
    m.cpu.state.seg[SegReg::Ss as usize].selector = 0x23;
    m.cpu.state.gpr[4] = 0x12345;
    interrupt(&mut m, 0x41);
    assert_eq!(m.cpu.state.gpr[4], 0x60_0000 - 40);
}

/// Compatibility mode: an interrupt to a 64-bit handler pushes 8-byte slots and IRETQ
/// returns to the 32-bit code.
#[test]
fn compatibility_mode_interrupt_and_iretq() {
    let code = asm(32, CODE_BASE, |a| {
        a.mov(eax, 1)?;
        a.ud2()?;
        a.mov(ebx, 2)?;
        a.hlt()
    });
    let handler = asm(64, 0x30_0000, |a| {
        a.mov(rcx, qword_ptr(rsp + 8))?; // CS
        a.add(qword_ptr(rsp), 2)?;
        a.iretq()
    });
    let mut m = TestMachine::with_code(&code);
    gdt(&mut m, &[0, CODE64_K, DATA_K, CODE32_K]);
    put(&mut m, 0x30_0000, &handler);
    gate64(&mut m, 6, 0x30_0000, 0x08, 0, 0, 0xe);
    m.cpu.state.seg[SegReg::Cs as usize] = Segment {
        selector: 0x18,
        base: 0,
        limit: 0xffff_ffff,
        attrs: 0xc09b,
    };
    m.cpu.state.gpr[4] = 0x7f_fff0;
    assert_eq!(m.cpu.state.mode(), CpuMode::Protected32);
    run_to_halt(&mut m);
    let s = &m.cpu.state;
    assert_eq!(s.gpr[1], 0x18);
    assert_eq!(s.gpr[3], 2);
    assert_eq!(s.mode(), CpuMode::Protected32);
    assert_eq!(s.gpr[4], 0x7f_fff0);
}

/// The GDT of the user-mode tests, laid out like Linux's: kernel CS 0x10, kernel DS 0x18,
/// user32 CS 0x23, user DS 0x2b, user CS 0x33, TSS 0x40.
fn linux_like_gdt(m: &mut TestMachine) {
    let [lo, hi] = tss_descriptor(TSS, 0x67);
    gdt(
        m,
        &[
            0, CODE32_K, CODE64_K, DATA_K, CODE32_U, DATA_U, CODE64_U, 0, lo, hi,
        ],
    );
}

/// A kernel handler for vector `vec` that halts (at 0x30_0000, through a 64-bit interrupt
/// gate with [`linux_like_gdt`]'s kernel CS), and the TSS (RSP0 0x70_0000) it takes its stack
/// from when raised at CPL 3.
fn halting_kernel_handler(m: &mut TestMachine, vec: u8) {
    put(m, 0x30_0000, &[0xf4]);
    gate64(m, vec, 0x30_0000, 0x10, 0, 0, 0xe);
    put_u64(m, TSS + 4, 0x70_0000);
    m.cpu.state.tr = Segment {
        selector: 0x40,
        base: TSS,
        limit: 0x67,
        attrs: 0x8b,
    };
}

/// A user-mode round trip: IRETQ to CPL 3, SYSCALL back to the kernel (SWAPGS, GS-relative
/// load), SYSRETQ to user mode, a second SYSCALL that ends the test.
#[test]
fn user_mode_round_trip_with_iretq_syscall_sysret() {
    let user = CODE_BASE + 0x1000;
    let entry = CODE_BASE + 0x2000;
    let kernel = asm(64, CODE_BASE, |a| {
        // STAR, LSTAR, SFMASK (clear IF and DF), KERNEL_GS_BASE.
        a.mov(ecx, 0xc000_0081u32)?;
        a.xor(eax, eax)?;
        a.mov(edx, 0x0023_0010)?;
        a.wrmsr()?;
        a.mov(ecx, 0xc000_0082u32)?;
        a.mov(eax, entry as u32)?;
        a.xor(edx, edx)?;
        a.wrmsr()?;
        a.mov(ecx, 0xc000_0084u32)?;
        a.mov(eax, 0x600)?;
        a.wrmsr()?;
        a.mov(ecx, 0xc000_0102u32)?;
        a.mov(eax, 0x20_0000)?;
        a.wrmsr()?;
        a.mov(ax, 0x40)?;
        a.ltr(ax)?;
        a.push(0x2b)?;
        a.push(0x50_0000)?;
        a.push(0x202)?;
        a.push(0x33)?;
        a.mov(rax, user)?;
        a.push(rax)?;
        a.iretq()
    });
    let user_code = asm(64, user, |a| {
        a.mov(r8w, cs)?;
        a.mov(r9w, ss)?;
        a.mov(edi, 1)?;
        a.syscall()?;
        a.mov(r10w, cs)?;
        a.mov(edi, 99)?;
        a.syscall()?;
        a.hlt()
    });
    let entry_code = asm(64, entry, |a| {
        let mut done = a.create_label();
        a.swapgs()?;
        a.mov(rax, qword_ptr(0).gs())?;
        a.mov(r12w, cs)?;
        a.mov(r14w, ss)?;
        a.cmp(edi, 99)?;
        a.je(done)?;
        a.inc(r13)?;
        a.swapgs()?;
        a.sysretq()?;
        a.set_label(&mut done)?;
        a.hlt()
    });
    let mut m = TestMachine::with_code(&kernel);
    identity_map_user(&mut m);
    linux_like_gdt(&mut m);
    m.cpu.state.seg[SegReg::Cs as usize].selector = 0x10;
    m.cpu.state.seg[SegReg::Ss as usize].selector = 0x18;
    put(&mut m, user, &user_code);
    put(&mut m, entry, &entry_code);
    put_u64(&mut m, 0x20_0000, 0xfeed);
    run_to_halt(&mut m);
    let s = &m.cpu.state;
    assert_eq!(s.gpr[8] & 0xffff, 0x33, "user CS after IRETQ");
    assert_eq!(s.gpr[9] & 0xffff, 0x2b, "user SS after IRETQ");
    assert_eq!(s.gpr[10] & 0xffff, 0x33, "user CS after SYSRETQ");
    assert_eq!(s.gpr[12] & 0xffff, 0x10, "kernel CS after SYSCALL");
    assert_eq!(s.gpr[14] & 0xffff, 0x18, "kernel SS after SYSCALL");
    assert_eq!(s.gpr[13], 1, "one round trip before the second SYSCALL");
    assert_eq!(s.gpr[0], 0xfeed, "GS-relative load after SWAPGS");
    assert_eq!(s.cpl(), 0);
    assert_eq!(s.rip, entry + entry_code.len() as u64);
    // RCX = return address, R11 = user RFLAGS (IF set); SFMASK cleared IF.
    assert_eq!(s.gpr[1], user + user_code.len() as u64 - 1);
    assert_eq!(s.gpr[11] & rflags::IF, rflags::IF);
    assert_eq!(s.rflags & rflags::IF, 0);
    // LTR marked the TSS busy in the GDT.
    assert_eq!(m.bus.ram[GDT as usize + 0x40 + 5], 0x8b);
    assert_eq!(s.tr.selector, 0x40);
}

/// SYSRET without REX.W returns to 32-bit compatibility-mode code at STAR[63:48].
#[test]
fn sysret_to_compatibility_mode() {
    let user = CODE_BASE + 0x1000;
    let kernel = asm(64, CODE_BASE, |a| {
        a.mov(ecx, 0xc000_0081u32)?;
        a.xor(eax, eax)?;
        a.mov(edx, 0x0023_0010)?;
        a.wrmsr()?;
        a.mov(ecx, user as u32)?;
        a.mov(r11d, 0x2)?;
        a.sysret()
    });
    let mut m = TestMachine::with_code(&kernel);
    identity_map_user(&mut m);
    linux_like_gdt(&mut m);
    // CPL 3 cannot HLT: the #GP handler halts instead.
    put(&mut m, user, &[0x90, 0xf4]);
    halting_kernel_handler(&mut m, 13);
    run_to_halt(&mut m);
    // The frame of the #GP raised by HLT at CPL 3 in compatibility mode.
    let top = m.cpu.state.gpr[4];
    assert_eq!(get_u64(&m, top), 0, "error code");
    assert_eq!(get_u64(&m, top + 8), user + 1);
    assert_eq!(get_u64(&m, top + 16), 0x23);
    assert_eq!(get_u64(&m, top + 40), 0x2b);
}

/// SYSCALL is #UD without EFER.SCE; SYSRET and SWAPGS are #GP(0) at CPL 3.
#[test]
fn syscall_needs_sce() {
    let mut m = TestMachine::assemble(|a| a.syscall());
    m.cpu.state.msr.efer &= !efer::SCE;
    put(&mut m, 0x30_0000, &[0xf4]);
    gate64(&mut m, 6, 0x30_0000, 0x08, 0, 0, 0xe);
    run_to_halt(&mut m);
    assert_eq!(get_u64(&m, m.cpu.state.gpr[4]), CODE_BASE);
}

/// #PF under 32-bit paging (with a 4 MiB PSE page) and under PAE paging: error code, CR2,
/// accessed and dirty bits.
#[test]
fn page_faults_under_32_bit_and_pae_paging() {
    // 32-bit paging: PD at 0x10000; PDE 0 → PT at 0x11000 (identity, first 4 MiB,
    // supervisor, writable except page 0x200); PDE 1 = 4 MiB page → physical 0x800000.
    let code = asm(32, CODE_BASE, |a| {
        a.mov(eax, 0x10000)?;
        a.mov(cr3, eax)?;
        a.mov(eax, cr4)?;
        a.or(eax, cr4::PSE as i32)?;
        a.mov(cr4, eax)?;
        a.mov(eax, cr0)?;
        a.or(eax, 0x8001_0000u32 as i32)?; // PG | WP
        a.mov(cr0, eax)?;
        a.mov(ebx, dword_ptr(0x40_0010))?; // through the 4 MiB page
        a.mov(dword_ptr(0x20_0000), 1)?; // read-only page: #PF(P|W)
        a.hlt()
    });
    let handler = asm(32, 0x30_0000, |a| {
        a.mov(edx, dword_ptr(esp))?;
        a.mov(esi, cr2)?;
        a.hlt()
    });
    let mut m = protected_machine(&code);
    put(&mut m, 0x30_0000, &handler);
    gate32(&mut m, 14, 0x30_0000, 0x08, 0, 0xe);
    put_u32(&mut m, 0x10000, 0x11000 | 3);
    put_u32(&mut m, 0x10004, 0x80_0000 | 0x83);
    for p in 0..1024u32 {
        let rw = if p == 0x200 { 0 } else { 2 };
        put_u32(&mut m, 0x11000 + 4 * p as u64, p << 12 | 1 | rw);
    }
    put_u32(&mut m, 0x80_0010, 0xabcd);
    run_to_halt(&mut m);
    let s = &m.cpu.state;
    assert_eq!(s.gpr[3], 0xabcd);
    assert_eq!(s.gpr[2], 3, "present | write, supervisor");
    assert_eq!(s.gpr[6], 0x20_0000);
    assert_eq!(s.cr2, 0x20_0000);
    assert_eq!(get_u32(&m, 0x10004) & 0x20, 0x20, "4 MiB PDE accessed");
    let code_pte = get_u32(&m, 0x11000 + 4 * (CODE_BASE >> 12));
    assert_eq!(code_pte & 0x60, 0x20, "code page accessed, not dirty");
    let stack_pte = get_u32(&m, 0x11000 + 4 * ((0x80000 - 4) >> 12));
    assert_eq!(stack_pte & 0x60, 0x60, "stack page dirty");

    // PAE: PDPT at 0x12000 → PD at 0x13000: PDE 0 → PT at 0x14000 (identity), PDE 2 =
    // 2 MiB page at 0x400000 with NX. A fetch from it faults with I/D set; an access to
    // an unmapped 1 GiB region faults not-present.
    let code = asm(32, CODE_BASE, |a| {
        a.mov(ecx, 0xc000_0080u32)?;
        a.rdmsr()?;
        a.or(eax, 1 << 11)?; // NXE
        a.wrmsr()?;
        a.mov(eax, 0x12000)?;
        a.mov(cr3, eax)?;
        a.mov(eax, cr4)?;
        a.or(eax, cr4::PAE as i32)?;
        a.mov(cr4, eax)?;
        a.mov(eax, cr0)?;
        a.or(eax, 0x8000_0000u32 as i32)?;
        a.mov(cr0, eax)?;
        a.mov(ebx, dword_ptr(0x40_0010))?;
        a.mov(eax, 0x40_0000)?;
        a.call(eax)?;
        a.hlt()
    });
    let mut m = protected_machine(&code);
    put(&mut m, 0x30_0000, &handler);
    gate32(&mut m, 14, 0x30_0000, 0x08, 0, 0xe);
    put_u64(&mut m, 0x12000, 0x13000 | 1);
    put_u64(&mut m, 0x13000, 0x14000 | 3);
    put_u64(&mut m, 0x13000 + 8, 0x20_0000 | 0x83); // the handler's 2 MiB
    put_u64(&mut m, 0x13000 + 2 * 8, 0x40_0000 | 0x83 | 1 << 63);
    for p in 0..512u64 {
        put_u64(&mut m, 0x14000 + 8 * p, p << 12 | 3);
    }
    put_u32(&mut m, 0x40_0010, 0x5151);
    run_to_halt(&mut m);
    let s = &m.cpu.state;
    assert_eq!(s.gpr[3], 0x5151);
    assert_eq!(s.gpr[2], 0x11, "present | instruction fetch");
    assert_eq!(s.cr2, 0x40_0000);
    assert_eq!(get_u64(&m, 0x13000 + 16) & 0x60, 0x20, "2 MiB PDE accessed");

    // Not present under PAE: the PDPTE for 1..2 GiB is empty.
    let code = asm(32, CODE_BASE, |a| {
        a.mov(eax, 0x12000)?;
        a.mov(cr3, eax)?;
        a.mov(eax, cr4)?;
        a.or(eax, cr4::PAE as i32)?;
        a.mov(cr4, eax)?;
        a.mov(eax, cr0)?;
        a.or(eax, 0x8000_0000u32 as i32)?;
        a.mov(cr0, eax)?;
        a.mov(dword_ptr(0x4000_1000), eax)?;
        a.hlt()
    });
    let mut m2 = protected_machine(&code);
    put(&mut m2, 0x30_0000, &handler);
    gate32(&mut m2, 14, 0x30_0000, 0x08, 0, 0xe);
    for (at, v) in [
        (0x12000u64, 0x13001u64),
        (0x13000, 0x14003),
        (0x13008, 0x20_0083),
    ] {
        put_u64(&mut m2, at, v);
    }
    for p in 0..512u64 {
        put_u64(&mut m2, 0x14000 + 8 * p, p << 12 | 3);
    }
    run_to_halt(&mut m2);
    assert_eq!(m2.cpu.state.gpr[2], 2, "not present | write");
    assert_eq!(m2.cpu.state.cr2, 0x4000_1000);
}

/// WRMSR then RDMSR of every MSR the CPU keeps; read-only, reserved-bit and unknown MSRs
/// raise #GP(0).
#[test]
fn msrs_write_and_read_back() {
    let cases: [(u32, u64); 22] = [
        (0xc000_0080, efer::SCE | efer::LME | efer::LMA | efer::NXE),
        (0xc000_0081, 0x0023_0010_0000_0000),
        (0xc000_0082, 0xffff_ffff_8100_0000),
        (0xc000_0083, 0xffff_ffff_8100_1000),
        (0xc000_0084, 0x4_7700),
        (0xc000_0100, 0x7f00_1234_5000),
        (0xc000_0101, 0xffff_8880_0000_0000),
        (0xc000_0102, 0x1000),
        (0xc000_0103, 3),
        (0x174, 0x10),
        (0x175, 0xffff_fe00_0000_0000),
        (0x176, 0xffff_ffff_8100_2000),
        (0x1b, 0xfee0_0800),
        (0x1a0, 0x85_0089),
        (0x277, 0x0007_0406_0007_0406),
        (0x2ff, 0xc06),
        (0x200, 0x8000_0006),
        (0x201, 0xff_8000_0800),
        (0x250, 0x0606_0606_0606_0606),
        (0x268, 0x0505_0505_0505_0505),
        (0x26f, 0x0404_0404_0404_0404),
        (0x8b, 0),
    ];
    let buf = 0x20_0000u64;
    let code = asm(64, CODE_BASE, |a| {
        for (k, &(msr, v)) in cases.iter().enumerate() {
            a.mov(ecx, msr)?;
            a.mov(eax, v as u32)?;
            a.mov(edx, (v >> 32) as u32)?;
            a.wrmsr()?;
            a.xor(eax, eax)?;
            a.xor(edx, edx)?;
            a.rdmsr()?;
            a.mov(dword_ptr(buf + 8 * k as u64), eax)?;
            a.mov(dword_ptr(buf + 8 * k as u64 + 4), edx)?;
        }
        a.hlt()
    });
    let mut m = TestMachine::with_code(&code);
    run_to_halt(&mut m);
    for (k, &(msr, v)) in cases.iter().enumerate() {
        let expect = match msr {
            0x8b => 1 << 32,
            _ => v,
        };
        assert_eq!(get_u64(&m, buf + 8 * k as u64), expect, "MSR {msr:#x}");
    }
    let s = &m.cpu.state;
    assert_eq!(s.seg[SegReg::Fs as usize].base, 0x7f00_1234_5000);
    assert_eq!(s.msr.mtrr_var[1], 0xff_8000_0800);
    assert_eq!(s.msr.mtrr_fixed[10], 0x0404_0404_0404_0404);

    // TSC: the written value plus the bus clock's advance (1000 per read).
    let code = asm(64, CODE_BASE, |a| {
        a.mov(ecx, 0x10)?;
        a.mov(eax, 0x10_0000)?;
        a.xor(edx, edx)?;
        a.wrmsr()?;
        a.rdmsr()?;
        a.hlt()
    });
    let mut m = TestMachine::with_code(&code);
    run_to_halt(&mut m);
    assert_eq!(m.cpu.state.gpr[0], 0x10_0000 + 1000);

    // MTRRcap is read-only with 8 variable ranges, fixed ranges and WC.
    let code = asm(64, CODE_BASE, |a| {
        a.mov(ecx, 0xfe)?;
        a.rdmsr()?;
        a.hlt()
    });
    let mut m = TestMachine::with_code(&code);
    run_to_halt(&mut m);
    assert_eq!(m.cpu.state.gpr[0], 0x508);

    for (msr, value) in [
        (0xc000_0082u32, 0x8000_0000_0000u64), // non-canonical LSTAR
        (0xc000_0080, 1 << 12),                // reserved EFER bit
        (0x277, 0x02),                         // invalid PAT type
        (0xfe, 0),                             // read-only MTRRcap
        (0x1234, 0),                           // unknown: the bus refuses
        (0xc000_0084, 1 << 40),                // reserved SFMASK bits
    ] {
        let code = asm(64, CODE_BASE, |a| {
            a.mov(ecx, msr)?;
            a.mov(eax, value as u32)?;
            a.mov(edx, (value >> 32) as u32)?;
            a.wrmsr()?;
            a.hlt()
        });
        let mut m = TestMachine::with_code(&code);
        put(&mut m, 0x30_0000, &[0xf4]);
        gate64(&mut m, 13, 0x30_0000, 0x08, 0, 0, 0xe);
        run_to_halt(&mut m);
        assert_eq!(m.cpu.state.rip, 0x30_0001, "WRMSR {msr:#x} = {value:#x}");
        assert_eq!(get_u64(&m, m.cpu.state.gpr[4]), 0, "error code");
    }
}

/// The TLB keeps a stale translation until INVLPG or a CR3 write; global pages survive the
/// CR3 write but not a toggle of CR4.PGE.
#[test]
fn tlb_flushes_follow_the_sdm() {
    let pt = 0x5_0000u64;
    let va = 0x60_0000u64;
    let pte = |phys: u64, global: bool| phys | 3 | if global { 0x100 } else { 0 };
    let code = asm(64, CODE_BASE, |a| {
        a.mov(r10d, dword_ptr(va))?; // 0x11 (fills the TLB)
        a.mov(qword_ptr(pt), pte(0x9_1000, false) as i32)?;
        a.mov(ebx, dword_ptr(va))?; // stale: 0x11
        a.invlpg(ptr(va))?;
        a.mov(ecx, dword_ptr(va))?; // 0x22
        a.mov(qword_ptr(pt), pte(0x9_2000, false) as i32)?;
        a.mov(edx, dword_ptr(va))?; // stale: 0x22
        a.mov(rax, cr3)?;
        a.mov(cr3, rax)?;
        a.mov(esi, dword_ptr(va))?; // 0x33
                                    // A global page survives a CR3 write.
        a.mov(rax, cr4)?;
        a.or(eax, cr4::PGE as i32)?;
        a.mov(cr4, rax)?;
        a.mov(qword_ptr(pt), pte(0x9_1000, true) as i32)?;
        a.mov(rax, cr3)?;
        a.mov(cr3, rax)?;
        a.mov(edi, dword_ptr(va))?; // 0x22, now global
        a.mov(qword_ptr(pt), pte(0x9_2000, true) as i32)?;
        a.mov(rax, cr3)?;
        a.mov(cr3, rax)?;
        a.mov(r8d, dword_ptr(va))?; // stale global: 0x22
        a.mov(rax, cr4)?;
        a.and(eax, !(cr4::PGE as i32))?;
        a.mov(cr4, rax)?;
        a.mov(r9d, dword_ptr(va))?; // 0x33
        a.hlt()
    });
    let mut m = TestMachine::with_code(&code);
    // The PD entry for 6..8 MiB points to a 4 KiB page table.
    put_u64(&mut m, 0x3000 + 3 * 8, pt | 3);
    put_u64(&mut m, pt, pte(0x9_0000, false));
    put_u32(&mut m, 0x9_0000, 0x11);
    put_u32(&mut m, 0x9_1000, 0x22);
    put_u32(&mut m, 0x9_2000, 0x33);
    run_to_halt(&mut m);
    let g = |r: usize| m.cpu.state.gpr[r];
    assert_eq!(
        [g(10), g(3), g(1), g(2), g(6), g(7), g(8), g(9)],
        [0x11, 0x11, 0x22, 0x22, 0x33, 0x22, 0x22, 0x33]
    );
}

/// Segment loads: bad selectors fault with the selector as the error code; null SS is
/// allowed at CPL 0 in 64-bit mode; LSL reads a DPL-3 descriptor's limit (as the vDSO's
/// getcpu does).
#[test]
fn segment_loads_check_descriptors() {
    let not_present = DATA_K & !(1 << 47);
    for (selector, vector, code) in [
        (0x30u16, 13u64, 0x30u64), // beyond the GDT limit
        (0x08, 13, 0x08),          // execute-only code
        (0x20, 11, 0x20),          // not present
    ] {
        let mut exec_only = CODE64_K;
        exec_only &= !(2 << 40); // clear the readable bit
        let code_bytes = asm(64, CODE_BASE, |a| {
            a.mov(ax, selector as u32)?;
            a.mov(ds, ax)?;
            a.hlt()
        });
        let mut m = TestMachine::with_code(&code_bytes);
        gdt(&mut m, &[0, exec_only, DATA_K, CODE64_K, not_present]);
        put(&mut m, 0x30_0000, &[0xf4]);
        gate64(&mut m, 13, 0x30_0000, 0x18, 0, 0, 0xe);
        gate64(&mut m, 11, 0x30_0000, 0x18, 0, 0, 0xe);
        m.cpu.state.seg[SegReg::Cs as usize].selector = 0x18;
        run_to_halt(&mut m);
        assert_eq!(m.cpu.state.rip, 0x30_0001, "selector {selector:#x}");
        let top = m.cpu.state.gpr[4];
        assert_eq!(get_u64(&m, top), code, "error code for {selector:#x}");
        let frame_rip = get_u64(&m, top + 8);
        assert_eq!(
            frame_rip,
            CODE_BASE + 4,
            "vector {vector}: faults on the MOV"
        );
    }

    // Null SS at CPL 0 in 64-bit mode, and LSL/LAR of a user segment.
    let cpunode = 0x0040_f300_0000_0000u64 | 5; // DPL 3 data, limit = 5 (cpu 5, node 0)
    let code = asm(64, CODE_BASE, |a| {
        a.xor(eax, eax)?;
        a.mov(ss, ax)?;
        a.mov(ecx, 0x23)?;
        a.lsl(ebx, ecx)?;
        a.lar(edx, ecx)?;
        a.mov(ecx, 0x30)?;
        a.mov(esi, 0x99)?;
        a.lsl(esi, ecx)?; // beyond the limit: ZF = 0, ESI unchanged
        a.mov(rdi, 0x1122_3344_5566_7788u64)?;
        a.mov(fs, edi)?; // 0x7788 is beyond the GDT: #GP
        a.hlt()
    });
    let mut m = TestMachine::with_code(&code);
    gdt(&mut m, &[0, CODE64_K, DATA_K, 0, cpunode]);
    put(&mut m, 0x30_0000, &[0xf4]);
    gate64(&mut m, 13, 0x30_0000, 0x08, 0, 0, 0xe);
    run_to_halt(&mut m);
    let s = &m.cpu.state;
    assert_eq!(ss_of(&m).selector, 0);
    assert_eq!(s.gpr[3], 5);
    assert_eq!(s.gpr[2], 0x0040_f300);
    assert_eq!(s.gpr[6], 0x99);
    assert_eq!(get_u64(&m, s.gpr[4]), 0x7788 & 0xfffc);
}

/// Far transfers in 64-bit mode: LRETQ reloads CS the way Linux does after LGDT, JMP m16:64
/// and m16:32 through memory, far CALL and RETF.
#[test]
fn far_jumps_calls_and_returns() {
    let code = asm(64, CODE_BASE, |a| {
        let mut after_lret = a.create_label();
        let mut far_target = a.create_label();
        let mut after_jmp = a.create_label();
        let mut compat = a.create_label();
        a.push(0x10)?; // new CS (the same 64-bit code, second copy)
        a.lea(rax, ptr(after_lret))?;
        a.push(rax)?;
        a.retf()?;
        a.set_label(&mut after_lret)?;
        a.mov(r8w, cs)?;
        // JMP m16:64: offset at 0x200000, selector at 0x200008.
        a.lea(rax, ptr(after_jmp))?;
        a.mov(qword_ptr(0x20_0000), rax)?;
        a.mov(word_ptr(0x20_0008), 0x08)?;
        a.jmp(tword_ptr(0x20_0000))?;
        a.set_label(&mut after_jmp)?;
        a.mov(r9w, cs)?;
        // Far CALL through m16:64 to a RETFQ; the return comes back here.
        a.lea(rax, ptr(far_target))?;
        a.mov(qword_ptr(0x20_0010), rax)?;
        a.mov(word_ptr(0x20_0018), 0x10)?;
        a.mov(rbx, rsp)?;
        a.call(tword_ptr(0x20_0010))?;
        a.mov(r10w, cs)?;
        // JMP m16:32 into compatibility mode.
        a.lea(rax, ptr(compat))?;
        a.mov(dword_ptr(0x20_0020), eax)?;
        a.mov(word_ptr(0x20_0024), 0x18)?;
        a.jmp(fword_ptr(0x20_0020))?;
        a.set_label(&mut far_target)?;
        a.mov(r11, qword_ptr(rsp + 8))?; // pushed CS
        a.mov(r12w, cs)?;
        a.retf()?;
        a.set_label(&mut compat)?;
        // 32-bit code from here: `mov ecx, 0x42 ; hlt` encoded the same in both modes.
        a.mov(ecx, 0x42)?;
        a.hlt()
    });
    let mut m = TestMachine::with_code(&code);
    gdt(&mut m, &[0, CODE64_K, CODE64_K, CODE32_K, DATA_K]);
    run_to_halt(&mut m);
    let s = &m.cpu.state;
    assert_eq!(s.gpr[8] & 0xffff, 0x10);
    assert_eq!(s.gpr[9] & 0xffff, 0x08);
    assert_eq!(s.gpr[12] & 0xffff, 0x10);
    assert_eq!(s.gpr[11], 0x08);
    assert_eq!(s.gpr[10] & 0xffff, 0x08);
    assert_eq!(s.gpr[4], s.gpr[3], "far CALL/RETF balanced the stack");
    assert_eq!(s.gpr[1], 0x42);
    assert_eq!(s.mode(), CpuMode::Protected32);
}

/// NMIs are blocked from delivery until the handler's IRET.
#[test]
fn nmi_blocked_until_iret() {
    let handler = asm(64, 0x30_0000, |a| a.iretq());
    let mut m = TestMachine::with_code(&[0x90, 0x90, 0xf4]);
    put(&mut m, 0x30_0000, &handler);
    gate64(&mut m, 2, 0x30_0000, 0x08, 0, 0, 0xe);
    let nmi = |m: &mut TestMachine| {
        m.cpu
            .nmi(&mut m.bus, &mut NoObserver, &mut m.code)
            .expect("no stop")
    };
    assert!(nmi(&mut m));
    assert_eq!(m.cpu.state.rip, 0x30_0000);
    assert!(!nmi(&mut m), "blocked inside the handler");
    assert_eq!(m.run(1), RunExit::Budget);
    assert_eq!(m.cpu.state.rip, CODE_BASE);
    assert!(nmi(&mut m), "unblocked by IRET");
}

/// MOV SS holds off interrupts for one instruction, as STI does.
#[test]
fn mov_ss_shadow() {
    let mut m = TestMachine::assemble(|a| {
        a.mov(eax, 0x10)?;
        a.mov(ss, ax)?;
        a.nop()?;
        a.hlt()
    });
    m.cpu.state.rflags |= rflags::IF;
    assert_eq!(m.run(2), RunExit::Budget);
    assert!(!m.cpu.interrupts_enabled());
    assert_eq!(m.run(1), RunExit::Budget);
    assert!(m.cpu.interrupts_enabled());
}

/// Control registers: reserved bits fault, CR0.PG without PAE in long mode faults, CLTS,
/// LMSW and SMSW, CR8, DR7.
#[test]
fn control_register_rules() {
    let code = asm(64, CODE_BASE, |a| {
        a.mov(rax, cr0)?;
        a.or(eax, cr0::TS as i32)?;
        a.mov(cr0, rax)?;
        a.clts()?;
        a.smsw(bx)?;
        a.mov(eax, 0xf)?;
        a.mov(cr8, rax)?;
        a.mov(rcx, cr8)?;
        a.mov(eax, 0x401)?;
        a.mov(dr7, rax)?;
        a.mov(rdx, dr7)?;
        a.mov(rax, dr6)?;
        a.mov(rsi, 1u64 << 32)?;
        a.mov(cr0, rsi)?; // reserved: #GP
        a.hlt()
    });
    let mut m = TestMachine::with_code(&code);
    put(&mut m, 0x30_0000, &[0xf4]);
    gate64(&mut m, 13, 0x30_0000, 0x08, 0, 0, 0xe);
    run_to_halt(&mut m);
    let s = &m.cpu.state;
    assert_eq!(s.rip, 0x30_0001);
    assert_eq!(s.cr0 & cr0::TS, 0);
    assert_eq!(s.gpr[3] & 0xffff, s.cr0 & 0xffff);
    assert_eq!(s.gpr[1], 0xf);
    assert_eq!(s.gpr[2], 0x401);
    assert_eq!(s.gpr[0], 0xffff_0ff0);

    // Clearing CR4.PAE in long mode faults; an unknown CR4 bit (VMXE) faults.
    for v in [cr4::OSFXSR, cr4::PAE | (1 << 13)] {
        let code = asm(64, CODE_BASE, |a| {
            a.mov(rax, v)?;
            a.mov(cr4, rax)?;
            a.hlt()
        });
        let mut m = TestMachine::with_code(&code);
        put(&mut m, 0x30_0000, &[0xf4]);
        gate64(&mut m, 13, 0x30_0000, 0x08, 0, 0, 0xe);
        run_to_halt(&mut m);
        assert_eq!(m.cpu.state.rip, 0x30_0001, "CR4 = {v:#x}");
    }
}

/// Leaving long mode: from compatibility mode, clearing CR0.PG clears EFER.LMA.
#[test]
fn leaving_long_mode_through_compatibility_mode() {
    let code = asm(32, CODE_BASE, |a| {
        a.mov(eax, cr0)?;
        a.and(eax, 0x7fff_ffff)?;
        a.mov(cr0, eax)?;
        a.mov(ebx, dword_ptr(0x20_0000))?;
        a.hlt()
    });
    let mut m = TestMachine::with_code(&code);
    gdt(&mut m, &[0, CODE64_K, DATA_K, CODE32_K]);
    m.cpu.state.seg[SegReg::Cs as usize] = Segment {
        selector: 0x18,
        base: 0,
        limit: 0xffff_ffff,
        attrs: 0xc09b,
    };
    put_u32(&mut m, 0x20_0000, 0x77);
    run_to_halt(&mut m);
    let s = &m.cpu.state;
    assert_eq!(s.msr.efer & efer::LMA, 0);
    assert_eq!(s.mode(), CpuMode::Protected32);
    assert_eq!(s.gpr[3], 0x77);
}

/// The x87 control instructions Linux's FPU probe uses.
#[test]
fn x87_probe_sequence() {
    let code = asm(64, CODE_BASE, |a| {
        a.fninit()?;
        a.fnstsw(ax)?;
        a.mov(ebx, eax)?;
        a.fnstcw(word_ptr(0x20_0000))?;
        a.mov(word_ptr(0x20_0002), 0x27f)?;
        a.fldcw(word_ptr(0x20_0002))?;
        a.wait()?;
        a.fnstenv(ptr(0x20_0010))?;
        a.fldenv(ptr(0x20_0010))?;
        a.hlt()
    });
    let mut m = TestMachine::with_code(&code);
    m.cpu.state.fsw = 0x3800;
    m.cpu.state.ftw = 0xff;
    run_to_halt(&mut m);
    let s = &m.cpu.state;
    assert_eq!(s.gpr[3] & 0xffff, 0);
    assert_eq!(get_u16(&m, 0x20_0000), 0x37f);
    // FNSTENV stored FCW 0x27f, then masked all exceptions; FLDENV restored 0x27f.
    assert_eq!(get_u32(&m, 0x20_0010), 0xffff_027f);
    assert_eq!(get_u32(&m, 0x20_0018), 0xffff_ffff, "all registers empty");
    assert_eq!(s.fcw, 0x27f);
    assert_eq!(s.ftw, 0);
}

/// Software interrupts in legacy modes through [`crate::exec::deliver::software_interrupt`]:
/// the gate's DPL is checked against CPL in protected mode, and the return address is the
/// next instruction.
#[test]
fn software_interrupt_checks_gate_dpl_in_protected_mode() {
    use crate::exec::deliver::software_interrupt;
    use crate::exec::Exec;
    let mut m = protected_machine(&[0xcd, 0x80, 0xf4]);
    gate32(&mut m, 0x80, 0x30_0000, 0x08, 0, 0xe);
    m.cpu.state.seg[SegReg::Cs as usize].selector = 0x1b;
    m.cpu.state.seg[SegReg::Ss as usize].selector = 0x23;
    let int80 = |m: &mut TestMachine| {
        let mut obs = NoObserver;
        let mode = m.cpu.state.mode();
        let mut x = Exec {
            rip: CODE_BASE,
            next_rip: CODE_BASE + 2,
            ..Exec::new(&mut m.cpu, &mut m.bus, &mut obs, &mut m.code, mode)
        };
        let r = software_interrupt(&mut x, 0x80);
        (r, x.next_rip)
    };
    // At CPL 3 through a DPL-0 gate: #GP(0x80 * 8 + 2).
    let (r, _) = int80(&mut m);
    assert_eq!(
        r,
        Err(crate::fault::Fault::with_code(crate::fault::vector::GP, 0x80 * 8 + 2).into())
    );
    // Through a DPL-3 gate it switches to the kernel stack.
    gate32(&mut m, 0x80, 0x30_0000, 0x08, 3, 0xe);
    let (r, next) = int80(&mut m);
    assert_eq!(r, Ok(()));
    assert_eq!(next, 0x30_0000);
    assert_eq!(m.cpu.state.gpr[4], 0x7f000 - 20);
    assert_eq!(get_u32(&m, 0x7f000 - 20) as u64, CODE_BASE + 2);
    assert_eq!(get_u32(&m, 0x7f000 - 16), 0x1b);
}

/// Descriptor-table and segment instructions in 32-bit protected mode: SGDT/SIDT, LLDT/SLDT,
/// STR, LFS from an LDT selector, POP GS, VERR/VERW, ARPL, LSS.
#[test]
fn protected_mode_descriptor_instructions() {
    let out = 0x2_0000u64;
    let code = asm(32, CODE_BASE, |a| {
        a.sgdt(ptr(out))?;
        a.sidt(ptr(out + 0x10))?;
        a.mov(ax, 0x30)?;
        a.lldt(ax)?;
        a.sldt(bx)?;
        a.str(cx)?;
        a.mov(dword_ptr(out + 0x20), 0x1234_5678)?;
        a.mov(word_ptr(out + 0x24), 0x0c)?;
        a.lfs(edx, ptr(out + 0x20))?;
        a.push(0x10)?;
        a.pop(gs)?;
        a.mov(ax, 0x10)?;
        a.verr(ax)?;
        a.sete(byte_ptr(out + 0x30))?;
        a.verw(ax)?;
        a.sete(byte_ptr(out + 0x31))?;
        a.mov(ax, 0x08)?;
        a.verw(ax)?;
        a.sete(byte_ptr(out + 0x32))?;
        a.mov(si, 0x10)?;
        a.mov(di, 0x13)?;
        a.arpl(si, di)?;
        a.sete(byte_ptr(out + 0x33))?;
        a.mov(dword_ptr(out + 0x40), 0x6_0000)?;
        a.mov(word_ptr(out + 0x44), 0x10)?;
        a.lss(esp, ptr(out + 0x40))?;
        a.hlt()
    });
    let mut m = protected_machine(&code);
    let ldt = 0x9000u64;
    let ldt_desc = 0x0000_8200_0000_0017u64 | ldt << 16;
    let [tss_lo, _] = tss_descriptor(TSS, 0x67);
    gdt(
        &mut m,
        &[0, CODE32_K, DATA_K, CODE32_U, DATA_U, tss_lo, ldt_desc],
    );
    put_u64(&mut m, ldt + 8, DATA_K);
    m.cpu.state.idtr.base = IDT;
    m.cpu.state.idtr.limit = 0x7ff;
    run_to_halt(&mut m);
    let s = &m.cpu.state;
    assert_eq!(get_u16(&m, out), 55, "GDT limit");
    assert_eq!(get_u32(&m, out + 2) as u64, GDT);
    assert_eq!(get_u16(&m, out + 0x10), 0x7ff);
    assert_eq!(get_u32(&m, out + 0x12) as u64, IDT);
    assert_eq!(s.ldtr.base, ldt);
    assert_eq!(s.ldtr.limit, 0x17);
    assert_eq!(s.gpr[3] & 0xffff, 0x30);
    assert_eq!(s.gpr[1] & 0xffff, 0x28);
    assert_eq!(s.gpr[2], 0x1234_5678);
    assert_eq!(s.seg[SegReg::Fs as usize].selector, 0x0c);
    assert_eq!(s.seg[SegReg::Gs as usize].selector, 0x10);
    assert_eq!(
        &m.bus.ram[out as usize + 0x30..out as usize + 0x34],
        &[1, 1, 0, 1]
    );
    assert_eq!(s.gpr[6] & 0xffff, 0x13);
    assert_eq!(s.gpr[4], 0x6_0000);
}

/// RETF to an outer privilege level pops SS:RSP too and nulls data segments the new level
/// may not use.
#[test]
fn far_return_to_user_mode() {
    let user = CODE_BASE + 0x1000;
    let kernel = asm(64, CODE_BASE, |a| {
        a.push(0x2b)?;
        a.push(0x50_0000)?;
        a.push(0x33)?;
        a.mov(rax, user)?;
        a.push(rax)?;
        a.retf()
    });
    let mut m = TestMachine::with_code(&kernel);
    identity_map_user(&mut m);
    linux_like_gdt(&mut m);
    m.cpu.state.seg[SegReg::Cs as usize].selector = 0x10;
    m.cpu.state.seg[SegReg::Ss as usize].selector = 0x18;
    m.cpu.state.seg[SegReg::Ds as usize].selector = 0x18;
    put(&mut m, user, &[0xf4]);
    halting_kernel_handler(&mut m, 13);
    run_to_halt(&mut m);
    let top = m.cpu.state.gpr[4];
    assert_eq!(top, 0x70_0000 - 48);
    assert_eq!(get_u64(&m, top + 8), user);
    assert_eq!(get_u64(&m, top + 16), 0x33);
    assert_eq!(get_u64(&m, top + 32), 0x50_0000);
    assert_eq!(get_u64(&m, top + 40), 0x2b);
    assert_eq!(m.cpu.state.seg[SegReg::Ds as usize].selector, 0);
}

/// INIT puts a CPU in real mode waiting for a startup IPI, keeping MSRs and SSE state;
/// the SIPI starts it at vector << 12.
#[test]
fn init_and_startup_ipi() {
    let mut m = TestMachine::with_code(&[]);
    m.cpu.state.msr.apic_base = 0xfee0_0900;
    m.cpu.state.mxcsr = 0x1fa0;
    m.cpu.init();
    let s = &m.cpu.state;
    assert!(s.halted);
    assert_eq!(s.mode(), CpuMode::Real);
    assert_eq!(s.msr.efer, 0);
    assert_eq!(s.msr.apic_base, 0xfee0_0900);
    assert_eq!(s.mxcsr, 0x1fa0);
    assert_eq!(m.run(10), RunExit::Halted);
    put(
        &mut m,
        0x9_a000,
        &asm(16, 0, |a| {
            a.mov(ax, cs)?;
            a.hlt()
        }),
    );
    m.cpu.startup(0x9a);
    run_to_halt(&mut m);
    assert_eq!(m.cpu.state.gpr[0] & 0xffff, 0x9a00);
    assert_eq!(m.cpu.state.rip, 3);
}

/// An IRETQ to CPL 3 whose target is the instruction right after it: the rest of its block
/// must run at the new privilege, so the user code's read of a supervisor-only page (which
/// the kernel read just before, leaving its supervisor quick tags) faults with #PF — also
/// when that read starts a native stretch, whose quick-tag set is chosen once per run of
/// the run loop for its CPL.
#[test]
fn iretq_to_user_mode_at_the_next_instruction_runs_it_at_cpl_3() {
    let kernel = asm(64, CODE_BASE, |a| {
        let mut user = a.create_label();
        a.mov(r8, 0x20_0000u64)?;
        a.mov(rax, qword_ptr(r8))?;
        a.push(0x2b)?;
        a.push(0x50_0000)?;
        a.push(0x2)?;
        a.push(0x33)?;
        a.lea(rax, qword_ptr(user))?;
        a.push(rax)?;
        a.iretq()?;
        a.set_label(&mut user)?;
        // A stretch with a memory access at its start.
        a.mov(rbx, qword_ptr(r8))?;
        a.add(rbx, rcx)?;
        a.mov(rdx, rbx)?;
        a.add(rdx, 1)?;
        a.mov(rsi, rdx)?;
        a.hlt()
    });
    let mut m = TestMachine::with_code(&kernel);
    identity_map_user(&mut m);
    // 0x200000..0x400000 (the data and the #PF handler) for the supervisor only.
    let pde = get_u64(&m, 0x3008);
    put_u64(&mut m, 0x3008, pde & !4);
    linux_like_gdt(&mut m);
    m.cpu.state.seg[SegReg::Cs as usize].selector = 0x10;
    m.cpu.state.seg[SegReg::Ss as usize].selector = 0x18;
    put_u64(&mut m, 0x20_0000, 0x1234);
    halting_kernel_handler(&mut m, 14);
    run_to_halt(&mut m);
    let s = &m.cpu.state;
    assert_eq!(s.rip, 0x30_0001, "halted in the #PF handler");
    assert_eq!(s.cr2, 0x20_0000);
    assert_eq!(s.gpr[3], 0, "the faulting read loaded nothing");
    // The frame: error code (user read of a present page), then the user RIP and CS.
    let top = s.gpr[4];
    assert_eq!(get_u64(&m, top), 0b101, "error code U|P");
    assert_eq!(get_u64(&m, top + 16), 0x33);
}
