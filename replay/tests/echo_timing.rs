//! Input typed at random moments, through the library: the `echo` guest is recorded with a
//! scripted source of serial bytes (wrapped by the recorder exactly as the host's stdin is
//! for `reprise record`), then replayed; console, state hash and every event must agree.

use std::cell::RefCell;
use std::io::Write;
use std::path::PathBuf;
use std::rc::Rc;

use proptest::prelude::*;
use reprise_devices::{ExitCodeStyle, ScriptedInputs};
use reprise_fixtures::fixture_path;
use reprise_record::manifest::{Clock, MachineOptions};
use reprise_record::session::{record, RecordSetup};
use reprise_replay::{replay, ReplaySetup, Verdict};

/// A console the test can read after handing it to the machine.
#[derive(Clone, Default)]
struct Console(Rc<RefCell<Vec<u8>>>);

impl Write for Console {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.borrow_mut().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Console {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.borrow()).into_owned()
    }
}

/// The path `name` in a fresh temporary directory, which the returned guard removes when
/// the test case ends.
fn scratch(name: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::Builder::new()
        .prefix("reprise-echo-timing-")
        .tempdir()
        .unwrap();
    let p = dir.path().join(name);
    (dir, p)
}

/// Letters other than `q` (which ends the guest), each after a gap of instructions.
fn typing() -> impl Strategy<Value = Vec<(u64, u8)>> {
    prop::collection::vec(
        (
            0u64..150_000,
            prop::sample::select(b"abcdefghijklmnoprstuvwxyz .\n".to_vec()),
        ),
        0..12,
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn echo_with_input_at_random_moments_replays_identically(
        typed in typing(),
        last_gap in 0u64..100_000,
        cpus in 1u32..=2,
        quantum in prop::sample::select(vec![100u64, 1_000, 10_000]),
        sync_every in prop::sample::select(vec![0u64, 7_919, 50_000, 1_000_000]),
        case in 0u64..u64::MAX,
    ) {
        let mut inputs = ScriptedInputs::new();
        inputs.rtc_time = 1_700_000_000;
        let mut at = 0;
        let mut expected = String::new();
        for &(gap, byte) in &typed {
            at += gap;
            inputs = inputs.with_serial_at(at, byte);
            expected.push(byte as char);
        }
        inputs = inputs.with_serial_at(at + last_gap, b'q');
        expected.push_str("\nbye\n");

        let (_parent, dir) = scratch(&format!("rec-{case:x}"));
        let setup = RecordSetup {
            dir: dir.clone(),
            force: false,
            machine: MachineOptions {
                cpus,
                ram_bytes: 16 << 20,
                quantum,
                exit_code: ExitCodeStyle::Plain,
                max_instructions: Some(50_000_000),
                serial_input: true,
            },
            clock: Clock::Virtual,
            sync_every,
            checkpoint_every: 0,
            boot: reprise_record::boot::BootSpec::Bare(fixture_path("echo")),
            tool: "test".into(),
        };
        let recorded_console = Console::default();
        let rec = record(&setup, inputs, Box::new(recorded_console.clone())).unwrap();
        prop_assert_eq!(recorded_console.text(), expected.clone());
        prop_assert_eq!(rec.log.counts.serial, typed.len() as u64 + 1);

        for _ in 0..2 {
            let replayed_console = Console::default();
            let r = replay(
                &ReplaySetup { dir: dir.clone(), ..ReplaySetup::default() },
                Box::new(replayed_console.clone()),
            )
            .unwrap();
            prop_assert!(matches!(r.verdict, Verdict::Identical), "{:?}", r.verdict);
            prop_assert_eq!(replayed_console.text(), expected.clone());
            prop_assert_eq!(r.state_hash, rec.state_hash);
            prop_assert_eq!(&r.result, &rec.result);
            prop_assert_eq!(r.consumed.serial, rec.log.counts.serial);
            prop_assert_eq!(r.consumed.sync, rec.log.counts.sync);
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
