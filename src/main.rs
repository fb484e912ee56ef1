//! `reprise`: the command-line tool.
//!
//! Guest serial output goes to stdout; reprise's own messages go to stderr, one line each,
//! prefixed `reprise: `. Exit statuses are listed in [`status`].

mod bench;
mod bisect;
mod checkpoint;
mod cli;
mod info;
mod interrupt;
mod mscan;
mod progress;
mod record;
mod replay;
mod report;
mod run;
mod seek;
mod status;
mod symbols;
mod symcache;
mod trace;

use clap::Parser;

fn main() {
    let cli = match cli::Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // --help and --version are not errors; everything else a usage error (status 1,
            // not clap's 2, so that 2 stays free for guests).
            let code = if e.use_stderr() { status::ERROR } else { 0 };
            let _ = e.print();
            std::process::exit(code);
        }
    };
    if let Err(why) = reprise_cpu::flags::host_check() {
        eprintln!("reprise: {why}");
        std::process::exit(status::ERROR);
    }
    let code = match cli.command {
        cli::Command::Run(args) => run::run(&args),
        cli::Command::Record(args) => record::record(&args),
        cli::Command::Replay(args) => replay::replay(&args),
        cli::Command::Info(args) => info::info(&args),
        cli::Command::Trace(cmd) => trace::trace(&cmd),
        cli::Command::Checkpoint(args) => checkpoint::checkpoint(&args),
        cli::Command::Seek(args) => seek::seek(&args),
        cli::Command::Bench(args) => bench::bench(&args),
        cli::Command::Symbols(args) => symbols::symbols(&args),
        cli::Command::Bisect(args) => bisect::bisect(&args),
        cli::Command::Mscan(args) => mscan::mscan(&args),
    };
    #[cfg(feature = "op-stats")]
    eprint!("{}", reprise_cpu::op_stats_report());
    std::process::exit(code);
}
