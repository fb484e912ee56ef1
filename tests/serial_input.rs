//! Serial input from stdin through the input seam, end to end.
//!
//! The echo guest polls LSR and dispatches on its value through a jump table (so it needs
//! no arithmetic instructions): on "data ready" it reads RBR and either echoes the byte or,
//! for `q`, exits with status 0.

mod support;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use iced_x86::code_asm::*;
use iced_x86::BlockEncoderOptions;
use reprise_devices::elf::{build_exec, SegmentSpec};
use support::{run_image, run_image_with_input, write_file, CODE, DATA};

/// Jump table indexed by the LSR value.
const LSR_TABLE: u64 = DATA;
/// Jump table indexed by the received byte.
const BYTE_TABLE: u64 = DATA + 0x800;

fn echo_guest() -> Vec<u8> {
    let mut a = CodeAssembler::new(64).unwrap();
    let mut poll = a.create_label();
    let mut got = a.create_label();
    let mut echo = a.create_label();
    let mut quit = a.create_label();
    let mut asm = |a: &mut CodeAssembler| -> Result<(), IcedError> {
        a.set_label(&mut poll)?;
        a.mov(dx, 0x3fdu32)?;
        a.in_(al, dx)?;
        a.movzx(eax, al)?;
        a.jmp(qword_ptr(rax * 8 + LSR_TABLE))?;
        a.set_label(&mut got)?;
        a.mov(dx, 0x3f8u32)?;
        a.in_(al, dx)?;
        a.movzx(eax, al)?;
        a.jmp(qword_ptr(rax * 8 + BYTE_TABLE))?;
        a.set_label(&mut echo)?;
        a.out(dx, al)?;
        a.jmp(poll)?;
        a.set_label(&mut quit)?;
        a.mov(eax, 0u32)?;
        a.out(0xf4, eax)?;
        a.hlt()
    };
    asm(&mut a).unwrap();
    let result = a
        .assemble_options(CODE, BlockEncoderOptions::RETURN_NEW_INSTRUCTION_OFFSETS)
        .unwrap();
    let ip = |l: &CodeLabel| result.label_ip(l).unwrap();
    let mut data = vec![0u8; 0x1000];
    for v in 0..256usize {
        let on_lsr = if v & 1 != 0 { ip(&got) } else { ip(&poll) };
        data[v * 8..v * 8 + 8].copy_from_slice(&on_lsr.to_le_bytes());
        let on_byte = if v == b'q' as usize {
            ip(&quit)
        } else {
            ip(&echo)
        };
        data[0x800 + v * 8..0x800 + v * 8 + 8].copy_from_slice(&on_byte.to_le_bytes());
    }
    build_exec(
        CODE,
        &[
            SegmentSpec::rwx(CODE, result.inner.code_buffer),
            SegmentSpec::rwx(DATA, data),
        ],
    )
}

#[test]
fn stdin_bytes_reach_the_guest() {
    let image = write_file("echo.elf", &echo_guest());
    let r = run_image_with_input(&[], &image, b"hello\nq");
    assert_eq!(r.status, 0, "{r:?}");
    assert_eq!(r.stdout, "hello\n");
    // Many more bytes than the UART holds: each waits in the host-side channel until the
    // guest has read the previous one.
    let text: String = (0..300)
        .map(|i| (b'a' + (i % 26) as u8) as char)
        .filter(|&c| c != 'q')
        .collect();
    let r = run_image_with_input(&["--quantum", "50"], &image, format!("{text}q").as_bytes());
    assert_eq!(r.status, 0, "{r:?}");
    assert_eq!(r.stdout, text);
}

#[test]
fn without_input_the_guest_just_waits() {
    let image = write_file("echo-wait.elf", &echo_guest());
    let r = run_image(&["--max-instructions", "100000"], &image);
    assert_eq!((r.status, r.stdout.as_str()), (124, ""), "{r:?}");
    let r = run_image_with_input(
        &["--no-stdin", "--max-instructions", "100000"],
        &image,
        b"xyzq",
    );
    assert_eq!((r.status, r.stdout.as_str()), (124, ""), "{r:?}");
}

#[test]
fn an_open_stdin_does_not_hold_up_the_exit() {
    let image = write_file(
        "quick.elf",
        &build_exec(
            CODE,
            // mov eax, 3; out 0xf4, eax; hlt
            &[SegmentSpec::rwx(
                CODE,
                vec![0xb8, 3, 0, 0, 0, 0xe7, 0xf4, 0xf4],
            )],
        ),
    );
    let mut child = Command::new(env!("CARGO_BIN_EXE_reprise"))
        .arg("run")
        .arg(&image)
        .stdin(Stdio::piped()) // kept open until the end of the test
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("reprise did not exit while its stdin stayed open");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(status.code(), Some(3));
    drop(child.stdin.take());
}
