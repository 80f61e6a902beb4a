//! A run's figures: a table for people and one JSON line for scripts
//! (`scripts/bench.sh` keeps the lines that start with `{`).

use serde_json::Value;

use super::delivery::Received;
use super::proc::ProcSample;

/// The figures of one run, in the order they were added.
pub(crate) struct Report {
    title: String,
    rows: Vec<(String, Value)>,
    /// Reasons to doubt a figure, printed under the table and carried in
    /// the JSON line as `warnings`.
    warnings: Vec<String>,
}

impl Report {
    pub(crate) fn new(title: &str) -> Self {
        Self { title: title.into(), rows: Vec::new(), warnings: Vec::new() }
    }

    pub(crate) fn add(&mut self, key: &str, v: impl Into<Value>) {
        self.rows.push((key.into(), v.into()));
    }

    pub(crate) fn warn(&mut self, why: String) {
        self.warnings.push(why);
    }

    /// What a fan-out delivered: `delivered` messages against `expected`,
    /// `lost` of them, over `secs`; duplicates and reordering as `seen` by
    /// the subscribers that count.
    pub(crate) fn delivery_rows(
        &mut self,
        expected: u64,
        delivered: u64,
        lost: u64,
        secs: f64,
        seen: &[&Received],
    ) {
        self.add("expected_deliveries", expected);
        self.add("deliveries", delivered);
        self.add("deliveries_per_s", round2(delivered as f64 / secs.max(1e-9)));
        self.add("lost", lost);
        self.add("duplicates", seen.iter().map(|r| r.duplicates).sum::<u64>());
        self.add("out_of_order", seen.iter().map(|r| r.out_of_order).sum::<u64>());
    }

    /// The count, percentiles and maximum of latencies `lat` (µs), in ms,
    /// as `{prefix}latency_…` rows.
    pub(crate) fn latency_rows(&mut self, prefix: &str, mut lat: Vec<u64>) {
        lat.sort_unstable();
        self.add(&format!("{prefix}latency_samples"), lat.len());
        for (name, p) in [("p50", 50.0), ("p99", 99.0), ("p999", 99.9)] {
            self.add(&format!("{prefix}latency_{name}_ms"), ms(pct(&lat, p)));
        }
        self.add(&format!("{prefix}latency_max_ms"), ms(lat.last().copied().unwrap_or(0)));
    }

    /// The server's RSS growth between two samples, per connection held.
    pub(crate) fn rss_per_connection(
        &mut self,
        before: Option<ProcSample>,
        after: Option<ProcSample>,
        connections: usize,
    ) {
        if let (Some(a), Some(b)) = (before, after) {
            let per = b.rss_kib.saturating_sub(a.rss_kib) as f64 / connections.max(1) as f64;
            self.add("server_rss_kib_per_connection", round2(per));
        }
    }

    /// The server's RSS growth between two samples.
    pub(crate) fn rss_growth(&mut self, before: Option<ProcSample>, after: Option<ProcSample>) {
        if let (Some(a), Some(b)) = (before, after) {
            self.add("server_rss_growth_mib", round2((b.rss_kib as f64 - a.rss_kib as f64) / 1024.0));
        }
    }

    /// Prints the table, then the JSON line.
    pub(crate) fn print(&self) {
        println!("\n{}", self.title);
        let width = self.rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
        for (k, v) in &self.rows {
            let v = match v {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            println!("  {k:<width$}  {v}");
        }
        for w in &self.warnings {
            println!("  warning: {w}");
        }
        let mut map: serde_json::Map<String, Value> = self.rows.iter().cloned().collect();
        if !self.warnings.is_empty() {
            map.insert("warnings".into(), self.warnings.clone().into());
        }
        println!("{}", Value::Object(map));
    }
}

/// Percentile `p` (0..=100) of sorted values.
fn pct(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let i = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn ms(us: u64) -> f64 {
    (us as f64 / 1000.0 * 100.0).round() / 100.0
}

/// `x` to two decimals, as every figure is reported.
pub(crate) fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}
