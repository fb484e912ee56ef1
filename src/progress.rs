//! The progress display on stderr of every long command (`replay`, `checkpoint`, `seek`,
//! `bisect`, `mscan`): instructions done against the total, rate and ETA, or a count of
//! records read. Hidden when stderr is not a terminal (indicatif's stderr target draws
//! nothing then), so scripts and tests see only the usual messages.
//!
//! A replay's machine loop cannot call back, so a thread samples the position the replayer
//! notes at every quantum ([`reprise_replay::control::position`]) ten times a second
//! ([`Progress::start`]); a reader that can report as it goes sets the count itself
//! ([`Progress::counter`]).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use reprise_replay::control;

/// A running progress display; [`Progress::finish`] (or dropping it) removes it.
pub struct Progress {
    bar: ProgressBar,
    done: Arc<AtomicBool>,
    sampler: Option<JoinHandle<()>>,
}

impl Progress {
    /// Show `what`, out of `total` instructions when known.
    pub fn start(what: &str, total: Option<u64>) -> Progress {
        let bar = ProgressBar::with_draw_target(total, ProgressDrawTarget::stderr_with_hz(4));
        let template = if total.is_some() {
            "{msg} [{bar:30}] {human_pos}/{human_len} instructions, {per_sec}, ETA {eta}"
        } else {
            "{msg} {human_pos} instructions, {per_sec}"
        };
        if let Ok(style) = ProgressStyle::with_template(template) {
            bar.set_style(style.progress_chars("=> "));
        }
        bar.set_message(what.to_string());
        let done = Arc::new(AtomicBool::new(false));
        let (b, d) = (bar.clone(), done.clone());
        let sampler = (!bar.is_hidden()).then(|| {
            std::thread::spawn(move || {
                while !d.load(Ordering::Relaxed) {
                    b.set_position(control::position());
                    std::thread::sleep(Duration::from_millis(100));
                }
            })
        });
        Progress { bar, done, sampler }
    }

    /// Show `what` with a count of `unit`s that the caller advances with [`Progress::set`]
    /// (no total: a spinner, the count and its rate).
    pub fn counter(what: &str, unit: &str) -> Progress {
        let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr_with_hz(4));
        let template = format!("{{spinner}} {{msg}} {{human_pos}} {unit}, {{per_sec}}");
        if let Ok(style) = ProgressStyle::with_template(&template) {
            bar.set_style(style);
        }
        bar.set_message(what.to_string());
        Progress {
            bar,
            done: Arc::new(AtomicBool::new(false)),
            sampler: None,
        }
    }

    /// A display that shows nothing (`--no-progress`).
    pub fn hidden() -> Progress {
        Progress {
            bar: ProgressBar::hidden(),
            done: Arc::new(AtomicBool::new(false)),
            sampler: None,
        }
    }

    /// Set the count of a [`Progress::counter`].
    pub fn set(&self, n: u64) {
        self.bar.set_position(n);
    }

    /// Remove the display.
    pub fn finish(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        self.done.store(true, Ordering::Relaxed);
        if let Some(t) = self.sampler.take() {
            let _ = t.join();
        }
        self.bar.finish_and_clear();
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The instruction count at which the recording in `dir` ends, for the display's total:
/// read from its log only when the display is shown (stderr is a terminal), since that
/// reads the whole log once more.
pub fn recording_total(dir: &std::path::Path) -> Option<u64> {
    use std::io::IsTerminal;
    if !std::io::stderr().is_terminal() {
        return None;
    }
    let manifest = reprise_record::manifest::Manifest::read(dir).ok()?;
    let scan = reprise_record::scan::LogScan::read(&dir.join(&manifest.log)).ok()?;
    scan.end
        .as_ref()
        .map(|e| e.state.cpus.iter().map(|c| c.retired).sum())
}
