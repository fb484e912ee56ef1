//! `reprise bisect`: the first position of a recording at which a predicate holds.

use std::io::Write;
use std::time::Instant;

use reprise_replay::bisect::{bisect as search, linear_scan, machine_at, BisectOptions, Predicate};
use reprise_replay::seek::describe_state;

use crate::cli::BisectArgs;
use crate::report::ErrorReport;
use crate::status;

/// The end of `reprise bisect --help`.
pub const AFTER_HELP: &str = "\
PRED is one or more of these, joined with `and`:
  mem[ADDR]:SIZE OP VALUE     memory (ADDR virtual through --cpu's page tables, or phys:ADDR; SIZE 1, 2, 4 or 8)
  mem[ADDR]:SIZE changes      differs from its value at position 0
  reg NAME OP VALUE           a register of --cpu (rax..r15, rip, rflags, cr0, cr2, cr3, cr4, cr8, efer)
  pc == ADDR                  some CPU is about to execute ADDR
  console contains \"TEXT\"     the console output so far contains TEXT
  insn >= N                   at least N instructions executed
OP is ==, !=, < or >; a VALUE with a minus sign compares signed.

The answer is the first position (instruction count) at which PRED holds, exactly what a scan one instruction at a time finds (--linear does that scan). Checkpoints bound the search; the segments before the first checkpoint where PRED holds are then stepped through, on --jobs threads (with --monotone only the last one). Without --monotone, a PRED with a `pc ==` atom or only `mem` state atoms is searched by one watching pass at traced speed instead, which hands the positions that can hold the answer to a second replay that steps only those. For `pc ==`, a scouting pass at full speed with a breakpoint in the CPU runs ahead, and only the stretches where the address may have been reached are watched.

stdout: the position, then the machine state as `seek` prints it. stderr: checkpoints restored, instructions replayed, time. Exit status 0 when found, 2 when PRED holds nowhere, 1 on errors, 130 when interrupted.";

/// Run the command; returns the process exit status.
pub fn bisect(args: &BisectArgs) -> i32 {
    match inner(args) {
        Ok(code) => code,
        Err(e) if crate::interrupt::requested() => {
            eprintln!("reprise: interrupted: {}", ErrorReport(&e));
            status::INTERRUPTED
        }
        Err(e) => {
            eprintln!("reprise: {}", ErrorReport(&e));
            status::ERROR
        }
    }
}

fn inner(args: &BisectArgs) -> anyhow::Result<i32> {
    let started = Instant::now();
    let pred =
        Predicate::parse(&args.until, args.cpu).map_err(|e| anyhow::anyhow!("--until: {e}"))?;
    let opts = BisectOptions {
        images: args.images.clone(),
        monotone: args.monotone,
        jobs: args.jobs,
        interrupt: Some(crate::interrupt::install()),
        progress: None,
        chunk: args.chunk,
    };
    let total = crate::progress::recording_total(&args.rec);
    let progress = crate::progress::Progress::start("bisect", total);
    let outcome = if args.linear {
        linear_scan(&args.rec, &pred, &opts)?
    } else {
        search(&args.rec, &pred, &opts)?
    };
    progress.finish();
    for w in &outcome.warnings {
        eprintln!("reprise: warning: {w}");
    }
    let mut out = std::io::stdout().lock();
    let code = match outcome.found {
        Some(pos) => {
            let mut r = machine_at(&args.rec, &args.images, pos)?;
            let state = describe_state(&mut r.machine, r.ram_hash, None, args.json);
            if args.json {
                writeln!(
                    out,
                    "{{\"found\":true,\"position\":{pos},\"state\":{}}}",
                    state.trim_end()
                )?;
            } else {
                writeln!(out, "found at position {pos}")?;
                out.write_all(state.as_bytes())?;
            }
            0
        }
        None => {
            if args.json {
                writeln!(out, "{{\"found\":false}}")?;
            } else {
                writeln!(out, "not found")?;
            }
            status::NOT_FOUND
        }
    };
    out.flush()?;
    let total = outcome
        .end
        .map_or("an unknown number of".to_string(), |e| e.to_string());
    eprintln!(
        "reprise: {pred}: {}; {} checkpoints restored, {} instructions replayed ({} of them one at a time, {} by a watching pass, {} by a scouting pass) of the recording's {total}, in {:.3} s",
        outcome
            .found
            .map_or("holds nowhere".to_string(), |p| format!("first holds at {p}")),
        outcome.restored,
        outcome.replayed,
        outcome.stepped,
        outcome.watched,
        outcome.scouted,
        started.elapsed().as_secs_f64()
    );
    Ok(code)
}
