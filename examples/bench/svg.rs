//! The latency picture of the network benchmark, as hand-written SVG: one
//! histogram line per client count on a logarithmic latency axis (so a
//! sharp peak at one tick and a tail of seconds fit one picture), with the
//! tick period, the target and each series' p99 marked.

use std::fmt::Write as _;

use crate::network::LOG_BINS_PER_DECADE;

/// One line of the picture.
#[derive(Debug, Clone)]
pub struct Series {
    /// The legend, e.g. "400 clients".
    pub label: String,
    /// Counts per logarithmic bin (`network::log_bins`).
    pub log_bins: Vec<u64>,
    pub p001_ms: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
}

const WIDTH: f64 = 900.0;
const HEIGHT: f64 = 500.0;
const LEFT: f64 = 75.0;
const RIGHT: f64 = 870.0;
const TOP: f64 = 70.0;
const BOTTOM: f64 = 410.0;
const COLORS: [&str; 6] = [
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b",
];

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// A round step for an axis spanning `span`, about `ticks` steps.
fn nice_step(span: f64, ticks: f64) -> f64 {
    let raw = (span / ticks).max(1e-9);
    let magnitude = 10f64.powf(raw.log10().floor());
    let unit = raw / magnitude;
    let nice = if unit <= 1.0 {
        1.0
    } else if unit <= 2.0 {
        2.0
    } else if unit <= 5.0 {
        5.0
    } else {
        10.0
    };
    nice * magnitude
}

/// Milliseconds as an axis label: 20, 500, 1 s, 2 s.
fn ms_label(ms: f64) -> String {
    if ms >= 1000.0 {
        format!("{} s", ms / 1000.0)
    } else {
        format!("{ms}")
    }
}

/// The picture for `results` (one series each); `period_ms` and `target_ms`
/// are drawn as vertical lines; `footer` names the machine and run.
pub fn latency_histogram(
    results: &[Series],
    title: &str,
    period_ms: f64,
    target_ms: f64,
    footer: &str,
) -> String {
    let finite = |v: f64| v.is_finite().then_some(v);
    // The axis spans the 0.1st to the 99.9th percentile of every series.
    let low = results
        .iter()
        .filter_map(|r| finite(r.p001_ms))
        .fold(period_ms, f64::min);
    let high = results
        .iter()
        .filter_map(|r| finite(r.p999_ms))
        .fold(target_ms, f64::max);
    let decade = |v: f64, up: bool| {
        // The nearest 1-2-5 value below (or above) v.
        let magnitude = 10f64.powf(v.log10().floor());
        let steps = [1.0, 2.0, 5.0, 10.0];
        if up {
            steps
                .iter()
                .map(|s| s * magnitude)
                .find(|&s| s >= v)
                .unwrap_or(10.0 * magnitude)
        } else {
            steps
                .iter()
                .rev()
                .map(|s| s * magnitude)
                .find(|&s| s <= v)
                .unwrap_or(magnitude)
        }
    };
    let x_min = decade((low * 0.8).max(1.0), false);
    let x_max = decade((high * 1.25).min(100_000.0), true).max(x_min * 10.0);
    let (log_min, log_max) = (x_min.log10(), x_max.log10());
    let x = |ms: f64| {
        let t = (ms.max(x_min).log10() - log_min) / (log_max - log_min);
        LEFT + t.clamp(0.0, 1.0) * (RIGHT - LEFT)
    };
    let bin_edge = |i: usize| 10f64.powf(i as f64 / LOG_BINS_PER_DECADE);

    let series: Vec<(String, Vec<f64>, &Series)> = results
        .iter()
        .map(|r| {
            let total = r.log_bins.iter().sum::<u64>().max(1) as f64;
            let shares = r
                .log_bins
                .iter()
                .map(|&c| c as f64 / total * 100.0)
                .collect();
            (r.label.clone(), shares, r)
        })
        .collect();
    let y_peak = series
        .iter()
        .flat_map(|(_, s, _)| s.iter().copied())
        .fold(0.0, f64::max)
        .max(0.1);
    let y_step = nice_step(y_peak * 1.1, 5.0);
    let y_max = (y_peak * 1.1 / y_step).ceil() * y_step;
    let y = |share: f64| BOTTOM - (share / y_max).min(1.0) * (BOTTOM - TOP);

    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" font-family="DejaVu Sans, Helvetica, Arial, sans-serif" font-size="13">"#
    );
    let _ = writeln!(
        svg,
        r#"<rect x="0" y="0" width="{WIDTH}" height="{HEIGHT}" fill="white"/>"#
    );
    let _ = writeln!(
        svg,
        r#"<text x="{}" y="28" text-anchor="middle" font-size="17" font-weight="bold">{} ({:.0} Hz ticks)</text>"#,
        WIDTH / 2.0,
        escape(title),
        1000.0 / period_ms
    );
    let _ = writeln!(
        svg,
        r##"<text x="{}" y="48" text-anchor="middle" fill="#555">share of commands per bin ({LOG_BINS_PER_DECADE} bins per decade); command sent → first state at or after its tick</text>"##,
        WIDTH / 2.0
    );

    // Grid and axes.
    let mut v = 0.0;
    while v <= y_max + 1e-9 {
        let yy = y(v);
        let _ = writeln!(
            svg,
            r##"<line x1="{LEFT}" y1="{yy:.1}" x2="{RIGHT}" y2="{yy:.1}" stroke="#e5e5e5"/>"##
        );
        let _ = writeln!(
            svg,
            r#"<text x="{}" y="{:.1}" text-anchor="end">{}</text>"#,
            LEFT - 8.0,
            yy + 4.0,
            if y_step < 1.0 {
                format!("{v:.1}%")
            } else {
                format!("{v:.0}%")
            }
        );
        v += y_step;
    }
    let mut magnitude = 10f64.powf(log_min.floor());
    while magnitude <= x_max * 1.0001 {
        for step in [1.0, 2.0, 5.0] {
            let t = magnitude * step;
            if t < x_min * 0.9999 || t > x_max * 1.0001 {
                continue;
            }
            let xx = x(t);
            let _ = writeln!(
                svg,
                r##"<line x1="{xx:.1}" y1="{TOP}" x2="{xx:.1}" y2="{BOTTOM}" stroke="#f0f0f0"/><line x1="{xx:.1}" y1="{BOTTOM}" x2="{xx:.1}" y2="{:.1}" stroke="#333"/>"##,
                BOTTOM + 5.0
            );
            let _ = writeln!(
                svg,
                r#"<text x="{xx:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
                BOTTOM + 20.0,
                ms_label(t)
            );
        }
        magnitude *= 10.0;
    }
    let _ = writeln!(
        svg,
        r##"<line x1="{LEFT}" y1="{BOTTOM}" x2="{RIGHT}" y2="{BOTTOM}" stroke="#333"/><line x1="{LEFT}" y1="{TOP}" x2="{LEFT}" y2="{BOTTOM}" stroke="#333"/>"##
    );
    let _ = writeln!(
        svg,
        r#"<text x="{}" y="{:.1}" text-anchor="middle">latency (ms, logarithmic)</text>"#,
        (LEFT + RIGHT) / 2.0,
        BOTTOM + 42.0
    );
    let _ = writeln!(
        svg,
        r#"<text x="18" y="{:.1}" text-anchor="middle" transform="rotate(-90 18 {:.1})">share of commands</text>"#,
        (TOP + BOTTOM) / 2.0,
        (TOP + BOTTOM) / 2.0
    );

    // One step line per client count.
    for (i, (_, shares, _)) in series.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let mut path = format!("M{:.1},{:.1}", x(x_min), y(0.0));
        for (bin, share) in shares.iter().enumerate() {
            let (from, to) = (bin_edge(bin), bin_edge(bin + 1));
            if to <= x_min || from >= x_max {
                continue;
            }
            let (x0, x1, yy) = (x(from), x(to), y(*share));
            let _ = write!(path, " L{x0:.1},{yy:.1} L{x1:.1},{yy:.1}");
        }
        let _ = write!(path, " L{:.1},{:.1} Z", x(x_max), y(0.0));
        let _ = writeln!(
            svg,
            r#"<path d="{path}" fill="{color}" fill-opacity="0.10" stroke="{color}" stroke-width="2" stroke-linejoin="round"/>"#
        );
    }

    // Tick period and target, over the series.
    for (ms, label, color, dash, dy, anchor, dx) in [
        (
            period_ms,
            format!("tick {period_ms:.1} ms"),
            "#666",
            "4 4",
            14.0,
            "end",
            -4.0,
        ),
        (
            target_ms,
            format!("target p99 < {target_ms:.1} ms"),
            "#c00",
            "7 4",
            14.0,
            "start",
            4.0,
        ),
    ] {
        let xx = x(ms);
        let _ = writeln!(
            svg,
            r#"<line x1="{xx:.1}" y1="{TOP}" x2="{xx:.1}" y2="{BOTTOM}" stroke="{color}" stroke-width="1.5" stroke-dasharray="{dash}"/>"#
        );
        let _ = writeln!(
            svg,
            r#"<text x="{:.1}" y="{:.1}" fill="{color}" font-size="12" text-anchor="{anchor}">{}</text>"#,
            xx + dx,
            TOP + dy,
            escape(&label)
        );
    }

    // p99 markers and the legend.
    for (i, (label, _, result)) in series.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        if result.p99_ms.is_finite() {
            let p99 = x(result.p99_ms);
            let _ = writeln!(
                svg,
                r#"<path d="M{p99:.1},{BOTTOM} l-5,9 l10,0 z" fill="{color}"/>"#
            );
        }
        let ly = TOP + 34.0 + 20.0 * i as f64;
        let lx = RIGHT - 290.0;
        let _ = writeln!(
            svg,
            r#"<rect x="{lx:.1}" y="{:.1}" width="18" height="4" fill="{color}"/><text x="{:.1}" y="{ly:.1}">{}: p50 {} ms, p99 {} ms</text>"#,
            ly - 5.0,
            lx + 26.0,
            escape(label),
            crate::report::num(result.p50_ms, 1),
            crate::report::num(result.p99_ms, 1),
        );
    }
    let _ = writeln!(
        svg,
        r##"<text x="{LEFT}" y="{:.1}" font-size="11" fill="#555">▲ p99 of each series. {}</text>"##,
        HEIGHT - 14.0,
        escape(footer)
    );
    svg.push_str("</svg>\n");
    svg
}
