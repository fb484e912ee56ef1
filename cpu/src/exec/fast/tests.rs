//! Fast forms against their generic handlers: random instruction bytes whose decoding is a
//! fast form, each run from random states on three machines — fast paths with a recording
//! observer, generic handlers with a recording observer, and fast paths with no observer —
//! which must end in the same state, with the same memory and the same reported accesses
//! and context events (calls, returns).

use std::collections::BTreeMap;

use iced_x86::{ConditionCode, Decoder, DecoderOptions};

use super::{classify, condition_bits, Op};
use crate::code_cache::CodeCache;
use crate::cpuid::CpuidProfile;
use crate::exec::{Cpu, Group, RunExit};
use crate::observer::{Access, ContextEvent, NoObserver, Observer};
use crate::state::{rflags, CpuState, SegReg};
use crate::testing::{setup_long_mode, write_boot_tables, FlatBus, CODE_BASE};

/// xorshift64*: a fixed, seedable generator (the tests must be repeatable).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Records accesses and context events, in order.
#[derive(Default)]
struct Recorder {
    events: Vec<String>,
}

impl Observer for Recorder {
    const ENABLED: bool = true;
    fn access(&mut self, access: &Access) {
        self.events.push(format!("{access:?}"));
    }
    fn context(&mut self, cpu: u32, retired: u64, event: &ContextEvent) {
        self.events.push(format!("{cpu} {retired} {event:?}"));
    }
    fn begin_slice(&mut self, _cpu: u32, _global: u64, _retired: u64) {}
    fn hypercall(&mut self, _cpu: u32, _retired: u64, _call: &crate::observer::Hypercall<'_>) {}
    fn console(&mut self, _cpu: u32, _retired: u64, _bytes: &[u8]) {}
    fn device_write(&mut self, _cpu: u32, _retired: u64, _write: &crate::observer::DeviceWrite) {}
    fn wants_fetches(&self) -> bool {
        false
    }
}

/// RAM of the test machines (small, so that they are cheap to build).
const RAM: usize = 4 << 20;
/// Data that register values point into.
const DATA: u64 = 0x20_0000;
const DATA_LEN: u64 = 0x1_0000;
/// The stack.
const STACK: u64 = 0x3f_0000;
const STACK_LEN: u64 = 0x1_0000;

/// A machine of the test, with fast paths on or off.
struct Machine {
    cpu: Cpu,
    bus: FlatBus,
    code: CodeCache,
}

impl Machine {
    fn new(fast: bool) -> Machine {
        let mut code = CodeCache::new(RAM as u64);
        code.set_fast_paths(fast);
        // Native stretches at decode: each test runs once.
        code.set_native_threshold(0);
        Machine {
            cpu: Cpu::new(0, CpuidProfile::default()),
            bus: FlatBus::new(RAM),
            code,
        }
    }

    /// Reset everything a run may have changed (RAM outside the areas set here is not
    /// compared, and every write is also compared through the recorded accesses).
    fn reset(&mut self, insn: &[u8], state: &CpuState, data: &[u8], stack: &[u8]) {
        let ram = &mut self.bus.ram;
        ram[..0x8000].fill(0);
        write_boot_tables(ram);
        let c = CODE_BASE as usize;
        ram[c..c + 0x2000].fill(0);
        ram[c..c + insn.len()].copy_from_slice(insn);
        ram[c + insn.len()] = 0xf4; // hlt
        let d = DATA as usize;
        ram[d..d + data.len()].copy_from_slice(data);
        let s = (STACK - STACK_LEN) as usize;
        ram[s..s + stack.len()].copy_from_slice(stack);
        self.bus.exit = None;
        self.cpu.state = state.clone();
        self.cpu.flush_tlb();
        self.code.clear();
    }

    fn run<O: Observer>(&mut self, obs: &mut O) -> RunExit {
        self.cpu.run(&mut self.bus, obs, &mut self.code, 2)
    }

    /// The memory an instruction of the test can change: page tables (accessed and dirty
    /// bits), the code page, data and stack.
    fn memory(&self) -> Vec<u8> {
        let r = &self.bus.ram;
        let c = CODE_BASE as usize;
        let d = DATA as usize;
        let s = (STACK - STACK_LEN) as usize;
        let mut v = r[..0x8000].to_vec();
        v.extend_from_slice(&r[c..c + 0x2000]);
        v.extend_from_slice(&r[d..d + DATA_LEN as usize + 0x1000]);
        v.extend_from_slice(&r[s..s + STACK_LEN as usize + 0x1000]);
        v
    }
}

/// A random register value: mostly addresses into the data area (so memory operands
/// usually hit RAM, sometimes across a page boundary), otherwise small or arbitrary.
fn reg_value(rng: &mut Rng) -> u64 {
    match rng.below(10) {
        0..=4 => DATA + rng.below(DATA_LEN),
        5 => DATA + 0x1000 - 1 - rng.below(8),
        6 => rng.below(256),
        7 => [0, 1, u64::MAX, 0x7fff_ffff, 0x8000_0000, 1 << 63][rng.below(6) as usize],
        _ => rng.next(),
    }
}

fn random_state(rng: &mut Rng) -> CpuState {
    let mut cpu = Cpu::new(0, CpuidProfile::default());
    setup_long_mode(&mut cpu, CODE_BASE, STACK);
    let s = &mut cpu.state;
    for r in 0..16 {
        s.gpr[r] = reg_value(rng);
    }
    s.gpr[4] = STACK - 0x100 - rng.below(0x100) * if rng.below(4) == 0 { 1 } else { 8 };
    s.rflags = rflags::FIXED | (rng.next() & rflags::STATUS);
    s.seg[SegReg::Fs as usize].base = if rng.below(2) == 0 { 0 } else { DATA };
    s.seg[SegReg::Gs as usize].base = DATA + 0x8000;
    for x in s.xmm.iter_mut() {
        *x = (rng.next() as u128) << 64 | rng.next() as u128;
    }
    cpu.state
}

fn random_bytes(rng: &mut Rng, n: usize) -> Vec<u8> {
    (0..n).map(|_| rng.next() as u8).collect()
}

/// Random instruction bytes, biased towards operand-size/SSE prefixes, REX prefixes and
/// two-byte opcodes.
fn random_insn(rng: &mut Rng) -> Vec<u8> {
    let mut b = random_bytes(rng, 15);
    let mut at = 0;
    if rng.below(4) == 0 {
        b[at] = [0x66, 0xf2, 0xf3][rng.below(3) as usize];
        at += 1;
    }
    if rng.below(3) == 0 {
        b[at] = 0x40 | rng.below(16) as u8;
        at += 1;
    }
    if rng.below(3) == 0 {
        b[at] = 0x0f;
    }
    b
}

/// The three machines of the comparison.
struct Trio {
    fast: Machine,
    slow: Machine,
    plain: Machine,
}

/// Run one instruction from one state on the three machines and compare.
fn check(t: &mut Trio, insn: &[u8], state: &CpuState, data: &[u8], stack: &[u8], what: &str) {
    let Trio { fast, slow, plain } = t;
    for m in [&mut *fast, &mut *slow, &mut *plain] {
        m.reset(insn, state, data, stack);
    }
    let mut fast_obs = Recorder::default();
    let mut slow_obs = Recorder::default();
    let e_fast = fast.run(&mut fast_obs);
    let e_slow = slow.run(&mut slow_obs);
    let e_plain = plain.run(&mut NoObserver);
    assert_eq!(e_fast, e_slow, "{what}: exit");
    assert_eq!(e_plain, e_slow, "{what}: exit without observer");
    assert_eq!(fast.cpu.state, slow.cpu.state, "{what}: state");
    assert_eq!(
        plain.cpu.state, slow.cpu.state,
        "{what}: state without observer"
    );
    assert_eq!(
        fast_obs.events, slow_obs.events,
        "{what}: accesses and events"
    );
    assert!(fast.memory() == slow.memory(), "{what}: memory");
    assert!(
        plain.memory() == slow.memory(),
        "{what}: memory without observer"
    );
}

#[test]
fn fast_forms_match_generic_handlers() {
    let mut rng = Rng(0x5eed_f00d_1234_5678);
    let groups = crate::exec::group_table();
    // Up to this many distinct encodings per fast op, operand size and sub-kind (condition,
    // SSE operation), each from STATES random states.
    const PER_KEY: usize = 8;
    const STATES: usize = 4;
    let mut cases: BTreeMap<String, Vec<Vec<u8>>> = BTreeMap::new();
    for _ in 0..400_000 {
        let bytes = random_insn(&mut rng);
        let mut decoder = Decoder::with_ip(64, &bytes, 0, DecoderOptions::NONE);
        let insn = decoder.decode();
        if insn.is_invalid() {
            continue;
        }
        let group = groups[insn.code() as usize];
        let (op, o) = classify(&insn, group, 64, 0);
        if op == super::generic(group) {
            continue;
        }
        let list = cases
            .entry(format!("{op:?} size {} kind {}", o.size, o.cc))
            .or_default();
        if list.len() < PER_KEY {
            list.push(bytes[..insn.len()].to_vec());
        }
    }
    // Every fast form must have been generated (else the generator needs a nudge).
    let all = [
        Op::MovRR,
        Op::MovRI,
        Op::MovRM,
        Op::MovMR,
        Op::MovMI,
        Op::MovzxRR,
        Op::MovzxRM,
        Op::MovsxRR,
        Op::MovsxRM,
        Op::Lea,
        Op::AddRR,
        Op::AddRI,
        Op::AddRM,
        Op::AddMR,
        Op::AddMI,
        Op::OrRR,
        Op::AdcRM,
        Op::SbbMI,
        Op::AndMR,
        Op::SubRI,
        Op::XorRR,
        Op::CmpRR,
        Op::CmpRI,
        Op::CmpRM,
        Op::CmpMR,
        Op::CmpMI,
        Op::TestRR,
        Op::TestRI,
        Op::TestMR,
        Op::TestMI,
        Op::IncR,
        Op::DecR,
        Op::NegR,
        Op::NotR,
        Op::ShlRI,
        Op::ShrRI,
        Op::SarRI,
        Op::RolRI,
        Op::RorRI,
        Op::ImulRR,
        Op::ImulRM,
        Op::ImulRRI,
        Op::CmovRR,
        Op::CmovRM,
        Op::SetccR,
        Op::SetccM,
        Op::Jo,
        Op::Jb,
        Op::Jbe,
        Op::Jl,
        Op::Jle,
        Op::Jg,
        Op::JmpRel,
        Op::CallRel,
        Op::Ret,
        Op::PushR,
        Op::PopR,
        Op::Nop,
        Op::IncM,
        Op::DecM,
        Op::CallR,
        Op::CallM,
        Op::PushF,
        Op::ShiftRC,
        Op::PushI,
        Op::BtRI,
        Op::BtMI,
        Op::SseMov,
        Op::SseFloat,
        Op::SseInt,
        Op::XmmMovRR,
        Op::XmmLoad,
        Op::XmmStore,
        Op::XmmMovqRR,
        Op::XmmMovqRM,
        Op::XmmMovqMR,
        Op::XmmBinRR,
        Op::XmmBinRM,
        Op::XmmShiftI,
    ];
    for op in all {
        let name = format!("{op:?} ");
        assert!(
            cases.keys().any(|k| k.starts_with(&name)),
            "no random instruction decoded as {op:?}"
        );
    }
    eprintln!("{} fast-form keys", cases.len());
    let mut trio = Trio {
        fast: Machine::new(true),
        slow: Machine::new(false),
        plain: Machine::new(true),
    };
    let mut runs = 0;
    for (op, list) in &cases {
        for bytes in list {
            for _ in 0..STATES {
                let state = random_state(&mut rng);
                let data = random_bytes(&mut rng, DATA_LEN as usize);
                let mut stack = random_bytes(&mut rng, STACK_LEN as usize);
                if rng.below(2) == 0 {
                    // A return address that RET can go to (else it would nearly always fault
                    // on a non-canonical one).
                    let at = (state.gpr[4] - (STACK - STACK_LEN)) as usize;
                    let target = CODE_BASE + rng.below(0x1000);
                    stack[at..at + 8].copy_from_slice(&target.to_le_bytes());
                }
                let hex: Vec<String> = bytes.iter().map(|b| format!("{b:02x}")).collect();
                let what = format!("{op} [{}]", hex.join(" "));
                check(&mut trio, bytes, &state, &data, &stack, &what);
                runs += 1;
            }
        }
    }
    assert!(runs > 1000, "only {runs} runs");
}

#[test]
fn condition_bits_match_condition() {
    use crate::state::rflags::{CF, OF, PF, SF, ZF};
    let mut m = crate::testing::TestMachine::with_code(&[0xf4]);
    let ccs = [
        ConditionCode::None,
        ConditionCode::o,
        ConditionCode::no,
        ConditionCode::b,
        ConditionCode::ae,
        ConditionCode::e,
        ConditionCode::ne,
        ConditionCode::be,
        ConditionCode::a,
        ConditionCode::s,
        ConditionCode::ns,
        ConditionCode::p,
        ConditionCode::np,
        ConditionCode::l,
        ConditionCode::ge,
        ConditionCode::le,
        ConditionCode::g,
    ];
    for bits in 0..32u64 {
        let f = [CF, PF, ZF, SF, OF]
            .iter()
            .enumerate()
            .fold(
                0,
                |f, (k, &flag)| if bits >> k & 1 != 0 { f | flag } else { f },
            );
        m.cpu.state.rflags = rflags::FIXED | f;
        let mut obs = NoObserver;
        let x = crate::exec::Exec::new(
            &mut m.cpu,
            &mut m.bus,
            &mut obs,
            &mut m.code,
            crate::state::CpuMode::Long64,
        );
        for cc in ccs {
            assert_eq!(
                condition_bits(x.cpu.state.rflags, cc as u8),
                x.condition(cc),
                "{cc:?} with flags {f:#x}"
            );
        }
    }
}

#[test]
fn locked_and_non_64_bit_instructions_stay_generic() {
    let groups = crate::exec::group_table();
    let decode = |bitness: u32, bytes: &[u8]| {
        let insn = Decoder::with_ip(bitness, bytes, 0, DecoderOptions::NONE).decode();
        let group = groups[insn.code() as usize];
        (classify(&insn, group, bitness, 0).0, group)
    };
    // lock add [rax], ebx
    let (op, group) = decode(64, &[0xf0, 0x01, 0x18]);
    assert_eq!((op, group), (Op::GAlu, Group::Alu));
    // add [eax], ebx (32-bit address size)
    assert_eq!(decode(64, &[0x67, 0x01, 0x18]).0, Op::GAlu);
    // add ah, bl
    assert_eq!(decode(64, &[0x00, 0xdc]).0, Op::GAlu);
    // add [eax], ebx in 32-bit code
    assert_eq!(decode(32, &[0x01, 0x18]).0, Op::GAlu);
    // push ax
    assert_eq!(decode(64, &[0x66, 0x50]).0, Op::GStack);
    // add [rax], ebx
    assert_eq!(decode(64, &[0x01, 0x18]).0, Op::AddMR);
}

/// The fused compare-and-branch forms (`fuse`, table.rs `cmp_jcc`).
mod fused {
    use super::super::Fused;
    use super::Rng;
    use crate::exec::RunExit;
    use crate::flags::holds;
    use crate::observer::AccessKind;
    use crate::state::rflags::{CF, OF, PF, SF, ZF};
    use crate::state::CpuState;
    use crate::testing::{setup_long_mode, RecordingObserver, TestMachine, CODE_BASE, STACK_TOP};

    /// Each fused condition test agrees with the condition on every combination of the
    /// five flags it may read; JO/JNO have none (they are not fused).
    #[test]
    fn fused_conditions_match_holds() {
        use super::super::Op::*;
        let jumps = [
            Jo, Jno, Jb, Jae, Je, Jne, Jbe, Ja, Js, Jns, Jp, Jnp, Jl, Jge, Jle, Jg,
        ];
        for (k, op) in jumps.into_iter().enumerate() {
            let Some(t) = Fused::of(op) else {
                assert!(k < 2, "{op:?}");
                continue;
            };
            for bits in 0..32u64 {
                let f = [CF, PF, ZF, SF, OF]
                    .iter()
                    .enumerate()
                    .fold(0, |f, (n, b)| if bits >> n & 1 != 0 { f | b } else { f });
                assert_eq!(
                    Fused::holds(t.mask, t.signed, t.negate, f),
                    holds(f, k as u8 + 1),
                    "{op:?} {f:#x}"
                );
            }
        }
    }

    /// The compares that fuse (register/register and register/immediate CMP and TEST at
    /// every size), encoded with RAX/AL and RBX/BL.
    const COMPARES: [&[u8]; 14] = [
        &[0x48, 0x39, 0xd8],             // cmp rax, rbx
        &[0x39, 0xd8],                   // cmp eax, ebx
        &[0x66, 0x39, 0xd8],             // cmp ax, bx
        &[0x38, 0xd8],                   // cmp al, bl
        &[0x48, 0x83, 0xf8, 0x80],       // cmp rax, -128
        &[0x81, 0xf8, 0, 0, 0, 0x80],    // cmp eax, 0x80000000
        &[0x66, 0x83, 0xf8, 0x01],       // cmp ax, 1
        &[0x3c, 0x7f],                   // cmp al, 0x7f
        &[0x48, 0x85, 0xd8],             // test rax, rbx
        &[0x85, 0xd8],                   // test eax, ebx
        &[0x66, 0x85, 0xd8],             // test ax, bx
        &[0x84, 0xd8],                   // test al, bl
        &[0x48, 0xa9, 0xff, 0, 0, 0x80], // test rax, 0xffffffff800000ff
        &[0xa8, 0x81],                   // test al, 0x81
    ];

    /// `compare; jcc +2; mov cl, 1; pushfq; pop rdx; ud2`: the branch decides CL, PUSHFQ
    /// (a reader of RFLAGS out of line) then shows the compare's flags, and the UD2 (#UD
    /// with no IDT: the machine stops) faults with the count and address it must have.
    fn program(compare: &[u8], cc: u8) -> Vec<u8> {
        let mut p = compare.to_vec();
        p.extend_from_slice(&[0x70 + cc - 1, 2, 0xb1, 1, 0x9c, 0x5a, 0x0f, 0x0b]);
        p
    }

    /// Run `fast` and `slow` (the same program and state, fast paths on and off) for
    /// `budget` instructions, then on to the end, checking after each step that their
    /// states are the same, then that they stopped the same way (`what` names the case).
    fn run_side_by_side(fast: &mut TestMachine, slow: &mut TestMachine, budget: u64, what: &str) {
        let (mut ef, mut es) = (RunExit::Budget, RunExit::Budget);
        // A budget, then the rest.
        for step in [budget, 100] {
            ef = fast.run(step);
            es = slow.run(step);
            assert_eq!(fast.cpu.state, slow.cpu.state, "{what}");
            if !matches!(ef, RunExit::Budget) {
                break;
            }
        }
        assert_eq!(format!("{ef:?}"), format!("{es:?}"), "{what}");
    }

    /// Machine `m` made to run `bytes` from the state of `seed`, with fast paths on or off
    /// (the machines are reused: building one clears 16 MiB).
    fn machine(m: &mut TestMachine, bytes: &[u8], fast: bool, rng: &mut Rng, seed: u64) {
        let c = CODE_BASE as usize;
        m.bus.ram[c..c + bytes.len()].copy_from_slice(bytes);
        m.cpu.state = CpuState::default();
        setup_long_mode(&mut m.cpu, CODE_BASE, STACK_TOP);
        m.code.clear();
        m.code.set_fast_paths(fast);
        *rng = Rng(seed);
        let pick = |rng: &mut Rng| match rng.below(4) {
            0 => 0,
            1 => rng.below(3),
            2 => 1 << rng.below(64),
            _ => rng.next(),
        };
        m.cpu.state.gpr[0] = pick(rng);
        m.cpu.state.gpr[3] = if rng.below(4) == 0 {
            m.cpu.state.gpr[0]
        } else {
            pick(rng)
        };
        m.cpu.state.rflags |= rng.next() & crate::state::rflags::STATUS;
    }

    /// Every fused pair, every condition, run to the end and with every budget (so the
    /// budget also ends between the compare and its jump), with fast paths (fused) and
    /// with generic handlers only (never fused): the same state after each run, the same
    /// count, the same fault.
    #[test]
    fn fused_pairs_match_generic_handlers() {
        let mut rng = Rng(0);
        let mut fast = TestMachine::with_code(&[]);
        let mut slow = TestMachine::with_code(&[]);
        for compare in COMPARES {
            for cc in 1..=16u8 {
                let bytes = program(compare, cc);
                for seed in 1..=12u64 {
                    for budget in [1u64, 2, 3, 100] {
                        machine(&mut fast, &bytes, true, &mut rng, seed);
                        machine(&mut slow, &bytes, false, &mut rng, seed);
                        run_side_by_side(
                            &mut fast,
                            &mut slow,
                            budget,
                            &format!("{compare:x?} {cc}"),
                        );
                        // The UD2 comes after four instructions on the taken path, five on
                        // the other; it does not retire.
                        let s = &fast.cpu.state;
                        assert_eq!(s.retired, 4 + (s.gpr[1] & 0xff), "{compare:x?} {cc}");
                    }
                }
            }
        }
    }

    /// With an observer, a fused compare runs alone (the Jcc through its own entry): the
    /// same state as without one, and an access reported at the Jcc's own address and
    /// count (the fetch-less observer sees the stack writes of PUSHFQ).
    #[test]
    fn fused_pairs_under_an_observer() {
        let mut rng = Rng(0);
        let mut plain = TestMachine::with_code(&[]);
        let mut seen = TestMachine::with_code(&[]);
        for compare in COMPARES {
            let bytes = program(compare, 6);
            for seed in 1..=6u64 {
                machine(&mut plain, &bytes, true, &mut rng, seed);
                machine(&mut seen, &bytes, true, &mut rng, seed);
                plain.run(100);
                let mut obs = RecordingObserver::default();
                let mut exit = RunExit::Budget;
                while seen.cpu.state.retired < 100 && matches!(exit, RunExit::Budget) {
                    exit = seen.cpu.run(&mut seen.bus, &mut obs, &mut seen.code, 100);
                }
                assert_eq!(plain.cpu.state, seen.cpu.state);
                let push = obs
                    .accesses
                    .iter()
                    .find(|a| matches!(a.kind, AccessKind::Write))
                    .expect("a push");
                // PUSHFQ comes after the compare, the jump and (not taken) the MOV.
                assert_eq!(push.retired, 2 + (seen.cpu.state.gpr[1] & 0xff));
            }
        }
    }

    /// Compares with a memory operand at `[rsi]` (RAX/AL and RBX/BL for registers): the
    /// fused ones (table.rs `fused_memory_index`) and, as a check that fusing leaves them
    /// alone, some that are not.
    const MEMORY_COMPARES: [&[u8]; 14] = [
        &[0x80, 0x3e, 0x7f],                         // cmp byte [rsi], 0x7f (fused)
        &[0x80, 0x3e, 0x80],                         // cmp byte [rsi], 0x80 (fused)
        &[0xf6, 0x06, 0x81],                         // test byte [rsi], 0x81 (fused)
        &[0x3a, 0x1e],                               // cmp bl, [rsi] (fused)
        &[0x48, 0x39, 0x1e],                         // cmp [rsi], rbx (fused)
        &[0x39, 0x1e],                               // cmp [rsi], ebx (fused)
        &[0x66, 0x39, 0x1e],                         // cmp [rsi], bx (fused)
        &[0x38, 0x1e],                               // cmp [rsi], bl (fused)
        &[0x48, 0x39, 0x5e, 0x08],                   // cmp [rsi + 8], rbx (fused)
        &[0x83, 0x3e, 0xff],                         // cmp dword [rsi], -1
        &[0x48, 0x81, 0x3e, 0, 0, 0, 0x80],          // cmp qword [rsi], -0x80000000
        &[0x48, 0x3b, 0x1e],                         // cmp rbx, [rsi]
        &[0x85, 0x1e],                               // test [rsi], ebx
        &[0x80, 0x3d, 0x00, 0x01, 0x00, 0x00, 0x01], // cmp byte [rip + 0x100], 1 (fused)
    ];

    /// `mov r8, [rdi]; compare; jcc +2; mov cl, 1; pushfq; pop rdx; ud2`: the load first
    /// puts `[rdi]`'s page in the TLB (the compare's read is a TLB hit when RDI = RSI),
    /// then as [`program`].
    fn memory_program(compare: &[u8], cc: u8) -> Vec<u8> {
        let mut p = vec![0x4c, 0x8b, 0x07];
        p.extend_from_slice(&program(compare, cc));
        p
    }

    /// Where the memory compare reads (RSI) and the load before it (RDI), by case: RAM with
    /// its page in the TLB, RAM not yet in the TLB, a read crossing a page (RAM, in the
    /// TLB), past RAM (the test bus's "device": reads all ones and ends the block), and an
    /// unmapped page (#PF, which stops the machine: it has no IDT).
    const CASES: [(u64, u64); 5] = [
        (0x20_0100, 0x20_0100),
        (0x20_0100, 0x60_0000),
        (0x20_0ffd, 0x20_0ffd),
        (0x4000_0000, 0x4000_0000),
        (0x1_0000_0000, 0x60_0000),
    ];

    /// Machine `m` made to run `bytes` from the state of `seed` in case `case`
    /// ([`CASES`]), with fast paths on or off; RAM around the operand gets values from
    /// the seed, often equal to RBX.
    fn memory_machine(
        m: &mut TestMachine,
        bytes: &[u8],
        fast: bool,
        rng: &mut Rng,
        seed: u64,
        case: usize,
    ) {
        machine(m, bytes, fast, rng, seed);
        let (rsi, rdi) = CASES[case];
        (m.cpu.state.gpr[6], m.cpu.state.gpr[7]) = (rsi, rdi);
        let mut data = [0u8; 32];
        for k in 0..4 {
            let v = match rng.below(3) {
                0 => m.cpu.state.gpr[3],
                1 => m.cpu.state.gpr[3] ^ (1 << rng.below(64)),
                _ => rng.next(),
            };
            data[k * 8..k * 8 + 8].copy_from_slice(&v.to_le_bytes());
        }
        let ram = &mut m.bus.ram;
        let at = 0x20_0100usize - 16;
        ram[at..at + 32].copy_from_slice(&data);
        let at = 0x20_0ffdusize - 16;
        ram[at..at + 32].copy_from_slice(&data);
        // Behind the RIP-relative compare's operand (0x100 after the instruction).
        let at = CODE_BASE as usize + 3 + 7 + 0x100;
        ram[at] = data[0] & 3;
    }

    /// Every memory compare, every condition, every case of [`CASES`], run to the end and
    /// with every budget (so the budget also ends between the compare and its jump, and
    /// before the compare), with fast paths (fused where the form has a fused entry) and
    /// with generic handlers only: the same state after each run, the same count, the
    /// same memory, the same exit (a fault on the read is the compare's, at its count,
    /// and the Jcc does not run).
    #[test]
    fn fused_memory_pairs_match_generic_handlers() {
        let mut rng = Rng(0);
        let mut fast = TestMachine::with_code(&[]);
        let mut slow = TestMachine::with_code(&[]);
        for compare in MEMORY_COMPARES {
            for cc in 1..=16u8 {
                let bytes = memory_program(compare, cc);
                for case in 0..CASES.len() {
                    for seed in 1..=6u64 {
                        for budget in [1u64, 2, 3, 4, 100] {
                            memory_machine(&mut fast, &bytes, true, &mut rng, seed, case);
                            memory_machine(&mut slow, &bytes, false, &mut rng, seed, case);
                            let what = format!("{compare:x?} cc {cc} case {case} seed {seed}");
                            run_side_by_side(&mut fast, &mut slow, budget, &what);
                            assert!(fast.bus.ram == slow.bus.ram, "{what}");
                            let s = &fast.cpu.state;
                            let at = s.rip - CODE_BASE;
                            // The RIP-relative compare does not read at RSI.
                            if case == 4 && compare[1] != 0x3d {
                                // The compare faults: only the load retired.
                                assert_eq!((s.retired, at), (1, 3), "{what}");
                            } else {
                                // The UD2 after five instructions taken, six not.
                                assert_eq!(s.retired, 5 + (s.gpr[1] & 0xff), "{what}");
                            }
                        }
                    }
                }
            }
        }
    }

    /// A loop closed by a fused `cmp byte [rsi], 0; jne` on a page the loop's own store
    /// keeps in the TLB (the fused handler decides every branch but the first): the same
    /// state and count as with the generic handlers, and the count the loop must take.
    #[test]
    fn fused_memory_loop() {
        // mov ecx, 100; l: dec ecx; mov [rsi], cl; cmp byte [rsi], 0; jne l; hlt
        let code = [
            0xb9, 100, 0, 0, 0, 0xff, 0xc9, 0x88, 0x0e, 0x80, 0x3e, 0x00, 0x75, 0xf7, 0xf4,
        ];
        let mut fast = TestMachine::with_code(&code);
        let mut slow = TestMachine::with_code(&code);
        slow.code.set_fast_paths(false);
        for m in [&mut fast, &mut slow] {
            m.cpu.state.gpr[6] = 0x20_0100;
            assert_eq!(m.run(1000), RunExit::Halted);
        }
        assert_eq!(fast.cpu.state, slow.cpu.state);
        assert_eq!(fast.cpu.state.retired, 1 + 100 * 4 + 1);
    }

    /// With an observer, a fused memory compare runs alone: the same state as without one,
    /// its read reported at its own count and the PUSHFQ's write at its own.
    #[test]
    fn fused_memory_pairs_under_an_observer() {
        let mut rng = Rng(0);
        let mut plain = TestMachine::with_code(&[]);
        let mut seen = TestMachine::with_code(&[]);
        for compare in MEMORY_COMPARES {
            let bytes = memory_program(compare, 6);
            for seed in 1..=6u64 {
                memory_machine(&mut plain, &bytes, true, &mut rng, seed, 0);
                memory_machine(&mut seen, &bytes, true, &mut rng, seed, 0);
                plain.run(100);
                let mut obs = RecordingObserver::default();
                let mut exit = RunExit::Budget;
                while seen.cpu.state.retired < 100 && matches!(exit, RunExit::Budget) {
                    exit = seen.cpu.run(&mut seen.bus, &mut obs, &mut seen.code, 100);
                }
                assert_eq!(plain.cpu.state, seen.cpu.state);
                let reads: Vec<u64> = obs
                    .accesses
                    .iter()
                    .filter(|a| matches!(a.kind, AccessKind::Read))
                    .map(|a| a.retired)
                    .collect();
                // The load, then the compare (the RIP-relative one reads elsewhere).
                assert_eq!(reads[..2], [0, 1], "{compare:x?}");
                let push = obs
                    .accesses
                    .iter()
                    .find(|a| matches!(a.kind, AccessKind::Write))
                    .expect("a push");
                assert_eq!(push.retired, 3 + (seen.cpu.state.gpr[1] & 0xff));
            }
        }
    }
}
