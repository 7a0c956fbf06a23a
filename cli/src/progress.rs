//! Progress of a create or restore, always on stderr so stdout stays the
//! command's result: a bar on a terminal, throttled plain lines otherwise
//! (logs and CI keep a readable trace without thousands of lines), JSON
//! lines with `--json`. Lines end with a 100% line when the operation
//! completes.

use std::fmt;
use std::io::{self, IsTerminal, Write};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressState, ProgressStyle};

use crate::output::format_size;

/// Receives the progress events of one long operation.
pub trait Progress {
    /// The operation is at `done` of `total` bytes of `step` (`total` is 0
    /// when unknown).
    fn update(&mut self, step: &str, done: u64, total: u64);

    /// The operation is over, `completed` or not: leave the terminal clean.
    fn finish(&mut self, completed: bool);
}

/// The progress display suited to where stderr goes: JSON lines for
/// `--json`, a bar on a terminal, plain lines otherwise.
pub fn for_stderr(json: bool) -> Box<dyn Progress> {
    if json {
        Box::new(Lines::json(io::stderr()))
    } else if io::stderr().is_terminal() {
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
        // Sizes in the unit of every summary (`15.6 MB`), not indicatif's
        // own `{bytes}` (MiB): one unit on the screen.
        let template = if total == 0 {
            "{spinner} {msg:<12} {done} ({rate})"
        } else {
            "{spinner} {msg:<12} [{bar:30}] {done}/{total} ({rate}, {eta})"
        };
        let style = ProgressStyle::with_template(template)
            .expect("the templates are valid")
            .with_key("done", |s: &ProgressState, w: &mut dyn fmt::Write| {
                let _ = w.write_str(&format_size(s.pos()));
            })
            .with_key("total", |s: &ProgressState, w: &mut dyn fmt::Write| {
                let _ = w.write_str(&format_size(s.len().unwrap_or(0)));
            })
            .with_key("rate", |s: &ProgressState, w: &mut dyn fmt::Write| {
                let _ = write!(w, "{}/s", format_size(s.per_sec() as u64));
            })
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

    fn finish(&mut self, _completed: bool) {
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
    /// One JSON object per line instead of text.
    json: bool,
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
            json: false,
        }
    }

    /// Writes JSON lines to `out`: `{"progress": {"step": ..., "done": ...,
    /// "total": ... or null, "percent": ... or null}}`.
    pub fn json(out: W) -> Self {
        Self {
            json: true,
            ..Self::new(out)
        }
    }

    fn write(&mut self, step: &str, done: u64, total: Option<u64>) {
        let percent = total.map(|t| (u128::from(done.min(t)) * 100 / u128::from(t.max(1))) as u64);
        let line = if self.json {
            serde_json::json!({"progress": {
                "step": step, "done": done, "total": total, "percent": percent,
            }})
            .to_string()
        } else {
            match (total, percent) {
                (Some(t), Some(p)) => format!(
                    "progress: {step} {p}% ({} / {})",
                    format_size(done),
                    format_size(t)
                ),
                _ => format!("progress: {step} {}", format_size(done)),
            }
        };
        // Progress is a courtesy: a closed stderr must not fail the backup.
        let _ = writeln!(self.out, "{line}");
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
        self.write(step, done, (total > 0).then_some(total));
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

    fn finish(&mut self, completed: bool) {
        // The trace of a completed operation ends at 100%, whatever the
        // throttling let through.
        if completed && !(self.tenth == 10 && self.step.is_some()) {
            let line = if self.json {
                serde_json::json!({"progress": {"step": "done", "percent": 100}}).to_string()
            } else {
                "progress: done 100%".to_owned()
            };
            let _ = writeln!(self.out, "{line}");
        }
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
    fn a_completed_operation_ends_at_100_percent_and_json_lines_parse() {
        let mut p = Lines::new(Vec::new());
        let now = Instant::now();
        p.update_at(now, "data", 10, 100);
        p.finish(true);
        assert_eq!(
            text(p),
            "progress: data 10% (10.0 B / 100.0 B)\nprogress: done 100%\n"
        );
        // A failed one does not claim it.
        let mut p = Lines::new(Vec::new());
        p.update_at(now, "data", 10, 100);
        p.finish(false);
        assert!(!text(p).contains("100%"));
        let mut p = Lines::json(Vec::new());
        p.update_at(now, "data", 10, 100);
        p.update_at(now, "services/postgres_db", 5, 0);
        p.finish(true);
        let out = text(p);
        let docs: Vec<serde_json::Value> = out
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(docs[0]["progress"]["percent"], 10);
        assert!(docs[1]["progress"]["total"].is_null());
        assert_eq!(docs[2]["progress"]["step"], "done");
        assert_eq!(docs.len(), 3);
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
