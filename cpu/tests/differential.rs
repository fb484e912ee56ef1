//! Differential tests of reprise's CPU against the host processor.
//!
//! Random sequences of 1-4 instructions, drawn from every iced `Code` reprise implements
//! (minus the exclusions of `gen::exclusion`, printed by every run), are run natively in a
//! forked child and in the emulator from the same registers, flags, MXCSR, XMM registers and
//! scratch memory; then every GPR, RIP, RFLAGS (minus the flags left architecturally
//! undefined, per iced-x86 refined by the SDM's count-dependent shift rules), MXCSR,
//! XMM0-15 and the scratch memory are compared. Both sides run at CPL 3 with the same low
//! mappings (scratch data and code pages only), so privileged instructions, port I/O and
//! stray accesses fault alike. A native fault (signal) must match the emulator's exception (a
//! triple fault, as the test machine has no IDT) by vector, error code (or #PF address) and
//! faulting RIP, with the state at the fault compared too.
//!
//! Control transfers are generated forward only: Jcc/JMP/CALL/LOOP to a later instruction,
//! and RET / indirect JMP / CALL through a register or scratch qword planted with a later
//! instruction's address. Cases whose outcome is architecturally undefined (a flag read
//! after it became undefined, SHLD/SHRD counts beyond the operand size) or that POPF into
//! single-step or alignment-check mode are discarded; the run prints how many.
//!
//! Environment knobs:
//! - `REPRISE_DIFF_CASES=N`: cases in the normal run (default 5000).
//! - `REPRISE_DIFF_SEED=HEX`: seed of the normal run (default fixed, so runs repeat).
//! - `REPRISE_DIFF_SOAK=SECONDS`: instead, generate fresh random cases for that long and
//!   print the per-code coverage.
//! - `REPRISE_DIFF_CASE=SPEC`: run one case (as printed in a mismatch report) and print it.
//! - `REPRISE_DIFF_ONLY=shl,movups`: draw only codes whose iced names contain one of these
//!   (case-insensitive; the coverage figures then count only those).
//! - `REPRISE_DIFF_KEEP_GOING=1`: do not stop at the first mismatch; shrink and collect every
//!   mismatch, then print one report per distinct shrunk sequence of codes.
//!
//! Layout: `differential/common.rs` (addresses, state block, RNG), `gen.rs` (which codes,
//! and the generator), `native.rs` (host runner), `emu.rs` (emulator runner), `compare.rs`
//! (comparison and report).

#[path = "differential/common.rs"]
mod common;
#[path = "differential/compare.rs"]
mod compare;
#[path = "differential/emu.rs"]
mod emu;
#[path = "differential/gen.rs"]
mod gen;
#[path = "differential/native.rs"]
mod native;

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use iced_x86::Code;
use proptest::prelude::Rng;
use proptest::strategy::{NewTree, Strategy, ValueTree};
use proptest::test_runner::{Config, RngAlgorithm, TestCaseError, TestError, TestRng, TestRunner};

use common::{fl, scratch_from_seed, Regs, DATA, SCRATCH};
use emu::{run_emulator, EmuEnd};
use gen::{encode, exclusion, flag_effect, Case, Gen};
use native::run_native;

/// Instructions per case at most.
const MAX_LEN: usize = 4;

/// Which codes are implemented, which of those the generator draws from, and why the others
/// are excluded.
struct Catalog {
    implemented: Vec<Code>,
    eligible: Vec<Code>,
    excluded: Vec<(Code, String)>,
}

fn catalog() -> &'static Catalog {
    static CATALOG: OnceLock<Catalog> = OnceLock::new();
    CATALOG.get_or_init(|| {
        let implemented = reprise_cpu::implemented_codes();
        let mut eligible = Vec::new();
        let mut excluded = Vec::new();
        let mut g = Gen::new(1, &[]);
        // Optional focus: only codes whose names contain one of these (case-insensitive).
        let only: Vec<String> = std::env::var("REPRISE_DIFF_ONLY")
            .map(|v| v.split(',').map(|s| s.trim().to_lowercase()).collect())
            .unwrap_or_default();
        let wanted = |c: Code| {
            let name = format!("{c:?}").to_lowercase();
            only.is_empty() || only.iter().any(|o| name.contains(o.as_str()))
        };
        for &c in implemented.iter().filter(|&&c| wanted(c)) {
            match exclusion(c) {
                None if g.round_trips(c) => eligible.push(c),
                None => excluded.push((
                    c,
                    "never decodes back as itself (an AMD-only form: Intel and iced decode the \
                     bytes as another code)"
                        .to_string(),
                )),
                Some(why) => excluded.push((c, why)),
            }
        }
        Catalog {
            implemented,
            eligible,
            excluded,
        }
    })
}

/// What the runs so far covered.
#[derive(Default)]
struct Stats {
    cases: u64,
    rejected: BTreeMap<String, u64>,
    executed: BTreeMap<Code, u64>,
    gen_failures: BTreeMap<Code, BTreeMap<&'static str, u64>>,
}

fn stats() -> std::sync::MutexGuard<'static, Stats> {
    static STATS: OnceLock<Mutex<Stats>> = OnceLock::new();
    STATS
        .get_or_init(|| Mutex::new(Stats::default()))
        .lock()
        .unwrap_or_else(|e| e.into_inner())
}

fn reject(why: &'static str) -> TestCaseError {
    *stats().rejected.entry(why.to_string()).or_default() += 1;
    TestCaseError::reject(why)
}

/// Run one case on both sides and compare. `Ok` when they agree.
fn check(case: &Case) -> Result<(), TestCaseError> {
    if case.insns.is_empty() {
        return Err(reject("empty case"));
    }
    let enc = match encode(case) {
        Ok(e) => e,
        Err(e) => return Err(TestCaseError::fail(format!("{case:?}: {e}"))),
    };
    let mut scratch = scratch_from_seed(case.scratch_seed);
    for &(addr, value, _) in &enc.patches {
        let off = (addr - DATA) as usize;
        scratch[off..off + 8].copy_from_slice(&value.to_le_bytes());
    }
    let emu = run_emulator(&enc.bytes, &enc.init, &scratch);

    // Walk the emulator's trace: undefined flags along the executed path, value-dependent
    // discards, and memory accesses that leave the scratch region.
    let mut undefined = 0u64;
    let mut diffs = Vec::new();
    let mut executed = Vec::new();
    let last = emu.steps.len();
    for (si, step) in emu.steps.iter().enumerate() {
        let Some(k) = enc.insns.iter().position(|i| i.ip() == step.pre.rip) else {
            diffs.push(format!(
                "the emulator executed at {:#x}, which is not an instruction of the sequence",
                step.pre.rip
            ));
            break;
        };
        let ins = &enc.insns[k];
        executed.push(ins.code());
        // A code address planted for this instruction must not have been overwritten.
        for &(addr, _, user) in &enc.patches {
            if user != Some(step.pre.rip) {
                continue;
            }
            let clobbered = emu.steps[..si].iter().flat_map(|s| &s.accesses).any(|a| {
                a.kind != reprise_cpu::AccessKind::Read
                    && a.vaddr < addr + 8
                    && addr < a.vaddr + a.size as u64
            });
            if clobbered {
                return Err(reject("a planted code address was overwritten"));
            }
        }
        if step.pre.rflags & (fl::TF | fl::AC) != 0 {
            return Err(reject("POPF set TF or AC (single-step / alignment checks)"));
        }
        let faulted = si + 1 == last && matches!(emu.end, EmuEnd::Fault { .. });
        if !faulted {
            let fe = flag_effect(ins, Some(step.pre.gpr[1]));
            if fe.read & undefined != 0 {
                return Err(reject("reads a flag left undefined"));
            }
            if fe.undefined_result {
                return Err(reject("architecturally undefined result"));
            }
            undefined = (undefined & !fe.defined) | fe.undefined;
        }
        for a in &step.accesses {
            let inside = a.vaddr >= DATA && a.vaddr + a.size as u64 <= DATA + SCRATCH as u64;
            if !inside {
                diffs.push(format!(
                    "the emulator accessed [{:#x}; {}] ({:?}) outside the scratch region, \
                     from the instruction at {:#x}",
                    a.vaddr, a.size, a.kind, a.pc
                ));
            }
        }
    }
    if emu.regs.rflags & (fl::TF | fl::AC) != 0 {
        return Err(reject("POPF set TF or AC (single-step / alignment checks)"));
    }
    // The native run comes after the discards above, some of which (an overwritten code
    // address) would send the host astray.
    let native_code = &enc.bytes[..enc.bytes.len() - 1];
    let native = run_native(native_code, &enc.init, &scratch)
        .map_err(|e| TestCaseError::fail(format!("{case:?}: native harness: {e}")))?;
    {
        let mut s = stats();
        s.cases += 1;
        for c in executed {
            *s.executed.entry(c).or_default() += 1;
        }
    }
    diffs.extend(compare::differences(&native, &emu, undefined));
    if diffs.is_empty() {
        Ok(())
    } else {
        Err(TestCaseError::fail(compare::report(
            case, &enc, &scratch, &native, &emu, undefined, &diffs,
        )))
    }
}

/// Generates cases; shrinking removes instructions one at a time.
#[derive(Debug)]
struct CaseStrategy;

struct CaseTree {
    current: Case,
    prev: Option<Case>,
    next: usize,
}

impl Strategy for CaseStrategy {
    type Tree = CaseTree;
    type Value = Case;

    fn new_tree(&self, runner: &mut TestRunner) -> NewTree<Self> {
        let seed = runner.rng().next_u64();
        let mut g = Gen::new(seed, &catalog().eligible);
        let case = g.case(seed, MAX_LEN);
        let mut s = stats();
        for &(code, why) in &g.failures {
            *s.gen_failures
                .entry(code)
                .or_default()
                .entry(why)
                .or_default() += 1;
        }
        Ok(CaseTree {
            current: case,
            prev: None,
            next: 0,
        })
    }
}

impl ValueTree for CaseTree {
    type Value = Case;

    fn current(&self) -> Case {
        self.current.clone()
    }

    fn simplify(&mut self) -> bool {
        if self.current.insns.len() <= 1 || self.next >= self.current.insns.len() {
            return false;
        }
        let smaller = self.current.without(self.next);
        self.prev = Some(std::mem::replace(&mut self.current, smaller));
        true
    }

    fn complicate(&mut self) -> bool {
        match self.prev.take() {
            Some(p) => {
                self.current = p;
                self.next += 1;
                true
            }
            None => false,
        }
    }
}

fn env_u64(name: &str) -> Option<u64> {
    let v = std::env::var(name).ok()?;
    let v = v.trim();
    match v.strip_prefix("0x") {
        Some(h) => u64::from_str_radix(h, 16).ok(),
        None => v.parse().ok(),
    }
}

/// Write to the real stderr (not captured by the test harness), so the summary always shows.
fn say(text: &str) {
    let _ = writeln!(std::io::stderr(), "{text}");
}

/// Mismatches collected in keep-going mode, keyed by the codes of the shrunk case:
/// (how many cases shrank to this key, the first report).
type Collected = BTreeMap<Vec<Code>, (u64, String)>;

fn collected() -> std::sync::MutexGuard<'static, Collected> {
    static COLLECTED: OnceLock<Mutex<Collected>> = OnceLock::new();
    COLLECTED
        .get_or_init(|| Mutex::new(BTreeMap::new()))
        .lock()
        .unwrap_or_else(|e| e.into_inner())
}

/// Remove instructions one at a time while the case still fails; the smallest case and its
/// report.
fn shrink(case: Case, report: String) -> (Case, String) {
    let (mut cur, mut report) = (case, report);
    'outer: loop {
        for i in 0..cur.insns.len() {
            if cur.insns.len() == 1 {
                break 'outer;
            }
            let smaller = cur.without(i);
            if let Err(TestCaseError::Fail(r)) = check(&smaller) {
                cur = smaller;
                report = r.message().to_string();
                continue 'outer;
            }
        }
        break;
    }
    (cur, report)
}

/// Run one case; in keep-going mode a mismatch is shrunk and collected instead of failing.
fn check_or_collect(case: Case, keep_going: bool) -> Result<(), TestCaseError> {
    match check(&case) {
        Err(TestCaseError::Fail(r)) if keep_going => {
            let (small, report) = shrink(case, r.message().to_string());
            let key: Vec<Code> = small.insns.iter().map(|i| i.code()).collect();
            collected().entry(key).or_insert((0, report)).0 += 1;
            Ok(())
        }
        other => other,
    }
}

fn run_cases(runner: &mut TestRunner, keep_going: bool) {
    match runner.run(&CaseStrategy, |case| check_or_collect(case, keep_going)) {
        Ok(()) => {}
        Err(TestError::Fail(reason, case)) => {
            panic!("differential test failed on {case:?}\n{reason}")
        }
        Err(TestError::Abort(reason)) => panic!("differential test aborted: {reason}"),
    }
}

/// Print the mismatches collected in keep-going mode; panics if there were any.
fn report_collected() {
    let c = collected();
    if c.is_empty() {
        return;
    }
    let mut out = format!(
        "{} distinct mismatches (by the codes of the shrunk case):",
        c.len()
    );
    for (key, (n, _)) in c.iter() {
        out.push_str(&format!("\n  {n:>5} x {key:?}"));
    }
    for (_, (_, report)) in c.iter() {
        out.push_str(report);
    }
    say(&out);
    panic!("{} distinct mismatches", c.len());
}

fn config(cases: u32) -> Config {
    Config {
        cases,
        max_global_rejects: cases.saturating_mul(20).max(1000),
        max_shrink_iters: 256,
        failure_persistence: None,
        ..Config::default()
    }
}

/// The coverage summary: implemented vs exercised codes, exclusions, what was never generated.
fn coverage(verbose: bool) -> (usize, usize, Vec<String>) {
    let cat = catalog();
    let s = stats();
    let exercised = cat
        .eligible
        .iter()
        .filter(|c| s.executed.contains_key(c))
        .count();
    let mut missing = Vec::new();
    for c in &cat.eligible {
        if !s.executed.contains_key(c) {
            let why = s
                .gen_failures
                .get(c)
                .map(|m| {
                    m.iter()
                        .map(|(w, n)| format!("{w} x{n}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                })
                .unwrap_or_else(|| "never drawn".into());
            missing.push(format!("{c:?}: {why}"));
        }
    }
    let mut out = format!(
        "differential: {} cases run; implemented {} codes, exercised {} (of {} not excluded)",
        s.cases,
        cat.implemented.len(),
        exercised,
        cat.eligible.len()
    );
    if !s.rejected.is_empty() {
        out.push_str("\n  discarded cases:");
        for (why, n) in &s.rejected {
            out.push_str(&format!("\n    {n:>6}  {why}"));
        }
    }
    if !cat.excluded.is_empty() {
        out.push_str(&format!(
            "\n  excluded implemented codes ({}):",
            cat.excluded.len()
        ));
        for (c, why) in &cat.excluded {
            out.push_str(&format!("\n    {c:?}: {why}"));
        }
    }
    if !missing.is_empty() {
        out.push_str(&format!("\n  not exercised ({}):", missing.len()));
        for m in &missing {
            out.push_str(&format!("\n    {m}"));
        }
    }
    if verbose {
        out.push_str("\n  executions per code:");
        for (c, n) in &s.executed {
            out.push_str(&format!("\n    {n:>8}  {c:?}"));
        }
    }
    say(&out);
    (cat.eligible.len(), exercised, missing)
}

/// The main differential run (or a soak, or one case, per the environment).
#[test]
fn differential_random_sequences() {
    if let Ok(spec) = std::env::var("REPRISE_DIFF_CASE") {
        let case =
            Case::from_spec(&spec, &catalog().eligible, MAX_LEN).unwrap_or_else(|e| panic!("{e}"));
        let enc = encode(&case).unwrap_or_else(|e| panic!("{e}"));
        say(&format!(
            "case {}:\n{}",
            case.spec(),
            compare::listing(&enc)
        ));
        say(&compare::regs_text(&enc.init));
        if let Err(e) = check(&case) {
            panic!("{e}");
        }
        say("native and emulator agree");
        return;
    }
    let start = Instant::now();
    let keep_going = std::env::var_os("REPRISE_DIFF_KEEP_GOING").is_some();
    if let Some(secs) = env_u64("REPRISE_DIFF_SOAK") {
        let deadline = start + Duration::from_secs(secs);
        while Instant::now() < deadline {
            let mut runner = TestRunner::new(config(250));
            run_cases(&mut runner, keep_going);
        }
        say(&format!("soak: {:.1}s", start.elapsed().as_secs_f64()));
        coverage(true);
        report_collected();
        return;
    }
    let cases = env_u64("REPRISE_DIFF_CASES").unwrap_or(5000) as u32;
    let seed = env_u64("REPRISE_DIFF_SEED").unwrap_or(0x5eed_d1ff);
    let mut seed_bytes = [0u8; 32];
    seed_bytes[..8].copy_from_slice(&seed.to_le_bytes());
    let rng = TestRng::from_seed(RngAlgorithm::ChaCha, &seed_bytes);
    let mut runner = TestRunner::new_with_rng(config(cases), rng);
    run_cases(&mut runner, keep_going);
    say(&format!(
        "differential: normal run of {cases} cases (seed {seed:#x}) took {:.1}s",
        start.elapsed().as_secs_f64()
    ));
    let (eligible, exercised, missing) = coverage(false);
    report_collected();
    assert!(
        exercised * 10 >= eligible * 9,
        "the generator exercised only {exercised} of {eligible} testable codes; missing:\n{}",
        missing.join("\n")
    );
}

/// The native harness returns the state it was given when the sequence is empty.
#[test]
fn native_harness_round_trips_state() {
    let mut g = Gen::new(7, &[Code::Nopd]);
    let init = g.case(7, 1).init;
    let scratch = scratch_from_seed(3);
    let out = run_native(&[], &init, &scratch).expect("native run");
    assert_eq!(out.end, native::NativeEnd::Completed);
    assert_eq!(out.regs.gpr, init.gpr);
    assert_eq!(out.regs.xmm, init.xmm);
    assert_eq!(out.regs.mxcsr, init.mxcsr);
    assert_eq!(out.regs.rflags & fl::COMPARED, init.rflags & fl::COMPARED);
    assert!(out.scratch == scratch);
}

/// Faults in the test code come back as signals with the vector and faulting RIP.
#[test]
fn native_harness_reports_faults() {
    let init = Regs {
        gpr: [0; 16],
        rflags: fl::FIXED,
        mxcsr: 0x1f80,
        xmm: [0; 16],
        x87env: [0; 7],
    };
    let scratch = vec![0u8; SCRATCH];
    // (code, signal, vector, offset of the faulting instruction)
    let cases: [(&[u8], i32, u64, u64); 3] = [
        (&[0x90, 0x0f, 0x0b], libc::SIGILL, 6, 1),       // nop; ud2
        (&[0x31, 0xd2, 0xf7, 0xf2], libc::SIGFPE, 0, 2), // xor edx, edx; div edx
        (
            &[0x48, 0x8b, 0x04, 0x25, 0, 0x10, 0, 0],
            libc::SIGSEGV,
            14,
            0,
        ), // mov rax, [0x1000]
    ];
    for (code, sig, vector, fault_at) in cases {
        let out = run_native(code, &init, &scratch).expect("native run");
        match out.end {
            native::NativeEnd::Signal {
                signo, vector: v, ..
            } => {
                assert_eq!((signo, v), (sig, vector), "{code:02x?}");
            }
            other => panic!("{code:02x?}: expected a signal, got {other:?}"),
        }
        assert_eq!(out.rip, common::TEST + fault_at, "{code:02x?}");
    }
}

/// A hand-written MOV sequence agrees between the host and the emulator.
#[test]
fn mov_sequence_agrees() {
    use iced_x86::{Instruction, MemoryOperand, Register};
    let mut init = Regs {
        gpr: [0x1111_2222_3333_4444; 16],
        rflags: fl::FIXED | fl::CF,
        mxcsr: 0x1f80,
        xmm: [0; 16],
        x87env: [0; 7],
    };
    init.gpr[3] = DATA + 0x100; // rbx
    init.gpr[4] = DATA + 0x8000; // rsp
    let mem = MemoryOperand::with_base_displ(Register::RBX, 8);
    let insns = vec![
        Instruction::with2(Code::Mov_rm64_r64, mem, Register::RCX).expect("insn"),
        Instruction::with2(
            Code::Mov_r8_rm8,
            Register::AH,
            MemoryOperand::with_base(Register::RBX),
        )
        .expect("insn"),
        Instruction::with2(Code::Mov_r32_imm32, Register::EDX, 0xdead_beef_u32).expect("insn"),
    ];
    let case = Case {
        seed: 0,
        init,
        scratch_seed: 1,
        kept: (0..insns.len()).collect(),
        insns,
        code_regs: Vec::new(),
        code_slots: Vec::new(),
    };
    if let Err(e) = check(&case) {
        panic!("{e}");
    }
}
