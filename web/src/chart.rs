//! Charts as SVG drawn from Rust: a time-series chart whose lines show which layer each
//! window came from (batch solid, speed dashed, both dotted) and shade windows that are
//! not complete yet, a bar chart for SQL results, and sparklines for live numbers.
//! SVG keeps them crisp at any size, styled by the page's light or dark theme.

use leptos::prelude::*;

use crate::format::clock;

const W: f64 = 800.0;
const H: f64 = 260.0;
const LEFT: f64 = 64.0;
const RIGHT: f64 = 12.0;
const TOP: f64 = 12.0;
const BOTTOM: f64 = 28.0;
/// Above this many points, markers are left out: the lines alone stay readable and the
/// page stays light with thousands of windows.
const MAX_MARKERS: usize = 400;

/// One window's value.
#[derive(Debug, Clone, PartialEq)]
pub struct Point {
    /// Window start, microseconds since the epoch.
    pub x: i64,
    /// The value.
    pub y: f64,
    /// `batch`, `speed` or `both`.
    pub source: String,
    /// Whether the watermark has passed the window's end.
    pub complete: bool,
}

/// One line of a chart: a key's values over windows.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    /// The key (or value column) the line shows.
    pub label: String,
    /// Sorted by `x`.
    pub points: Vec<Point>,
}

struct Scale {
    x0: f64,
    x1: f64,
    y0: f64,
    y1: f64,
}

impl Scale {
    fn of(series: &[Series]) -> Option<Scale> {
        let mut pts = series.iter().flat_map(|s| s.points.iter());
        let first = pts.next()?;
        let (mut x0, mut x1, mut y0, mut y1) = (first.x, first.x, first.y, first.y);
        for p in pts {
            x0 = x0.min(p.x);
            x1 = x1.max(p.x);
            y0 = y0.min(p.y);
            y1 = y1.max(p.y);
        }
        // Bars and counts read best from zero; a flat series still needs a height.
        if y0 > 0.0 {
            y0 = 0.0;
        }
        if y1 <= y0 {
            y1 = y0 + 1.0;
        }
        let (x0, mut x1) = (x0 as f64, x1 as f64);
        if x1 <= x0 {
            x1 = x0 + 1.0;
        }
        Some(Scale { x0, x1, y0, y1 })
    }

    fn x(&self, v: f64) -> f64 {
        LEFT + (v - self.x0) / (self.x1 - self.x0) * (W - LEFT - RIGHT)
    }

    fn y(&self, v: f64) -> f64 {
        H - BOTTOM - (v - self.y0) / (self.y1 - self.y0) * (H - TOP - BOTTOM)
    }
}

fn short(v: f64) -> String {
    let a = v.abs();
    if a >= 1e9 {
        format!("{:.1}G", v / 1e9)
    } else if a >= 1e6 {
        format!("{:.1}M", v / 1e6)
    } else if a >= 1e4 {
        format!("{:.1}k", v / 1e3)
    } else if a.fract() == 0.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}

/// Consecutive points of one source, each run starting at the previous run's last point
/// so the line stays continuous where the source changes.
fn runs(points: &[Point]) -> Vec<(String, Vec<&Point>)> {
    let mut out: Vec<(String, Vec<&Point>)> = Vec::new();
    for p in points {
        match out.last_mut() {
            Some((src, run)) if *src == p.source => run.push(p),
            Some((_, run)) => {
                let last = *run.last().expect("runs are never empty");
                out.push((p.source.clone(), vec![last, p]));
            }
            None => out.push((p.source.clone(), vec![p])),
        }
    }
    out
}

/// A time-series chart of several series (one per key).
#[component]
pub fn TimeChart(
    /// The lines to draw.
    series: Vec<Series>,
    /// The chart element's id (tests find it by it).
    id: &'static str,
) -> impl IntoView {
    let total: usize = series.iter().map(|s| s.points.len()).sum();
    let Some(scale) = Scale::of(&series) else {
        return view! { <div id=id class="chart empty" data-points="0">"No windows in this range yet."</div> }
            .into_any();
    };
    let span_days = (scale.x1 - scale.x0) / 86_400e6;
    let ticks = (0..=4)
        .map(|i| {
            let yv = scale.y0 + (scale.y1 - scale.y0) * i as f64 / 4.0;
            let y = scale.y(yv);
            view! {
                <line class="grid" x1=LEFT x2=W - RIGHT y1=y y2=y></line>
                <text class="axis" x=LEFT - 6.0 y=y + 4.0 text-anchor="end">{short(yv)}</text>
            }
        })
        .collect_view();
    let xticks = (0..=4)
        .map(|i| {
            let xv = scale.x0 + (scale.x1 - scale.x0) * i as f64 / 4.0;
            let anchor = match i {
                0 => "start",
                4 => "end",
                _ => "middle",
            };
            view! {
                <text class="axis" x=scale.x(xv) y=H - 8.0 text-anchor=anchor>{clock(xv as i64, span_days >= 1.0 || i == 0)}</text>
            }
        })
        .collect_view();
    // Windows not complete yet (end past the watermark) are shaded from the first one on.
    let open_from = series
        .iter()
        .flat_map(|s| s.points.iter())
        .filter(|p| !p.complete)
        .map(|p| p.x)
        .min();
    let open_band = open_from.map(|x| {
        let x = scale.x(x as f64);
        view! {
            <rect class="open-band" x=x y=TOP width=(W - RIGHT - x).max(2.0) height=H - TOP - BOTTOM></rect>
            <text class="axis open-label" x=W - RIGHT - 4.0 y=TOP + 12.0 text-anchor="end">"incomplete windows"</text>
        }
    });
    let markers = total <= MAX_MARKERS;
    let lines = series
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let color = format!("s{}", i % 8);
            let paths = runs(&s.points)
                .into_iter()
                .map(|(src, run)| {
                    let pts = run
                        .iter()
                        .map(|p| format!("{:.1},{:.1}", scale.x(p.x as f64), scale.y(p.y)))
                        .collect::<Vec<_>>()
                        .join(" ");
                    view! { <polyline class=format!("line {color} src-{src}") points=pts></polyline> }
                })
                .collect_view();
            let dots = markers.then(|| {
                s.points
                    .iter()
                    .map(|p| {
                        let class = format!(
                            "pt {color} src-{}{}",
                            p.source,
                            if p.complete { "" } else { " open" }
                        );
                        view! { <circle class=class cx=scale.x(p.x as f64) cy=scale.y(p.y) r="3"></circle> }
                    })
                    .collect_view()
            });
            view! { <g class="series" data-label=s.label.clone()>{paths}{dots}</g> }
        })
        .collect_view();
    let legend = series
        .iter()
        .enumerate()
        .map(|(i, s)| view! { <span class="key"><i class=format!("swatch s{}", i % 8)></i>{s.label.clone()}</span> })
        .collect_view();
    view! {
        <figure class="chart-box">
            <svg id=id class="chart" viewBox=format!("0 0 {W} {H}")
                 data-points=total.to_string() data-series=series.len().to_string() role="img">
                {ticks}{xticks}{open_band}{lines}
            </svg>
            <figcaption class="legend">
                {legend}
                <span class="key"><i class="dash batch"></i>"batch"</span>
                <span class="key"><i class="dash speed"></i>"speed"</span>
                <span class="key"><i class="dash both"></i>"both"</span>
            </figcaption>
        </figure>
    }
    .into_any()
}

/// Bars for labelled values (SQL results).
#[component]
pub fn BarChart(
    /// A label per bar.
    labels: Vec<String>,
    /// A value per bar.
    values: Vec<f64>,
    /// The chart element's id.
    id: &'static str,
) -> impl IntoView {
    let n = values.len().max(1) as f64;
    let max = values.iter().cloned().fold(0.0_f64, f64::max).max(1e-12);
    let min = values.iter().cloned().fold(0.0_f64, f64::min);
    let scale = Scale {
        x0: 0.0,
        x1: n,
        y0: min,
        y1: max,
    };
    let slot = (W - LEFT - RIGHT) / n;
    let bars = values
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let (y_top, y_zero) = (scale.y(v.max(0.0)), scale.y(v.min(0.0)));
            view! {
                <rect class="bar" x=LEFT + slot * i as f64 + slot * 0.1 y=y_top width=(slot * 0.8).max(1.0) height=(y_zero - y_top).max(1.0)>
                    <title>{format!("{}: {}", labels.get(i).cloned().unwrap_or_default(), short(*v))}</title>
                </rect>
            }
        })
        .collect_view();
    let names = (values.len() <= 24).then(|| {
        labels
            .iter()
            .enumerate()
            .map(|(i, l)| {
                view! { <text class="axis" x=LEFT + slot * (i as f64 + 0.5) y=H - 8.0 text-anchor="middle">{l.chars().take(10).collect::<String>()}</text> }
            })
            .collect_view()
    });
    view! {
        <svg id=id class="chart" viewBox=format!("0 0 {W} {H}") data-bars=values.len().to_string() role="img">
            <text class="axis" x=LEFT - 6.0 y=scale.y(max) + 4.0 text-anchor="end">{short(max)}</text>
            <text class="axis" x=LEFT - 6.0 y=scale.y(min) + 4.0 text-anchor="end">{short(min)}</text>
            {bars}{names}
        </svg>
    }
}

/// A small line of recent values, newest on the right.
#[component]
pub fn Sparkline(
    /// The values, oldest first.
    values: Vec<f64>,
) -> impl IntoView {
    let (w, h) = (120.0, 28.0);
    let max = values.iter().cloned().fold(f64::MIN, f64::max);
    let min = values.iter().cloned().fold(f64::MAX, f64::min).min(0.0);
    let span = if max > min { max - min } else { 1.0 };
    let n = values.len().max(2) as f64 - 1.0;
    let points = values
        .iter()
        .enumerate()
        .map(|(i, v)| {
            format!(
                "{:.1},{:.1}",
                i as f64 / n * w,
                h - 2.0 - (v - min) / span * (h - 4.0)
            )
        })
        .collect::<Vec<_>>()
        .join(" ");
    view! {
        <svg class="spark" viewBox=format!("0 0 {w} {h}") aria-hidden="true">
            <polyline points=points></polyline>
        </svg>
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(x: i64, src: &str) -> Point {
        Point {
            x,
            y: 1.0,
            source: src.into(),
            complete: true,
        }
    }

    #[test]
    fn runs_split_by_source_and_stay_connected() {
        let pts = vec![p(1, "batch"), p(2, "batch"), p(3, "speed"), p(4, "speed")];
        let r = runs(&pts);
        assert_eq!(r.len(), 2);
        assert_eq!(r[0].0, "batch");
        assert_eq!(r[0].1.len(), 2);
        // The speed run starts where the batch run ended.
        assert_eq!(
            r[1].1.iter().map(|p| p.x).collect::<Vec<_>>(),
            vec![2, 3, 4]
        );
    }

    #[test]
    fn scale_starts_at_zero_for_positive_values_and_never_divides_by_zero() {
        let s = Scale::of(&[Series {
            label: "a".into(),
            points: vec![Point {
                x: 5,
                y: 7.0,
                source: "speed".into(),
                complete: false,
            }],
        }])
        .unwrap();
        assert_eq!(s.y0, 0.0);
        assert!(s.x(5.0).is_finite() && s.y(7.0).is_finite());
        assert!(Scale::of(&[]).is_none());
    }
}
