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
        let x = crate::exec::Exec {
            cpu: &mut m.cpu,
            bus: &mut m.bus,
            obs: &mut obs,
            code: &mut m.code,
            rip: 0,
            next_rip: 0,
            mode: crate::state::CpuMode::Long64,
            locked: false,
            code_modified: false,
            stop_after: false,
            block_rip: 0,
            exit: None,
            retired: 0,
            full_at: u32::MAX,
        };
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
