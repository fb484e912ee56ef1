//! A micro-benchmark of the run loop: a four-instruction loop body (`alu`, `mem` or `sse`,
//! first argument) run N times (second argument, default 10M) on a test machine; prints
//! instructions and MIPS. `cargo run --release -p reprise-cpu --example microloop -- mem`.

use iced_x86::code_asm::*;
use reprise_cpu::testing::TestMachine;
fn main() {
    let which = std::env::args().nth(1).unwrap_or_default();
    let n: u64 = std::env::args()
        .nth(2)
        .map(|s| s.parse().unwrap())
        .unwrap_or(10_000_000);
    let mut m = TestMachine::assemble(|a| {
        let mut top = a.create_label();
        a.mov(rcx, n)?;
        a.mov(rbx, 0x20_0000u64)?;
        a.set_label(&mut top)?;
        match which.as_str() {
            "mem" => {
                a.mov(rax, qword_ptr(rbx))?;
                a.add(qword_ptr(rbx + 8), rax)?;
                a.mov(edx, dword_ptr(rbx + 16))?;
                a.mov(dword_ptr(rbx + 20), edx)?;
            }
            "sse" => {
                a.movdqa(xmm0, xmm1)?;
                a.pxor(xmm0, xmm2)?;
                a.paddd(xmm1, xmm0)?;
                a.psrld(xmm2, 3)?;
            }
            _ => {
                a.add(rax, rbx)?;
                a.xor(edx, eax)?;
                a.ror(edx, 7)?;
                a.mov(esi, edx)?;
            }
        }
        a.dec(rcx)?;
        a.jne(top)?;
        a.hlt()
    });
    let t = std::time::Instant::now();
    let r = m.run(u64::MAX);
    let dt = t.elapsed().as_secs_f64();
    let ret = m.cpu.state.retired;
    eprintln!(
        "{r:?} {ret} insns {dt:.3}s {:.1} MIPS",
        ret as f64 / dt / 1e6
    );
}
