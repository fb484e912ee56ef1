//! `reprise checkpoint`: add checkpoints to a recording by replaying it.

use std::time::Instant;

use reprise_replay::seek::{add_checkpoints, boot};

use crate::cli::CheckpointArgs;
use crate::report::ErrorReport;
use crate::status;

/// Run the command; returns the process exit status.
pub fn checkpoint(args: &CheckpointArgs) -> i32 {
    match inner(args) {
        Ok(()) if crate::interrupt::requested() => status::INTERRUPTED,
        Ok(()) => 0,
        Err(e) => {
            eprintln!("reprise: {}", ErrorReport(&e));
            status::ERROR
        }
    }
}

fn inner(args: &CheckpointArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    crate::interrupt::install();
    let mut r = boot(&args.rec, &args.images)?;
    let progress = crate::progress::Progress::start("checkpoint", r.end);
    let (mut pages, mut new_pages) = (0u64, 0u64);
    let made = add_checkpoints(&mut r, args.every, &mut |_, s| {
        pages += s.pages;
        new_pages += s.new_pages;
    })?;
    progress.finish();
    if crate::interrupt::requested() {
        eprintln!(
            "reprise: interrupted at instruction {}: the {made} checkpoints written are complete",
            r.machine.instructions()
        );
    }
    let (files, page_bytes, page_files) = r.store.size();
    eprintln!(
        "reprise: {made} checkpoints every {} instructions in {:.3} s; store: {} page files ({} bytes) + {} bytes of checkpoint files; {new_pages} of {pages} pages written (the rest shared or already stored); RAM {} bytes",
        args.every,
        started.elapsed().as_secs_f64(),
        page_files,
        page_bytes,
        files,
        r.machine.ram().len()
    );
    Ok(())
}
