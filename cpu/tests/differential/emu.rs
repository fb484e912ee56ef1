//! Running a test sequence in the emulator, one instruction at a time.
//!
//! The machine is reprise-cpu's flat test machine (identity-mapped long mode, no IDT, so any
//! guest exception ends in a triple fault naming the first exception), switched to CPL 3 like
//! the host's test process: user-accessible pages, DPL-3 code and data segments, CR0.AM. The
//! test code sits at [`TEST`] followed by a HLT, which at CPL 3 raises #GP: that #GP at the
//! final HLT is the normal end. Scratch memory is at [`DATA`].

use reprise_cpu::state::{cr0, SegReg, Segment};
use reprise_cpu::testing::GDT;
use reprise_cpu::testing::{setup_long_mode, write_boot_tables, FlatBus, RecordingObserver};
use reprise_cpu::x87env::{EnvFormat, Environment};
use reprise_cpu::{Access, CodeCache, Cpu, CpuState, CpuidProfile, RunExit, StopReason};

use crate::common::{fl, Regs, CODE, CODE_SIZE, DATA, RAM, RSP, SCRATCH, TEST};

/// How the emulated run ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EmuEnd {
    /// Reached the HLT after the sequence.
    Halted,
    /// A guest exception (a triple fault, as there is no IDT).
    Fault {
        /// The first exception's vector.
        vector: u8,
        /// Its error code, if any.
        error_code: Option<u32>,
        /// The faulting linear address for #PF.
        cr2: Option<u64>,
    },
    /// Anything else (unimplemented instruction, unsupported feature, no halt...).
    Other(String),
}

/// One executed instruction.
#[derive(Clone, Debug)]
pub struct Step {
    /// The state before it.
    pub pre: CpuState,
    /// Its memory accesses.
    pub accesses: Vec<Access>,
}

/// What the emulator produced.
#[derive(Clone, Debug)]
pub struct EmuOutcome {
    /// How it ended.
    pub end: EmuEnd,
    /// Registers at the end (or at the faulting instruction).
    pub regs: Regs,
    /// RIP at the end: the HLT's address, or the faulting instruction's.
    pub rip: u64,
    /// The scratch region at the end.
    pub scratch: Vec<u8>,
    /// Every instruction executed, in order (including a faulting one, without the HLT).
    pub steps: Vec<Step>,
}

/// Instructions executed at most before the run is declared stuck.
const MAX_STEPS: usize = 10_000;

/// User code and stack selectors (RPL 3) in the GDT extended by [`enter_user_mode`]: the
/// ones x86-64 Linux gives its processes (GDT entries 6 and 5), so that MOV r/m, Sreg reads
/// the same values on both sides. DS, ES, FS and GS are null there, as on Linux.
const USER_CS: u16 = 0x30 | 3;
const USER_SS: u16 = 0x28 | 3;

/// The host's CS, SS, DS, ES, FS and GS selectors in this process.
fn host_selectors() -> [u16; 6] {
    let (mut cs, mut ss, mut ds, mut es, mut fs, mut gs): (u16, u16, u16, u16, u16, u16);
    // SAFETY: reading segment selectors has no side effects.
    unsafe {
        std::arch::asm!(
            "mov {0:x}, cs", "mov {1:x}, ss", "mov {2:x}, ds",
            "mov {3:x}, es", "mov {4:x}, fs", "mov {5:x}, gs",
            out(reg) cs, out(reg) ss, out(reg) ds, out(reg) es, out(reg) fs, out(reg) gs,
            options(nomem, nostack, preserves_flags)
        );
    }
    [cs, ss, ds, es, fs, gs]
}

/// Page-table entry bits.
const P: u64 = 1;
const RW: u64 = 1 << 1;
const US: u64 = 1 << 2;
const NX: u64 = 1 << 63;

fn put(ram: &mut [u8], at: u64, v: u64) {
    ram[at as usize..at as usize + 8].copy_from_slice(&v.to_le_bytes());
}

/// LAR's answer on the host for every GDT selector from 0x08 to 0x7f that is visible at
/// CPL 3 (the others, and selectors beyond the GDT, make LAR fail on both sides).
fn host_visible_descriptors() -> &'static [(u16, u32)] {
    static HOST: std::sync::OnceLock<Vec<(u16, u32)>> = std::sync::OnceLock::new();
    HOST.get_or_init(|| {
        (0x08u16..0x80)
            .step_by(8)
            .filter_map(|sel| {
                let mut rights = 0u32;
                let ok: u8;
                // SAFETY: LAR only reads the descriptor table; it writes a register and ZF.
                unsafe {
                    std::arch::asm!(
                        "lar {r:e}, {s:e}",
                        "setz {ok}",
                        s = in(reg) u32::from(sel | 3),
                        r = inout(reg) rights,
                        ok = out(reg_byte) ok,
                        options(nomem, nostack)
                    );
                }
                (ok != 0).then_some((sel, rights))
            })
            .collect()
    })
}

/// Replace the identity map of `write_boot_tables` (PML4 at 0x1000, PDPT at 0x2000,
/// directories from 0x3000) by one that maps exactly what the host's test process maps at
/// low addresses: the scratch region (user, writable, not executable) and the two code pages
/// (user, writable, executable). Everything else is not present, so a stray access faults on
/// both sides. Page tables at 0x8000 (0..2 MiB) and 0x9000 (2..4 MiB).
fn map_like_host(ram: &mut [u8]) {
    ram[0x2000..0xa000].fill(0);
    put(ram, 0x1000, 0x2000 | P | RW | US);
    put(ram, 0x2000, 0x3000 | P | RW | US);
    put(ram, 0x3000, 0x8000 | P | RW | US);
    put(ram, 0x3008, 0x9000 | P | RW | US);
    // The GDT page, supervisor-only as the host kernel's GDT is (LAR/VERR/VERW read it
    // with implicit supervisor accesses). A stray user access there would fault on both
    // sides, only with the error code's P bit differing; generated cases never make one.
    put(ram, 0x8000 + (GDT >> 12) * 8, GDT | P | RW | NX);
    for page in (DATA..DATA + SCRATCH as u64).step_by(0x1000) {
        put(ram, 0x8000 + (page >> 12) * 8, page | P | RW | US | NX);
    }
    for page in (CODE..CODE + CODE_SIZE as u64).step_by(0x1000) {
        put(ram, 0x9000 + ((page >> 12) & 0x1ff) * 8, page | P | RW | US);
    }
}

/// Make the test machine run at CPL 3 with the host's low mappings ([`map_like_host`]):
/// DPL-3 code and data descriptors appended to the GDT and loaded, and CR0.AM set as Linux
/// sets it.
fn enter_user_mode(cpu: &mut Cpu, ram: &mut [u8]) {
    map_like_host(ram);
    let host = host_selectors();
    assert_eq!(
        host,
        [USER_CS, USER_SS, 0, 0, 0, 0],
        "the harness mirrors x86-64 Linux's user selectors (CS, SS, DS, ES, FS, GS)"
    );
    let gdt = GDT as usize;
    ram[gdt + 0x28..gdt + 0x30].copy_from_slice(&0x00cf_f300_0000_ffffu64.to_le_bytes());
    ram[gdt + 0x30..gdt + 0x38].copy_from_slice(&0x00af_fb00_0000_ffffu64.to_le_bytes());
    // Every descriptor user code can see on the host (LAR, VERR and VERW look at them),
    // rebuilt from LAR's answer: the access byte (bits 8-15) and the flags (bits 20-23);
    // the base is not visible to those instructions, and the limit (all ones) is what LSL
    // reads on the host for every entry but the per-CPU one, which the generator keeps
    // away from LSL.
    for &(sel, rights) in host_visible_descriptors() {
        let rights = u64::from(rights);
        let d = 0xffff | (rights & 0xff00) << 32 | 0xf << 48 | ((rights >> 20) & 0xf) << 52;
        let at = gdt + usize::from(sel & !7);
        ram[at..at + 8].copy_from_slice(&d.to_le_bytes());
    }
    let s = &mut cpu.state;
    s.gdtr.limit = 0x7f;
    s.seg[SegReg::Cs as usize] = Segment {
        selector: USER_CS,
        base: 0,
        limit: 0xffff_ffff,
        attrs: 0xa0fb,
    };
    s.seg[SegReg::Ss as usize] = Segment {
        selector: USER_SS,
        base: 0,
        limit: 0xffff_ffff,
        attrs: 0xc0f3,
    };
    // Null data segments, usable in 64-bit mode.
    for r in [SegReg::Ds, SegReg::Es, SegReg::Fs, SegReg::Gs] {
        s.seg[r as usize] = Segment {
            selector: 0,
            ..s.seg[r as usize]
        };
    }
    s.cr0 |= cr0::AM;
    cpu.flush_tlb();
}

/// Run `code` (the test sequence followed by a HLT) from `input` with the given scratch.
pub fn run_emulator(code: &[u8], input: &Regs, scratch: &[u8]) -> EmuOutcome {
    let mut bus = FlatBus::new(RAM);
    write_boot_tables(&mut bus.ram);
    bus.ram[DATA as usize..DATA as usize + SCRATCH].copy_from_slice(scratch);
    bus.ram[TEST as usize..TEST as usize + code.len()].copy_from_slice(code);
    let mut cpu = Cpu::new(0, CpuidProfile::default());
    setup_long_mode(&mut cpu, TEST, input.gpr[RSP]);
    enter_user_mode(&mut cpu, &mut bus.ram);
    cpu.state.gpr = input.gpr;
    // IF as on the host, where user code always runs with interrupts enabled (PUSHF sees it).
    cpu.state.rflags = input.rflags | fl::FIXED | fl::IF;
    cpu.state.mxcsr = input.mxcsr as u32;
    cpu.state.xmm = input.xmm;
    let mut cache = CodeCache::new(RAM as u64);
    // Native stretches at decode: each test runs once.
    cache.set_native_threshold(0);
    let mut obs = RecordingObserver::default();
    let hlt = TEST + code.len() as u64 - 1;
    let mut steps = Vec::new();
    let end = loop {
        if steps.len() >= MAX_STEPS {
            break EmuEnd::Other(format!("no HLT after {MAX_STEPS} instructions"));
        }
        let pre = cpu.state.clone();
        obs.accesses.clear();
        let exit = cpu.run(&mut bus, &mut obs, &mut cache, 1);
        let at_hlt = pre.rip == hlt;
        if !at_hlt {
            steps.push(Step {
                pre: pre.clone(),
                accesses: std::mem::take(&mut obs.accesses),
            });
        }
        match exit {
            RunExit::Budget | RunExit::Paused => {}
            RunExit::Halted if at_hlt => {
                cpu.state.rip = hlt;
                break EmuEnd::Halted;
            }
            RunExit::Halted => {
                break EmuEnd::Other(format!("halted at {:#x}, not at the final HLT", pre.rip))
            }
            RunExit::BusExit => break EmuEnd::Other("bus exit".into()),
            RunExit::Stop(reason) => match *reason {
                StopReason::TripleFault { first, rip, .. } if rip == hlt && first.vector == 13 => {
                    cpu.state.rip = hlt;
                    break EmuEnd::Halted;
                }
                StopReason::TripleFault { first, rip, .. } => {
                    cpu.state.rip = rip;
                    break EmuEnd::Fault {
                        vector: first.vector,
                        error_code: first.error_code,
                        cr2: first.cr2,
                    };
                }
                other => break EmuEnd::Other(other.to_string()),
            },
        }
    };
    let s = &cpu.state;
    let x87env = match end {
        EmuEnd::Halted => Environment::of(s).encode(EnvFormat::Protected32),
        _ => [0; 7],
    };
    EmuOutcome {
        end,
        regs: Regs {
            gpr: s.gpr,
            rflags: s.rflags,
            mxcsr: s.mxcsr as u64,
            xmm: s.xmm,
            x87env,
        },
        rip: s.rip,
        scratch: bus.ram[DATA as usize..DATA as usize + SCRATCH].to_vec(),
        steps,
    }
}
