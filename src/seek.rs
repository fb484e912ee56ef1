//! `reprise seek`: the machine at one position of a recording.

use std::io::Write;
use std::time::Instant;

use reprise_replay::seek::{boot, describe_state, seek as seek_to, MemAddr};

use crate::cli::{parse_count, SeekArgs};
use crate::report::ErrorReport;
use crate::status;

/// Run the command; returns the process exit status.
pub fn seek(args: &SeekArgs) -> i32 {
    match inner(args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("reprise: {}", ErrorReport(&e));
            status::ERROR
        }
    }
}

fn inner(args: &SeekArgs) -> anyhow::Result<i32> {
    let started = Instant::now();
    let mem = match args.mem.as_slice() {
        [] => None,
        [addr, len] => {
            let len = parse_count(len).map_err(|e| anyhow::anyhow!("--mem LEN: {e}"))?;
            let at = match addr.strip_prefix("phys:") {
                Some(p) => MemAddr::Phys(crate::cli::parse_addr(p)?),
                None => MemAddr::Virt {
                    addr: crate::cli::parse_addr(addr)?,
                    cpu: args.cpu,
                },
            };
            Some((at, len.min(1 << 20)))
        }
        _ => anyhow::bail!("--mem takes ADDR LEN"),
    };
    let mut r = boot(&args.rec, &args.images)?;
    let target = if args.at == "end" {
        r.end
            .ok_or_else(|| anyhow::anyhow!("the recording has no end record: give a position"))?
    } else {
        parse_count(&args.at).map_err(|e| anyhow::anyhow!("--at: {e}"))?
    };
    crate::interrupt::install();
    let progress = crate::progress::Progress::start("seek", Some(target));
    let report = seek_to(&mut r, target, !args.no_checkpoints);
    progress.finish();
    let report = report?;
    if crate::interrupt::requested() {
        eprintln!(
            "reprise: interrupted at instruction {} before reaching {target}",
            report.reached
        );
        return Ok(status::INTERRUPTED);
    }
    for w in &report.warnings {
        eprintln!("reprise: warning: {w}");
    }
    let text = describe_state(&mut r.machine, r.ram_hash, mem, args.json);
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())?;
    out.flush()?;
    let from = report
        .checkpoint
        .as_ref()
        .map_or("the start".to_string(), |(p, name)| {
            format!("checkpoint {name} (instruction {p})")
        });
    eprintln!(
        "reprise: reached instruction {} from {from}: {} instructions replayed in {:.3} s",
        report.reached,
        report.replayed,
        started.elapsed().as_secs_f64()
    );
    if report.reached < target {
        eprintln!(
            "reprise: the run ended at instruction {} before {target}",
            report.reached
        );
    }
    Ok(0)
}
