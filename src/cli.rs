//! Command-line syntax: the clap definitions and the parsers of sizes and counts.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};
use reprise_devices::machine::DEFAULT_QUANTUM;
use reprise_devices::ExitCodeStyle;

/// reprise: a deterministic record/replay tracer for x86-64 machines.
#[derive(Debug, Parser)]
#[command(name = "reprise", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a guest image (a bare-protocol ELF64, see BOOT-PROTOCOL.md).
    Run(RunArgs),
}

const RUN_AFTER_HELP: &str = "\
The guest's serial port (COM1) is connected to stdin and stdout; reprise's own messages go to stderr.

Exit status:
  v        the guest wrote v to the debug-exit port 0xf4 (low 8 bits; (v<<1)|1 with --exit-code qemu)
  0        the guest reset the machine (reported on stderr)
  1        reprise error: bad options, unreadable or invalid image, serial output failed
  124      --max-instructions reached
  125      the guest crashed: triple fault, unimplemented instruction, all vCPUs halted";

/// Options of `reprise run`.
#[derive(Debug, Args)]
#[command(after_help = RUN_AFTER_HELP)]
pub struct RunArgs {
    /// Number of vCPUs (1 to 255).
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub cpus: u32,

    /// Guest RAM: bytes, or with a K, M or G suffix (powers of 1024), e.g. 256M, 1G.
    #[arg(long, default_value = "256M", value_name = "SIZE", value_parser = parse_size)]
    pub mem: u64,

    /// Instructions each vCPU runs before the next one takes its turn.
    #[arg(long, default_value_t = DEFAULT_QUANTUM, value_name = "N", value_parser = parse_count)]
    pub quantum: u64,

    /// Stop (status 124) once this many instructions have run, all vCPUs together.
    #[arg(long, value_name = "N", value_parser = parse_count)]
    pub max_instructions: Option<u64>,

    /// How a value written to the debug-exit port becomes the exit status.
    #[arg(long, value_enum, default_value_t = ExitCodeArg::Plain, value_name = "STYLE")]
    pub exit_code: ExitCodeArg,

    /// Print instructions retired per vCPU, total, wall time and MIPS to stderr at the end.
    #[arg(long)]
    pub summary: bool,

    /// Do not connect stdin to the guest's serial port.
    #[arg(long)]
    pub no_stdin: bool,

    /// The guest image.
    #[arg(value_name = "IMAGE")]
    pub image: PathBuf,
}

/// `--exit-code` values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ExitCodeArg {
    /// The status is the value written.
    Plain,
    /// The status is (value << 1) | 1, as QEMU's isa-debug-exit reports it.
    Qemu,
}

impl From<ExitCodeArg> for ExitCodeStyle {
    fn from(a: ExitCodeArg) -> ExitCodeStyle {
        match a {
            ExitCodeArg::Plain => ExitCodeStyle::Plain,
            ExitCodeArg::Qemu => ExitCodeStyle::Qemu,
        }
    }
}

/// A size in bytes: digits (underscores allowed) with an optional K/M/G/T suffix, optionally
/// followed by `B` or `iB`; suffixes are powers of 1024, case-insensitive.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let lower = t.to_ascii_lowercase();
    let unit_start = lower
        .find(|c: char| !(c.is_ascii_digit() || c == '_'))
        .unwrap_or(lower.len());
    let (digits, unit) = lower.split_at(unit_start);
    let shift = match unit {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        "t" | "tb" | "tib" => 40,
        _ => return Err(format!("'{t}' is not a size (examples: 256M, 1G, 4096)")),
    };
    let n = parse_count(digits)
        .map_err(|_| format!("'{t}' is not a size (examples: 256M, 1G, 4096)"))?;
    n.checked_mul(1u64 << shift)
        .ok_or_else(|| format!("'{t}' is too large"))
}

/// A count: decimal digits, underscores allowed as separators (`10_000_000`).
pub fn parse_count(s: &str) -> Result<u64, String> {
    let digits: String = s.trim().chars().filter(|&c| c != '_').collect();
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("'{s}' is not a number"));
    }
    digits
        .parse::<u64>()
        .map_err(|_| format!("'{s}' is too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("256M"), Ok(256 << 20));
        assert_eq!(parse_size("256m"), Ok(256 << 20));
        assert_eq!(parse_size("1G"), Ok(1 << 30));
        assert_eq!(parse_size("1GiB"), Ok(1 << 30));
        assert_eq!(parse_size("64k"), Ok(64 << 10));
        assert_eq!(parse_size("1_024K"), Ok(1 << 20));
        assert!(parse_size("").is_err());
        assert!(parse_size("M").is_err());
        assert!(parse_size("1.5G").is_err());
        assert!(parse_size("-1").is_err());
        assert!(parse_size("12Q").is_err());
        assert!(parse_size("99999999999T").is_err());
    }

    #[test]
    fn counts() {
        assert_eq!(parse_count("10_000"), Ok(10_000));
        assert_eq!(parse_count("0"), Ok(0));
        assert!(parse_count("1e6").is_err());
        assert!(parse_count("").is_err());
        assert!(parse_count("99999999999999999999999").is_err());
    }

    #[test]
    fn the_command_line_is_well_formed() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
