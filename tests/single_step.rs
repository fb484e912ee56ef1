//! End to end: a guest that single-steps itself with the trap flag (a #DB handler counting
//! the steps) runs to the count the SDM's rules give, and records and replays identically,
//! with sync points falling among the steps.

mod support;

use support::{final_state, guest, rec_path, record, reprise, run_image, write_file};

/// Instructions stepped by [`stepper`]'s body: MOV, 50 × (ADD, DEC, JNZ), three MOVs, five
/// elements of REP MOVSB (a #DB each), and the PUSHFQ, AND, POPFQ that clear TF.
const STEPS: i32 = 1 + 50 * 3 + 3 + 5 + 3;

/// A guest whose #DB handler counts into memory: it sets TF with POPFQ, runs a loop and a
/// REP MOVSB, clears TF and exits (debug-exit port) with the count.
fn stepper() -> Vec<u8> {
    use iced_x86::code_asm::*;
    let layout = support::asm::Layout {
        idt: support::DATA,
        counter: support::DATA + 0x1000,
        idtr: support::DATA + 0x1100,
    };
    guest(&[0u8; 0x1200], |a| {
        let mut handler = a.create_label();
        let mut top = a.create_label();
        support::asm::set_gate(a, layout, 1, handler)?;
        a.pushfq()?;
        a.or(qword_ptr(rsp), 0x100)?;
        a.popfq()?;
        a.mov(ecx, 50)?;
        a.set_label(&mut top)?;
        a.add(eax, ecx)?;
        a.dec(ecx)?;
        a.jnz(top)?;
        a.mov(rsi, support::DATA + 0x1180)?;
        a.mov(rdi, support::DATA + 0x11c0)?;
        a.mov(ecx, 5)?;
        a.rep().movsb()?;
        a.pushfq()?;
        a.and(qword_ptr(rsp), !0x100)?;
        a.popfq()?;
        a.mov(rdi, layout.counter)?;
        a.mov(eax, dword_ptr(rdi))?;
        a.out(0xf4u32, eax)?;
        a.set_label(&mut handler)?;
        a.push(rdi)?;
        a.mov(rdi, layout.counter)?;
        a.inc(qword_ptr(rdi))?;
        a.pop(rdi)?;
        a.iretq()
    })
}

#[test]
fn a_self_stepping_guest_counts_its_steps_and_replays() {
    let image = write_file("stepper.elf", &stepper());
    let r = run_image(&["--no-stdin"], &image);
    assert_eq!(r.status, STEPS, "{r:?}");
    let rec = rec_path("stepper");
    let a = record(&rec, &["--no-stdin", "--sync-every", "7"], &image);
    assert_eq!(a.status, STEPS, "{a:?}");
    let b = reprise(&["replay".as_ref(), rec.as_os_str()]);
    assert!(
        b.stderr.contains("replay identical to the recording"),
        "{b:?}"
    );
    assert_eq!(b.status, STEPS, "{b:?}");
    assert_eq!(final_state(&a), final_state(&b));
}
