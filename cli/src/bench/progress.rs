//! Progress on the terminal while a run ramps up, publishes and holds: a
//! bar on a terminal, one line per phase in a log.

use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

/// A bar of `len` steps for the phase `what`.
pub(crate) fn bar(len: u64, what: &str) -> ProgressBar {
    let pb = ProgressBar::new(len);
    let style = ProgressStyle::with_template("{prefix:>12} [{bar:30}] {pos}/{len} {per_sec} {msg}")
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ");
    pb.set_style(style);
    pb.set_prefix(what.to_string());
    if pb.is_hidden() {
        // Not a terminal: one line per phase, so a log shows where a run is.
        eprintln!("{what}: {len}");
    }
    pb
}

/// Waits `secs` with a progress bar.
pub(crate) async fn hold(secs: f64, what: &str, status: impl Fn() -> String) {
    let pb = bar((secs * 10.0).ceil() as u64, what);
    let end = Instant::now() + Duration::from_secs_f64(secs);
    while Instant::now() < end {
        tokio::time::sleep(Duration::from_millis(100)).await;
        pb.inc(1);
        pb.set_message(status());
    }
    pb.finish_and_clear();
}
