//! Running a test sequence on the host processor, in a forked child.
//!
//! The child maps the scratch region, a code page and a state block at fixed low addresses
//! (test binaries are position independent, so these are free), copies the scratch contents
//! and `prologue; test code; epilogue` there, and calls it. The prologue saves the host's
//! callee-saved registers, loads RFLAGS, MXCSR, XMM0-15 and all sixteen GPRs (RSP last) from
//! the state block; the epilogue stores them back and returns to the host. A fault in the
//! test kills nothing but the child: a signal handler on an alternate stack records the
//! signal, the exception vector and the full register state at the faulting instruction.
//! Results travel back through a `MAP_SHARED` page created before the fork.
//!
//! The child allocates nothing (the test harness is multithreaded, so the allocator's locks
//! may be held by a thread that does not exist in the child).

use std::mem::offset_of;
use std::sync::atomic::{AtomicPtr, Ordering};
use std::sync::OnceLock;

use iced_x86::code_asm::*;

use crate::common::{Regs, CODE, CODE_SIZE, DATA, SCRATCH, STATE, STATE_SIZE, TEST};

/// The native state block, at [`STATE`].
#[repr(C)]
struct StatePage {
    input: Regs,
    output: Regs,
    /// RBX, RBP, R12-R15, RSP and MXCSR of the host, saved by the prologue.
    host: [u64; 8],
    /// A few words of stack for POPFQ/PUSHFQ in the prologue and epilogue.
    stack: [u64; 16],
}

const _: () = assert!(std::mem::size_of::<StatePage>() <= STATE_SIZE);

/// How the native run ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NativeEnd {
    /// The sequence ran to the epilogue.
    Completed,
    /// The sequence raised an exception that the kernel turned into a signal.
    Signal {
        /// The signal number.
        signo: i32,
        /// The exception vector (the kernel's trap number).
        vector: u64,
        /// The error code the processor pushed.
        error_code: u64,
        /// `si_addr` (the faulting address for #PF).
        addr: u64,
    },
}

/// What the host produced.
#[derive(Clone, Debug)]
pub struct NativeOutcome {
    /// How it ended.
    pub end: NativeEnd,
    /// Registers at the end (or at the faulting instruction).
    pub regs: Regs,
    /// RIP at the end (the epilogue's address) or of the faulting instruction.
    pub rip: u64,
    /// The scratch region at the end.
    pub scratch: Vec<u8>,
}

const STATUS_DONE: u64 = 1;
const STATUS_MAP_FAILED: u64 = 2;
const STATUS_SIGNAL: u64 = 3;

/// The page shared with the child.
#[repr(C)]
struct ResultPage {
    status: u64,
    signo: u64,
    trapno: u64,
    err: u64,
    addr: u64,
    rip: u64,
    errno: u64,
    regs: Regs,
    scratch: [u8; SCRATCH],
}

/// The result page of the current child (only ever set inside a child).
static RESULT: AtomicPtr<ResultPage> = AtomicPtr::new(std::ptr::null_mut());

fn state_field(field: usize) -> u64 {
    STATE + field as u64
}

const GPRS: [AsmRegister64; 16] = [
    rax, rcx, rdx, rbx, rsp, rbp, rsi, rdi, r8, r9, r10, r11, r12, r13, r14, r15,
];
const XMMS: [AsmRegisterXmm; 16] = [
    xmm0, xmm1, xmm2, xmm3, xmm4, xmm5, xmm6, xmm7, xmm8, xmm9, xmm10, xmm11, xmm12, xmm13, xmm14,
    xmm15,
];

/// Machine code of the prologue (at [`CODE`], ends with a jump to [`TEST`]) and of the
/// position-independent epilogue.
fn stubs() -> &'static (Vec<u8>, Vec<u8>) {
    static STUBS: OnceLock<(Vec<u8>, Vec<u8>)> = OnceLock::new();
    STUBS.get_or_init(|| {
        build_stubs().unwrap_or_else(|e| panic!("assembling the native stubs: {e}"))
    })
}

fn build_stubs() -> Result<(Vec<u8>, Vec<u8>), iced_x86::IcedError> {
    let input = offset_of!(StatePage, input);
    let output = offset_of!(StatePage, output);
    let host = state_field(offset_of!(StatePage, host));
    let gpr = |base: usize, i: usize| state_field(base + offset_of!(Regs, gpr) + 8 * i);
    let xmm = |base: usize, i: usize| state_field(base + offset_of!(Regs, xmm) + 16 * i);
    let saved = [rbx, rbp, r12, r13, r14, r15, rsp];

    let mut a = CodeAssembler::new(64)?;
    for (k, &r) in saved.iter().enumerate() {
        a.mov(qword_ptr(host + 8 * k as u64), r)?;
    }
    a.stmxcsr(dword_ptr(host + 56))?;
    // The x87 starts from FNINIT's state, as the emulator's CPU does, with every register
    // holding +0.0 as the emulator's do (FNINIT empties the registers but keeps their
    // contents, which an FLDENV that marks them valid exposes in the tag word).
    a.fninit()?;
    for _ in 0..8 {
        a.fldz()?;
    }
    a.fninit()?;
    // POPFQ first: nothing after it changes flags.
    a.mov(rsp, state_field(input + offset_of!(Regs, rflags)))?;
    a.popfq()?;
    a.ldmxcsr(dword_ptr(state_field(input + offset_of!(Regs, mxcsr))))?;
    for (i, &x) in XMMS.iter().enumerate() {
        a.movdqu(x, xmmword_ptr(xmm(input, i)))?;
    }
    for (i, &r) in GPRS.iter().enumerate() {
        if i != 4 {
            a.mov(r, qword_ptr(gpr(input, i)))?;
        }
    }
    a.mov(rsp, qword_ptr(gpr(input, 4)))?;
    a.jmp(TEST)?;
    let prologue = a.assemble(CODE)?;

    let mut e = CodeAssembler::new(64)?;
    for (i, &r) in GPRS.iter().enumerate() {
        e.mov(qword_ptr(gpr(output, i)), r)?;
    }
    let stack_top = state_field(offset_of!(StatePage, stack) + 8 * 16);
    e.mov(rsp, stack_top)?;
    e.pushfq()?;
    e.pop(rax)?;
    e.mov(
        qword_ptr(state_field(output + offset_of!(Regs, rflags))),
        rax,
    )?;
    e.cld()?;
    e.stmxcsr(dword_ptr(state_field(output + offset_of!(Regs, mxcsr))))?;
    for (i, &x) in XMMS.iter().enumerate() {
        e.movdqu(xmmword_ptr(xmm(output, i)), x)?;
    }
    e.fnstenv(ptr(state_field(output + offset_of!(Regs, x87env))))?;
    e.ldmxcsr(dword_ptr(host + 56))?;
    for (k, &r) in saved.iter().enumerate() {
        e.mov(r, qword_ptr(host + 8 * k as u64))?;
    }
    e.ret()?;
    let epilogue = e.assemble(0)?;
    Ok((prologue, epilogue))
}

/// Everything the child needs, prepared before the fork.
struct Job<'a> {
    code: &'a [u8],
    scratch: &'a [u8],
    input: Regs,
}

/// Run `test_code` (without a terminating HLT) at [`TEST`] on the host from `input` with the
/// given scratch contents.
pub fn run_native(test_code: &[u8], input: &Regs, scratch: &[u8]) -> Result<NativeOutcome, String> {
    assert_eq!(scratch.len(), SCRATCH);
    let (prologue, epilogue) = stubs();
    let mut code = vec![0xccu8; CODE_SIZE];
    code[..prologue.len()].copy_from_slice(prologue);
    let t = (TEST - CODE) as usize;
    code[t..t + test_code.len()].copy_from_slice(test_code);
    code[t + test_code.len()..t + test_code.len() + epilogue.len()].copy_from_slice(epilogue);
    let job = Job {
        code: &code,
        scratch,
        input: *input,
    };
    let size = std::mem::size_of::<ResultPage>();
    // SAFETY: an anonymous shared mapping of our own; checked for failure below.
    let page = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            size,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if page == libc::MAP_FAILED {
        return Err("mmap of the result page failed".into());
    }
    let result = page as *mut ResultPage;
    // SAFETY: fork; the child only runs `child`, which allocates nothing and ends in _exit.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        // SAFETY: our mapping.
        unsafe { libc::munmap(page, size) };
        return Err("fork failed".into());
    }
    if pid == 0 {
        // SAFETY: in the child, with the mappings and job prepared by the parent.
        unsafe { child(&job, result) }
    }
    let mut status = 0;
    loop {
        // SAFETY: waiting for our own child.
        let r = unsafe { libc::waitpid(pid, &mut status, 0) };
        if r == pid {
            break;
        }
        if r < 0 && std::io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
            return Err("waitpid failed".into());
        }
    }
    // SAFETY: the child has exited; the page is ours to read.
    let r = unsafe { &*result };
    let outcome = if libc::WIFSIGNALED(status) {
        let sig = libc::WTERMSIG(status);
        if sig == libc::SIGALRM {
            Err("the native run hung (killed by SIGALRM)".to_string())
        } else {
            Err(format!(
                "the native child died of signal {sig} outside the handler"
            ))
        }
    } else {
        match r.status {
            STATUS_DONE => Ok(NativeOutcome {
                end: NativeEnd::Completed,
                regs: r.regs,
                rip: TEST + test_code.len() as u64,
                scratch: r.scratch.to_vec(),
            }),
            STATUS_SIGNAL => Ok(NativeOutcome {
                end: NativeEnd::Signal {
                    signo: r.signo as i32,
                    vector: r.trapno,
                    error_code: r.err,
                    addr: r.addr,
                },
                regs: r.regs,
                rip: r.rip,
                scratch: r.scratch.to_vec(),
            }),
            STATUS_MAP_FAILED => Err(format!(
                "the native child could not map its fixed regions (errno {})",
                r.errno
            )),
            s => Err(format!("the native child ended with status {s}")),
        }
    };
    // SAFETY: our mapping, no longer used.
    unsafe { libc::munmap(page, size) };
    outcome
}

/// Map `len` bytes at exactly `addr`.
unsafe fn map_fixed(addr: u64, len: usize, prot: i32) -> bool {
    let p = libc::mmap(
        addr as *mut libc::c_void,
        len,
        prot,
        libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED_NOREPLACE,
        -1,
        0,
    );
    p as u64 == addr
}

/// The child: set up, run, report, `_exit`. Allocates nothing.
unsafe fn child(job: &Job, result: *mut ResultPage) -> ! {
    let no_core = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    libc::setrlimit(libc::RLIMIT_CORE, &no_core);
    libc::alarm(10);
    RESULT.store(result, Ordering::SeqCst);
    let rw = libc::PROT_READ | libc::PROT_WRITE;
    let altstack_size = 0x10000;
    let altstack = libc::mmap(
        std::ptr::null_mut(),
        altstack_size,
        rw,
        libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
        -1,
        0,
    );
    if altstack == libc::MAP_FAILED
        || !map_fixed(DATA, SCRATCH, rw)
        || !map_fixed(CODE, CODE_SIZE, rw | libc::PROT_EXEC)
        || !map_fixed(STATE, STATE_SIZE, rw)
    {
        (*result).errno = *libc::__errno_location() as u64;
        (*result).status = STATUS_MAP_FAILED;
        libc::_exit(0);
    }
    std::ptr::copy_nonoverlapping(job.scratch.as_ptr(), DATA as *mut u8, SCRATCH);
    std::ptr::copy_nonoverlapping(job.code.as_ptr(), CODE as *mut u8, CODE_SIZE);
    let state = STATE as *mut StatePage;
    (*state).input = job.input;

    let stack = libc::stack_t {
        ss_sp: altstack,
        ss_flags: 0,
        ss_size: altstack_size,
    };
    libc::sigaltstack(&stack, std::ptr::null_mut());
    let mut action: libc::sigaction = std::mem::zeroed();
    action.sa_sigaction = on_signal as *const () as usize;
    action.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK;
    libc::sigemptyset(&mut action.sa_mask);
    for sig in [
        libc::SIGSEGV,
        libc::SIGBUS,
        libc::SIGFPE,
        libc::SIGILL,
        libc::SIGTRAP,
    ] {
        libc::sigaction(sig, &action, std::ptr::null_mut());
    }

    let entry: extern "C" fn() = std::mem::transmute(CODE as *const ());
    entry();

    (*result).regs = (*state).output;
    std::ptr::copy_nonoverlapping(DATA as *const u8, (*result).scratch.as_mut_ptr(), SCRATCH);
    (*result).status = STATUS_DONE;
    libc::_exit(0);
}

/// The signal handler of the child: record where and how the test faulted, then `_exit`.
extern "C" fn on_signal(sig: libc::c_int, info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
    // SAFETY: called by the kernel with valid siginfo/ucontext; the result page was mapped
    // before the fork and RESULT set by this child.
    unsafe {
        let r = RESULT.load(Ordering::SeqCst);
        let uc = ctx as *const libc::ucontext_t;
        let g = &(*uc).uc_mcontext.gregs;
        let reg = |i: libc::c_int| g[i as usize] as u64;
        let order = [
            libc::REG_RAX,
            libc::REG_RCX,
            libc::REG_RDX,
            libc::REG_RBX,
            libc::REG_RSP,
            libc::REG_RBP,
            libc::REG_RSI,
            libc::REG_RDI,
            libc::REG_R8,
            libc::REG_R9,
            libc::REG_R10,
            libc::REG_R11,
            libc::REG_R12,
            libc::REG_R13,
            libc::REG_R14,
            libc::REG_R15,
        ];
        for (k, &i) in order.iter().enumerate() {
            (*r).regs.gpr[k] = reg(i);
        }
        (*r).regs.rflags = reg(libc::REG_EFL);
        (*r).rip = reg(libc::REG_RIP);
        (*r).trapno = reg(libc::REG_TRAPNO);
        (*r).err = reg(libc::REG_ERR);
        (*r).addr = (*info).si_addr() as u64;
        (*r).signo = sig as u64;
        let fp = (*uc).uc_mcontext.fpregs;
        if !fp.is_null() {
            (*r).regs.mxcsr = (*fp).mxcsr as u64;
            for k in 0..16 {
                let e = (*fp)._xmm[k].element;
                (*r).regs.xmm[k] = e[0] as u128
                    | (e[1] as u128) << 32
                    | (e[2] as u128) << 64
                    | (e[3] as u128) << 96;
            }
        }
        std::ptr::copy_nonoverlapping(DATA as *const u8, (*r).scratch.as_mut_ptr(), SCRATCH);
        (*r).status = STATUS_SIGNAL;
        libc::_exit(0);
    }
}
