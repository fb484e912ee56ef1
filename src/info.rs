//! `reprise info`: what a recording holds, on stdout.

use reprise_record::folder::RecordingDir;
use reprise_record::log::hex;
use reprise_record::manifest::Manifest;
use reprise_record::scan::LogScan;

use crate::cli::InfoArgs;
use crate::report::ErrorReport;
use crate::run::size_text;
use crate::status;

/// Run the command; returns the process exit status.
pub fn info(args: &InfoArgs) -> i32 {
    match info_inner(args) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("reprise: {}", ErrorReport(&e));
            status::ERROR
        }
    }
}

fn info_inner(args: &InfoArgs) -> anyhow::Result<()> {
    let m = Manifest::read(&args.rec)?;
    let dir = RecordingDir::new(&args.rec);
    let mut out = String::new();
    let mut line = |s: String| {
        out.push_str(&s);
        out.push('\n');
    };
    line(format!("recording:    {}", args.rec.display()));
    line(format!(
        "format:       {} version {}, written by {}",
        m.format, m.format_version, m.tool
    ));
    let mm = &m.machine;
    line(format!(
        "machine:      {} CPU{}, {} RAM, quantum {}, exit code {:?}, max instructions {}, serial input {}",
        mm.cpus,
        if mm.cpus == 1 { "" } else { "s" },
        size_text(mm.ram_bytes),
        mm.quantum,
        mm.exit_code,
        mm.max_instructions.map_or("none".to_string(), |n| n.to_string()),
        if mm.serial_input { "on" } else { "off" }
    ));
    line(format!(
        "clock:        {}; sync record every {} instructions",
        m.clock, m.sync_every
    ));
    for image in &m.boot.images {
        line(format!(
            "boot:         {} {} {} ({} bytes, blake3 {})",
            m.boot.protocol,
            image.role,
            image.path.display(),
            image.size,
            image.blake3
        ));
    }
    line(format!(
        "cpuid:        profile {:?}, {} leaves",
        m.cpuid.name,
        m.cpuid.leaves.len()
    ));
    let log_path = dir.dir.join(&m.log);
    match LogScan::read(&log_path) {
        Err(e) => line(format!("log:          unreadable: {e}")),
        Ok(scan) => {
            line(format!(
                "events:       {} records: {}",
                scan.counts.total(),
                scan.counts
            ));
            line(format!("instructions: {}", scan.instructions()));
            if let Some(end) = &scan.end {
                line(format!("outcome:      {}", end.outcome));
                line(format!(
                    "console:      {} bytes (blake3 {})",
                    end.console.bytes,
                    hex(&end.console.blake3)
                ));
                line(format!("final state:  {}", hex(&end.state_hash)));
            }
            let ratio = if scan.file_bytes > 0 {
                scan.raw_bytes as f64 / scan.file_bytes as f64
            } else {
                0.0
            };
            line(format!(
                "log:          {}: {} bytes raw, {} bytes on disk ({:.1}x), {} chunks, format version {}",
                m.log, scan.raw_bytes, scan.file_bytes, ratio, scan.chunks, scan.version
            ));
            if scan.is_complete() {
                line("complete:     yes".into());
            } else {
                let why = match &scan.damage {
                    Some(e) => e.to_string(),
                    None if scan.end.is_none() => {
                        "no end record: the recorder was stopped before it finished".into()
                    }
                    None => "no end trailer".into(),
                };
                line(format!("complete:     no: {why}"));
            }
        }
    }
    if let Some(cache) = crate::symcache::describe(&args.rec) {
        line(format!("cache:        {cache}"));
    }
    print!("{out}");
    Ok(())
}
