//! Presentation: progress lines, result tables (terminal and Markdown),
//! targets, and the JSON files under `target/bench/`.

use std::fmt::Write as _;
use std::path::Path;
use std::sync::OnceLock;

use anyhow::Context;
use hdrhistogram::Histogram;
use serde::Serialize;

/// Unix time (ms) the run started; child processes inherit it through
/// this environment variable so their progress lines share the clock.
const EPOCH_VAR: &str = "TICKFORGE_BENCH_EPOCH_MS";

static EPOCH_MS: OnceLock<u128> = OnceLock::new();

fn unix_ms() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis())
}

fn epoch_ms() -> u128 {
    *EPOCH_MS.get_or_init(|| {
        std::env::var(EPOCH_VAR)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(unix_ms)
    })
}

/// Marks the start of the run for the progress timestamps (and for the
/// child processes, which inherit it).
pub fn start_clock() {
    let epoch = epoch_ms();
    // SAFETY: main calls this first, before any other thread exists.
    unsafe { std::env::set_var(EPOCH_VAR, epoch.to_string()) };
}

/// Prints one progress line on stderr, stamped with the run's elapsed time.
pub fn progress(line: impl AsRef<str>) {
    let elapsed = unix_ms().saturating_sub(epoch_ms()) as f64 / 1000.0;
    eprintln!("[{elapsed:>6.1}s] {}", line.as_ref());
}

/// A result table: printed aligned on the terminal, or as Markdown.
#[derive(Debug, Clone, Serialize)]
pub struct Table {
    pub title: String,
    pub headers: Vec<String>,
    pub rows: Vec<Vec<String>>,
    /// Lines printed under the table (ratios, notes).
    pub notes: Vec<String>,
}

impl Table {
    pub fn new(title: impl Into<String>, headers: &[&str]) -> Self {
        Self {
            title: title.into(),
            headers: headers.iter().map(|h| (*h).to_owned()).collect(),
            rows: Vec::new(),
            notes: Vec::new(),
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    pub fn note(&mut self, note: impl Into<String>) {
        self.notes.push(note.into());
    }

    fn widths(&self) -> Vec<usize> {
        let mut widths: Vec<usize> = self.headers.iter().map(|h| h.chars().count()).collect();
        for row in &self.rows {
            for (i, cell) in row.iter().enumerate() {
                if i < widths.len() {
                    widths[i] = widths[i].max(cell.chars().count());
                }
            }
        }
        widths
    }

    /// The table as aligned text (first column left, numbers right).
    pub fn text(&self) -> String {
        let widths = self.widths();
        let mut out = String::new();
        let _ = writeln!(out, "\n{}", self.title);
        let line = |cells: &[String], out: &mut String| {
            let mut text = String::new();
            for (i, width) in widths.iter().enumerate() {
                let cell = cells.get(i).map_or("", String::as_str);
                if i == 0 {
                    let _ = write!(text, "{cell:<width$}");
                } else {
                    let _ = write!(text, "  {cell:>width$}");
                }
            }
            let _ = writeln!(out, "{}", text.trim_end());
        };
        line(&self.headers, &mut out);
        let rule: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();
        line(&rule, &mut out);
        for row in &self.rows {
            line(row, &mut out);
        }
        for note in &self.notes {
            let _ = writeln!(out, "{note}");
        }
        out
    }

    /// The table as Markdown.
    pub fn markdown(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "**{}**\n", self.title);
        let _ = writeln!(out, "| {} |", self.headers.join(" | "));
        let align: Vec<&str> = (0..self.headers.len())
            .map(|i| if i == 0 { "---" } else { "---:" })
            .collect();
        let _ = writeln!(out, "| {} |", align.join(" | "));
        for row in &self.rows {
            let _ = writeln!(out, "| {} |", row.join(" | "));
        }
        if !self.notes.is_empty() {
            out.push('\n');
            for note in &self.notes {
                let _ = writeln!(out, "{note}  ");
            }
        }
        out
    }
}

/// One target from the issue and whether this run met it.
#[derive(Debug, Clone, Serialize)]
pub struct Target {
    pub benchmark: String,
    pub name: String,
    pub goal: String,
    pub measured: String,
    /// `None` when the run could not tell (skipped, not measured).
    pub met: Option<bool>,
}

impl Target {
    pub fn new(
        benchmark: &str,
        name: impl Into<String>,
        goal: impl Into<String>,
        measured: impl Into<String>,
        met: Option<bool>,
    ) -> Self {
        Self {
            benchmark: benchmark.to_owned(),
            name: name.into(),
            goal: goal.into(),
            measured: measured.into(),
            met,
        }
    }
}

/// The targets as a table.
pub fn targets_table(targets: &[Target]) -> Table {
    let mut table = Table::new(
        "Targets",
        &["benchmark", "target", "goal", "measured", "met"],
    );
    for t in targets {
        table.row(vec![
            t.benchmark.clone(),
            t.name.clone(),
            t.goal.clone(),
            t.measured.clone(),
            match t.met {
                Some(true) => "yes".to_owned(),
                Some(false) => "NO".to_owned(),
                None => "n/a".to_owned(),
            },
        ]);
    }
    table
}

/// What one benchmark produced.
#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    pub name: &'static str,
    /// Set when the benchmark did not run (e.g. no Redis).
    pub skipped: Option<String>,
    pub tables: Vec<Table>,
    pub targets: Vec<Target>,
    /// Everything measured, for comparing runs.
    pub results: serde_json::Value,
}

impl Outcome {
    pub fn skipped(name: &'static str, why: impl Into<String>) -> Self {
        Self {
            name,
            skipped: Some(why.into()),
            tables: Vec::new(),
            targets: Vec::new(),
            results: serde_json::Value::Null,
        }
    }

    /// Lists a target the skipped benchmark would have checked.
    pub fn with_target(mut self, name: &str, goal: &str) -> Self {
        let measured = format!("skipped ({})", self.skipped.as_deref().unwrap_or("not run"));
        self.targets
            .push(Target::new(self.name, name, goal, measured, None));
        self
    }
}

/// Writes `value` as pretty JSON to `dir/name.json`.
pub fn write_json(dir: &Path, name: &str, value: &impl Serialize) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let path = dir.join(format!("{name}.json"));
    let text = serde_json::to_string_pretty(value).context("encoding results as JSON")?;
    std::fs::write(&path, text + "\n").with_context(|| format!("writing {}", path.display()))?;
    progress(format!("wrote {}", path.display()));
    Ok(())
}

/// Writes `text` to `dir/name`.
pub fn write_text(dir: &Path, name: &str, text: &str) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let path = dir.join(name);
    std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    progress(format!("wrote {}", path.display()));
    Ok(())
}

/// A histogram in microseconds, 1 µs to 60 s at 3 significant digits.
pub fn micros_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("static histogram bounds are valid")
}

/// Records a duration in a microsecond histogram.
pub fn record(h: &mut Histogram<u64>, d: std::time::Duration) {
    let micros = u64::try_from(d.as_micros()).unwrap_or(u64::MAX).max(1);
    h.saturating_record(micros);
}

/// Quantile of a microsecond histogram, in milliseconds.
pub fn ms(h: &Histogram<u64>, quantile: f64) -> f64 {
    if h.is_empty() {
        return f64::NAN;
    }
    h.value_at_quantile(quantile) as f64 / 1000.0
}

/// Largest value of a microsecond histogram, in milliseconds.
pub fn max_ms(h: &Histogram<u64>) -> f64 {
    if h.is_empty() {
        return f64::NAN;
    }
    h.max() as f64 / 1000.0
}

/// `after - before` for cumulative histograms with the same bounds.
pub fn window(after: &Histogram<u64>, before: &Histogram<u64>) -> Histogram<u64> {
    let mut h = after.clone();
    if h.subtract(before).is_err() {
        // Only if `before` is not a prefix of `after`; keep the cumulative one.
        return after.clone();
    }
    h
}

/// A rate with a unit-free suffix: 1.23M, 456k, 789.
pub fn si(value: f64) -> String {
    if !value.is_finite() {
        return "-".to_owned();
    }
    let abs = value.abs();
    if abs >= 10e6 {
        format!("{:.1}M", value / 1e6)
    } else if abs >= 1e6 {
        format!("{:.2}M", value / 1e6)
    } else if abs >= 10e3 {
        format!("{:.0}k", value / 1e3)
    } else if abs >= 1e3 {
        format!("{:.1}k", value / 1e3)
    } else {
        format!("{value:.0}")
    }
}

/// A number with `digits` decimals, or "-" when unknown.
pub fn num(value: f64, digits: usize) -> String {
    if value.is_finite() {
        format!("{value:.digits$}")
    } else {
        "-".to_owned()
    }
}

/// An optional number with `digits` decimals.
pub fn opt(value: Option<f64>, digits: usize) -> String {
    value.map_or_else(|| "-".to_owned(), |v| num(v, digits))
}
