//! The latency picture of the network benchmark, as hand-written SVG: one
//! histogram line per client count (share of commands per 1 ms bin), the
//! tick period and the target marked.

use std::fmt::Write as _;

use crate::network::{BIN_US, StepResult};

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

/// The picture for `results` (one series each); `period_ms` and `target_ms`
/// are drawn as vertical lines; `footer` names the machine and run.
pub fn latency_histogram(
    results: &[StepResult],
    period_ms: f64,
    target_ms: f64,
    footer: &str,
) -> String {
    // 1 ms display bins from the 0.5 ms result bins.
    let per_bin = (1000 / BIN_US).max(1) as usize;
    let series: Vec<(String, Vec<f64>, &StepResult)> = results
        .iter()
        .map(|r| {
            let total = (r.bins.iter().sum::<u64>() + r.overflow).max(1) as f64;
            let shares: Vec<f64> = r
                .bins
                .chunks(per_bin)
                .map(|c| c.iter().sum::<u64>() as f64 / total * 100.0)
                .collect();
            (format!("{} clients", r.clients), shares, r)
        })
        .collect();
    let x_max = {
        let far = results
            .iter()
            .map(|r| r.p999_ms)
            .filter(|v| v.is_finite())
            .fold(target_ms, f64::max);
        let step = 10.0;
        ((far * 1.1 / step).ceil() * step).clamp(40.0, 200.0)
    };
    let y_peak = series
        .iter()
        .flat_map(|(_, s, _)| s.iter().copied())
        .fold(0.0, f64::max)
        .max(0.1);
    let y_step = nice_step(y_peak * 1.1, 5.0);
    let y_max = (y_peak * 1.1 / y_step).ceil() * y_step;
    let x = |ms: f64| LEFT + (ms / x_max).min(1.0) * (RIGHT - LEFT);
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
        r#"<text x="{}" y="28" text-anchor="middle" font-size="17" font-weight="bold">Command-to-update latency, QUIC on loopback ({:.0} Hz ticks)</text>"#,
        WIDTH / 2.0,
        1000.0 / period_ms
    );
    let _ = writeln!(
        svg,
        r##"<text x="{}" y="48" text-anchor="middle" fill="#555">share of commands per 1 ms of latency; command sent → first state at or after its tick</text>"##,
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
    let x_step = nice_step(x_max, 10.0);
    let mut t = 0.0;
    while t <= x_max + 1e-9 {
        let xx = x(t);
        let _ = writeln!(
            svg,
            r##"<line x1="{xx:.1}" y1="{BOTTOM}" x2="{xx:.1}" y2="{:.1}" stroke="#333"/>"##,
            BOTTOM + 5.0
        );
        let _ = writeln!(
            svg,
            r#"<text x="{xx:.1}" y="{:.1}" text-anchor="middle">{t:.0}</text>"#,
            BOTTOM + 20.0
        );
        t += x_step;
    }
    let _ = writeln!(
        svg,
        r##"<line x1="{LEFT}" y1="{BOTTOM}" x2="{RIGHT}" y2="{BOTTOM}" stroke="#333"/><line x1="{LEFT}" y1="{TOP}" x2="{LEFT}" y2="{BOTTOM}" stroke="#333"/>"##
    );
    let _ = writeln!(
        svg,
        r#"<text x="{}" y="{:.1}" text-anchor="middle">latency (ms)</text>"#,
        (LEFT + RIGHT) / 2.0,
        BOTTOM + 42.0
    );
    let _ = writeln!(
        svg,
        r#"<text x="18" y="{:.1}" text-anchor="middle" transform="rotate(-90 18 {:.1})">share of commands</text>"#,
        (TOP + BOTTOM) / 2.0,
        (TOP + BOTTOM) / 2.0
    );

    // Tick period and target.
    for (ms, label, color, dash) in [
        (period_ms, format!("tick {period_ms:.1} ms"), "#777", "4 4"),
        (
            target_ms,
            format!("target p99 < {target_ms:.1} ms"),
            "#c00",
            "7 4",
        ),
    ] {
        let xx = x(ms);
        let _ = writeln!(
            svg,
            r#"<line x1="{xx:.1}" y1="{TOP}" x2="{xx:.1}" y2="{BOTTOM}" stroke="{color}" stroke-width="1.5" stroke-dasharray="{dash}"/>"#
        );
        let anchor_y = if ms == period_ms {
            TOP + 14.0
        } else {
            TOP + 30.0
        };
        let _ = writeln!(
            svg,
            r#"<text x="{:.1}" y="{anchor_y:.1}" fill="{color}" font-size="12">{}</text>"#,
            xx + 4.0,
            escape(&label)
        );
    }

    // One step line per client count, with its p99 marked on the axis.
    for (i, (label, shares, result)) in series.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let mut path = format!("M{:.1},{:.1}", x(0.0), y(0.0));
        for (bin, share) in shares.iter().enumerate() {
            let from = bin as f64;
            if from >= x_max {
                break;
            }
            let (x0, x1, yy) = (x(from), x(from + 1.0), y(*share));
            let _ = write!(path, " L{x0:.1},{yy:.1} L{x1:.1},{yy:.1}");
        }
        let _ = write!(path, " L{:.1},{:.1}", x(x_max), y(0.0));
        let _ = writeln!(
            svg,
            r#"<path d="{path}" fill="{color}" fill-opacity="0.08" stroke="{color}" stroke-width="2" stroke-linejoin="round"/>"#
        );
        let p99 = x(result.p99_ms);
        let _ = writeln!(
            svg,
            r#"<path d="M{p99:.1},{BOTTOM} l-5,9 l10,0 z" fill="{color}"/>"#
        );
        let ly = TOP + 14.0 + 20.0 * i as f64;
        let lx = RIGHT - 300.0;
        let _ = writeln!(
            svg,
            r#"<rect x="{lx:.1}" y="{:.1}" width="18" height="4" fill="{color}"/><text x="{:.1}" y="{ly:.1}">{}: p50 {:.1} ms, p99 {:.1} ms</text>"#,
            ly - 5.0,
            lx + 26.0,
            escape(label),
            result.p50_ms,
            result.p99_ms
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
