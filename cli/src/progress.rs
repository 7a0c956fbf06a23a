//! Progress of a create or restore, always on stderr so stdout stays the
//! command's result: a bar on a terminal, throttled plain lines otherwise
//! (logs and CI keep a readable trace without thousands of lines).

use std::io::{self, IsTerminal, Write};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::output::format_size;

/// Receives the progress events of one long operation.
pub trait Progress {
    /// The operation is at `done` of `total` bytes of `step` (`total` is 0
    /// when unknown).
    fn update(&mut self, step: &str, done: u64, total: u64);

    /// The operation is over (successfully or not): leave the terminal clean.
    fn finish(&mut self);
}

/// The progress display suited to where stderr goes.
pub fn for_stderr() -> Box<dyn Progress> {
    if io::stderr().is_terminal() {
        Box::new(Bar::new())
    } else {
        Box::new(Lines::new(io::stderr()))
    }
}

/// An indicatif bar of bytes, with the step as its message.
pub struct Bar {
    bar: ProgressBar,
    step: Option<String>,
    total: u64,
}

impl Bar {
    /// A bar drawn on stderr, hidden until the first event.
    pub fn new() -> Self {
        let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
        Self {
            bar,
            step: None,
            total: 0,
        }
    }

    fn restyle(&self, total: u64) {
        // Without a total there is nothing to fill: show a spinner and bytes.
        let template = if total == 0 {
            "{spinner} {msg:<12} {bytes} ({bytes_per_sec})"
        } else {
            "{spinner} {msg:<12} [{bar:30}] {bytes}/{total_bytes} ({bytes_per_sec}, {eta})"
        };
        let style = ProgressStyle::with_template(template)
            .expect("the templates are valid")
            .progress_chars("=> ");
        self.bar.set_style(style);
        if total == 0 {
            self.bar.enable_steady_tick(Duration::from_millis(120));
        } else {
            self.bar.disable_steady_tick();
        }
    }
}

impl Default for Bar {
    fn default() -> Self {
        Self::new()
    }
}

impl Progress for Bar {
    fn update(&mut self, step: &str, done: u64, total: u64) {
        let new_step = self.step.as_deref() != Some(step);
        if new_step {
            // Position and timing start over for each step.
            self.bar.reset();
        }
        self.bar.set_length(total);
        self.bar.set_position(done);
        if new_step || (total == 0) != (self.total == 0) {
            self.restyle(total);
        }
        if new_step {
            self.step = Some(step.to_owned());
            self.bar.set_message(step.to_owned());
        }
        self.total = total;
    }

    fn finish(&mut self) {
        self.bar.finish_and_clear();
    }
}

impl Drop for Bar {
    fn drop(&mut self) {
        // An error path may skip `finish`: never leave a half-drawn bar
        // above the error message.
        if !self.bar.is_finished() {
            self.bar.finish_and_clear();
        }
    }
}

/// Plain `progress: data 40% (12.0 MB / 30.0 MB)` lines, written at a step
/// change, then at most once per 10% (or every 2 s when the total is unknown).
pub struct Lines<W: Write> {
    out: W,
    step: Option<String>,
    /// The last tenth (0..=10) printed for the current step.
    tenth: u64,
    last_line: Option<Instant>,
}

/// How often a step of unknown size is reported.
const UNKNOWN_TOTAL_EVERY: Duration = Duration::from_secs(2);

impl<W: Write> Lines<W> {
    /// Writes lines to `out`.
    pub fn new(out: W) -> Self {
        Self {
            out,
            step: None,
            tenth: 0,
            last_line: None,
        }
    }

    /// [`Progress::update`] at a given time, so the throttling is testable.
    fn update_at(&mut self, now: Instant, step: &str, done: u64, total: u64) {
        let tenth = tenth(done, total);
        let due = if self.step.as_deref() != Some(step) {
            self.step = Some(step.to_owned());
            true
        } else if total > 0 {
            tenth > self.tenth
        } else {
            self.last_line
                .is_none_or(|at| now.duration_since(at) >= UNKNOWN_TOTAL_EVERY)
        };
        if !due {
            return;
        }
        self.tenth = tenth;
        self.last_line = Some(now);
        let line = if total > 0 {
            let percent = (u128::from(done.min(total)) * 100 / u128::from(total)) as u64;
            format!(
                "progress: {step} {percent}% ({} / {})",
                format_size(done),
                format_size(total)
            )
        } else {
            format!("progress: {step} {}", format_size(done))
        };
        // Progress is a courtesy: a closed stderr must not fail the backup.
        let _ = writeln!(self.out, "{line}");
    }

    /// The writer, to inspect what was written.
    pub fn into_inner(self) -> W {
        self.out
    }
}

fn tenth(done: u64, total: u64) -> u64 {
    if total == 0 {
        0
    } else {
        (u128::from(done.min(total)) * 10 / u128::from(total)) as u64
    }
}

impl<W: Write> Progress for Lines<W> {
    fn update(&mut self, step: &str, done: u64, total: u64) {
        self.update_at(Instant::now(), step, done, total);
    }

    fn finish(&mut self) {
        let _ = self.out.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(lines: Lines<Vec<u8>>) -> String {
        String::from_utf8(lines.into_inner()).unwrap()
    }

    #[test]
    fn prints_at_step_changes_and_every_tenth() {
        let mut p = Lines::new(Vec::new());
        let now = Instant::now();
        let mb = 1024 * 1024;
        for done in (0..=30 * mb).step_by(mb as usize) {
            p.update_at(now, "data", done, 30 * mb);
        }
        p.update_at(now, "env", 10, 100);
        p.update_at(now, "env", 11, 100);
        let out = text(p);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines[0], "progress: data 0% (0.0 B / 30.0 MB)");
        assert!(
            lines.contains(&"progress: data 40% (12.0 MB / 30.0 MB)"),
            "{out}"
        );
        assert_eq!(lines[10], "progress: data 100% (30.0 MB / 30.0 MB)");
        assert_eq!(lines[11], "progress: env 10% (10.0 B / 100.0 B)");
        assert_eq!(lines.len(), 12, "{out}");
    }

    #[test]
    fn unknown_totals_print_every_two_seconds() {
        let mut p = Lines::new(Vec::new());
        let start = Instant::now();
        p.update_at(start, "services/postgres_db", 1, 0);
        p.update_at(start + Duration::from_secs(1), "services/postgres_db", 2, 0);
        p.update_at(
            start + Duration::from_secs(2),
            "services/postgres_db",
            2048,
            0,
        );
        assert_eq!(
            text(p),
            "progress: services/postgres_db 1.0 B\nprogress: services/postgres_db 2.0 KB\n"
        );
    }
}
