//! Progress for long steps: a bar on a terminal, a line now and then
//! elsewhere (CI logs), so a 20-minute kernel build is never silent.

use std::io::IsTerminal;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

/// How often a non-terminal progress line is printed.
const PLAIN_INTERVAL: Duration = Duration::from_secs(30);

pub struct StepProgress {
    what: &'static str,
    bar: Option<ProgressBar>,
    started: Instant,
    estimate: Option<u64>,
    plain: Mutex<PlainState>,
}

struct PlainState {
    steps: u64,
    last_print: Instant,
}

impl StepProgress {
    /// `estimate` is the expected number of steps, if known.
    pub fn new(what: &'static str, estimate: Option<u64>) -> Self {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = match estimate {
                Some(n) => ProgressBar::new(n).with_style(
                    ProgressStyle::with_template(
                        "{prefix} [{elapsed_precise}] {wide_bar} {pos}/~{len} {msg:.dim}",
                    )
                    .unwrap_or_else(|_| ProgressStyle::default_bar()),
                ),
                None => ProgressBar::new_spinner().with_style(
                    ProgressStyle::with_template("{prefix} [{elapsed_precise}] {spinner} {msg}")
                        .unwrap_or_else(|_| ProgressStyle::default_spinner()),
                ),
            };
            bar.set_prefix(what);
            bar.enable_steady_tick(Duration::from_millis(200));
            bar
        });
        if bar.is_none() {
            eprintln!("schedrig: {what}...");
        }
        let now = Instant::now();
        Self {
            what,
            bar,
            started: now,
            estimate,
            plain: Mutex::new(PlainState {
                steps: 0,
                last_print: now,
            }),
        }
    }

    /// One step done; `msg` says which.
    pub fn step(&self, msg: &str) {
        if let Some(bar) = &self.bar {
            if bar.length().is_some_and(|l| bar.position() + 1 >= l) {
                bar.inc_length(bar.length().unwrap_or(0) / 10 + 1);
            }
            bar.inc(1);
            bar.set_message(msg.to_string());
            return;
        }
        let Ok(mut st) = self.plain.lock() else {
            return;
        };
        st.steps += 1;
        if st.last_print.elapsed() >= PLAIN_INTERVAL {
            st.last_print = Instant::now();
            let pct = self
                .estimate
                .map(|e| format!(" ~{}%", (st.steps * 100 / e.max(1)).min(99)))
                .unwrap_or_default();
            eprintln!(
                "schedrig: {}: {} steps{pct}, {}s elapsed",
                self.what,
                st.steps,
                self.started.elapsed().as_secs()
            );
        }
    }

    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
        eprintln!(
            "schedrig: {} done in {:.1}s",
            self.what,
            self.started.elapsed().as_secs_f64()
        );
    }
}
