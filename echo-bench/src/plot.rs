//! `echo-bench plot`: an SVG from the median lines of a `compare` results file.
//!
//! Top row: throughput against connections for the closed-loop 64 B scenarios, one panel per
//! depth (1 and 16 messages in flight). Bottom row: latency percentiles (p50, p90, p99, p99.9,
//! max) per server for two scenarios, preferring the open-loop one, whose latency counts from each
//! message's scheduled send time. One colour per server; solid lines for the pinned set-up,
//! dashed for the unpinned one. A panel without data says so instead of drawing empty axes.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use plotters::coord::Shift;
use plotters::element::DashedPathElement;
use plotters::prelude::*;
use serde_json::Value;

#[derive(clap::Args)]
pub struct Options {
    /// A results file of `compare` (.jsonl) [default: the newest in target/echo-bench].
    #[arg(value_name = "RESULTS")]
    results: Option<PathBuf>,
    /// Where to write the SVG [default: the results file with .svg].
    #[arg(long, short, value_name = "FILE")]
    out: Option<PathBuf>,
}

/// One median line of a results file.
#[derive(Clone, Debug, PartialEq)]
pub struct Median {
    pub setup: String,
    pub server: String,
    pub scenario: String,
    pub conns: u64,
    pub depth: u64,
    pub size: u64,
    pub msgs_per_s: f64,
    /// p50, p90, p99, p99.9 and max in µs; older files lack some.
    pub latency: [Option<f64>; 5],
}

const PERCENTILE_NAMES: [&str; 5] = ["p50", "p90", "p99", "p99.9", "max"];
/// Scenarios whose latency is shown, in order of preference; others fill in when these are absent.
const LATENCY_PREFERRED: [&str; 3] = ["64B c1000 open", "64B c1000 d1", "64B c50 d1"];
/// Colours by server, in order of first appearance.
const COLOURS: [RGBColor; 8] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
];
const FONT: &str = "sans-serif";

/// The median lines of a results file; other lines (runs, metadata) are skipped.
pub fn read_medians(text: &str) -> Result<Vec<Median>, String> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let v: Value =
            serde_json::from_str(line).map_err(|e| format!("line {}: not JSON: {e}", i + 1))?;
        if v["kind"] != "median" {
            continue;
        }
        let text = |k: &str| v[k].as_str().map(str::to_string);
        let (Some(setup), Some(server), Some(scenario)) =
            (text("setup"), text("server"), text("scenario"))
        else {
            return Err(format!(
                "line {}: a median without setup, server or scenario",
                i + 1
            ));
        };
        let num = |k: &str| v[k].as_f64();
        out.push(Median {
            setup,
            server,
            scenario,
            conns: v["conns"].as_u64().unwrap_or(0),
            depth: v["depth"].as_u64().unwrap_or(0),
            size: v["size"].as_u64().unwrap_or(0),
            msgs_per_s: num("msgs_per_s").unwrap_or(0.0),
            latency: [
                num("p50_us"),
                num("p90_us"),
                num("p99_us"),
                num("p999_us"),
                num("max_us"),
            ],
        });
    }
    Ok(out)
}

/// Distinct values in order of first appearance.
fn distinct<'a>(items: impl Iterator<Item = &'a str>) -> Vec<&'a str> {
    let mut out: Vec<&str> = Vec::new();
    for x in items {
        if !out.contains(&x) {
            out.push(x);
        }
    }
    out
}

/// The scenarios of the latency panels: preferred ones present, then any others, at most two.
pub fn latency_scenarios(medians: &[Median]) -> Vec<String> {
    let present = distinct(medians.iter().map(|m| m.scenario.as_str()));
    let mut out: Vec<String> = LATENCY_PREFERRED
        .iter()
        .filter(|s| present.contains(s))
        .map(|s| s.to_string())
        .collect();
    for s in present {
        if out.len() >= 2 {
            break;
        }
        // Idle latency is of the set-up burst, not of the server under load.
        if !out.iter().any(|o| o == s) && !s.starts_with("idle") {
            out.push(s.to_string());
        }
    }
    out.truncate(2);
    out
}

/// Tick values 1, 2, 5, 10, 20, 50, ... that fall within `low..=high` (both above zero): a log
/// axis labelled only at its decades says too little over a range of one or two decades.
/// Under a decade wide, every digit: 20, 30, ... 90.
pub fn ticks_125(low: f64, high: f64) -> Vec<f64> {
    let within = |steps: &[f64]| {
        let (first, last) = (low.log10().floor() as i32, high.log10().ceil() as i32);
        let mut out = Vec::new();
        for k in first..=last {
            for m in steps {
                let v = m * 10f64.powi(k);
                if (low..=high).contains(&v) {
                    out.push(v);
                }
            }
        }
        out
    };
    let coarse = within(&[1.0, 2.0, 5.0]);
    if coarse.len() >= 3 {
        return coarse;
    }
    within(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0])
}

/// A tick's time without trailing zeros: `2 ms`, `1.5 ms`, `50 µs`.
fn tick_label(us: f64) -> String {
    let text = crate::report::fmt_ns(us * 1e3);
    match text.split_once(' ') {
        Some((n, unit)) if n.contains('.') => {
            format!("{} {unit}", n.trim_end_matches('0').trim_end_matches('.'))
        }
        _ => text,
    }
}

/// Messages per second in thousands or millions.
fn rate_label(r: f64) -> String {
    if r >= 1e6 {
        format!("{:.1}M", r / 1e6)
    } else {
        format!("{:.0}k", r / 1e3)
    }
}

/// Any drawing error as text.
fn drawn<T, E: std::fmt::Display>(r: Result<T, E>) -> Result<T, String> {
    r.map_err(|e| format!("drawing: {e}"))
}

/// A line per server and set-up: solid when pinned, dashed otherwise; labelled once per series.
fn draw_line<X: Clone + 'static, Y: Clone + 'static, C>(
    chart: &mut ChartContext<'_, SVGBackend<'_>, C>,
    points: Vec<(X, Y)>,
    colour: RGBColor,
    dashed: bool,
    label: &str,
) -> Result<(), String>
where
    C: plotters::coord::CoordTranslate<From = (X, Y)>,
{
    let style = colour.stroke_width(2);
    if dashed {
        drawn(chart.draw_series(DashedLineSeries::new(points.clone(), 6, 4, style)))?
            .label(label)
            .legend(move |(x, y)| DashedPathElement::new(vec![(x, y), (x + 20, y)], 6, 4, style));
    } else {
        drawn(chart.draw_series(LineSeries::new(points.clone(), style)))?
            .label(label)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], style));
    }
    drawn(
        chart.draw_series(
            points
                .into_iter()
                .map(move |p| Circle::new(p, 3, colour.filled())),
        ),
    )?;
    Ok(())
}

/// A panel's chart builder with the caption, margin and label areas every panel shares.
fn panel_builder<'area, 'svg>(
    area: &'area DrawingArea<SVGBackend<'svg>, Shift>,
    title: &str,
) -> ChartBuilder<'area, 'static, SVGBackend<'svg>> {
    let mut builder = ChartBuilder::on(area);
    builder
        .caption(title, (FONT, 16))
        .margin(10)
        .x_label_area_size(40)
        .y_label_area_size(70);
    builder
}

/// One line per server and set-up among `rows`, coloured by server, then the legend. `points`
/// turns the rows of one server and set-up into the line's points; no points, no line.
fn draw_series_with_legend<'chart, 'svg: 'chart, C>(
    chart: &mut ChartContext<'chart, SVGBackend<'svg>, C>,
    servers: &[&str],
    rows: &[&Median],
    points: impl Fn(&[&Median]) -> Vec<(f64, f64)>,
) -> Result<(), String>
where
    C: plotters::coord::CoordTranslate<From = (f64, f64)>,
{
    for (i, server) in servers.iter().enumerate() {
        for setup in distinct(rows.iter().map(|m| m.setup.as_str())) {
            let series: Vec<&Median> = rows
                .iter()
                .copied()
                .filter(|m| m.server == *server && m.setup == setup)
                .collect();
            let points = points(&series);
            if points.is_empty() {
                continue;
            }
            let colour = COLOURS[i % COLOURS.len()];
            draw_line(
                chart,
                points,
                colour,
                setup != "pinned",
                &format!("{server} ({setup})"),
            )?;
        }
    }
    drawn(
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .label_font((FONT, 12))
            .draw(),
    )
}

fn no_data(area: &DrawingArea<SVGBackend<'_>, Shift>, title: &str) -> Result<(), String> {
    drawn(area.titled(title, (FONT, 16)))?;
    let (w, h) = area.dim_in_pixel();
    drawn(area.draw(&Text::new(
        "no data in these results",
        (w as i32 / 2 - 80, h as i32 / 2),
        (FONT, 14),
    )))
}

/// Messages per second against connections at one depth.
fn throughput_panel(
    area: &DrawingArea<SVGBackend<'_>, Shift>,
    medians: &[Median],
    servers: &[&str],
    depth: u64,
) -> Result<(), String> {
    let title = format!("64 B messages, {depth} in flight per connection");
    let rows: Vec<&Median> = medians
        .iter()
        .filter(|m| m.size == 64 && m.depth == depth && m.scenario.contains(&format!(" d{depth}")))
        .collect();
    if rows.is_empty() {
        return no_data(area, &title);
    }
    let max_conns = rows.iter().map(|m| m.conns).max().unwrap_or(1).max(2) as f64;
    let top = rows
        .iter()
        .map(|m| m.msgs_per_s)
        .fold(0.0, f64::max)
        .max(1.0)
        * 1.1;
    let mut chart = drawn(
        panel_builder(area, &title)
            .build_cartesian_2d((1f64..max_conns * 1.2).log_scale(), 0f64..top),
    )?;
    drawn(
        chart
            .configure_mesh()
            .x_desc("connections")
            .y_desc("messages/s")
            .x_label_formatter(&|x| format!("{x:.0}"))
            .y_label_formatter(&|r| rate_label(*r))
            .draw(),
    )?;
    draw_series_with_legend(&mut chart, servers, &rows, |series| {
        let mut points: Vec<(f64, f64)> = series
            .iter()
            .map(|m| (m.conns as f64, m.msgs_per_s))
            .collect();
        points.sort_by(|a, b| a.0.total_cmp(&b.0));
        points
    })
}

/// Latency at each percentile, per server, for one scenario.
fn latency_panel(
    area: &DrawingArea<SVGBackend<'_>, Shift>,
    medians: &[Median],
    servers: &[&str],
    scenario: Option<&str>,
) -> Result<(), String> {
    let Some(scenario) = scenario else {
        return no_data(area, "latency percentiles");
    };
    let title = format!("latency percentiles, {scenario}");
    let rows: Vec<&Median> = medians.iter().filter(|m| m.scenario == scenario).collect();
    let values: Vec<f64> = rows
        .iter()
        .flat_map(|m| m.latency.iter().flatten().copied())
        .filter(|v| *v > 0.0)
        .collect();
    if values.is_empty() {
        return no_data(area, &title);
    }
    let low = values.iter().copied().fold(f64::INFINITY, f64::min) * 0.8;
    let high = values.iter().copied().fold(0.0, f64::max) * 1.25;
    let mut chart = drawn(
        panel_builder(area, &title).build_cartesian_2d(
            -0.3f64..4.3f64,
            (low..high)
                .log_scale()
                .with_key_points(ticks_125(low, high)),
        ),
    )?;
    drawn(
        chart
            .configure_mesh()
            .x_labels(PERCENTILE_NAMES.len())
            .x_label_formatter(&|x| {
                // Points sit at 0, 1, ... 4; the axis may ask for labels between them.
                let i = x.round();
                match PERCENTILE_NAMES.get(i as usize) {
                    Some(name) if (x - i).abs() < 0.01 && i >= 0.0 => name.to_string(),
                    _ => String::new(),
                }
            })
            .x_desc("percentile")
            .y_desc("latency")
            .y_label_formatter(&|us| tick_label(*us))
            .draw(),
    )?;
    // One median per server and set-up in a scenario; should there be more, the first is drawn.
    draw_series_with_legend(&mut chart, servers, &rows, |series| {
        series.first().map_or_else(Vec::new, |m| {
            m.latency
                .iter()
                .enumerate()
                .filter_map(|(k, v)| v.filter(|v| *v > 0.0).map(|v| (k as f64, v)))
                .collect()
        })
    })
}

/// The whole figure as SVG text.
pub fn render(medians: &[Median], title: &str) -> Result<String, String> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (1200, 900)).into_drawing_area();
        drawn(root.fill(&WHITE))?;
        let root = drawn(root.titled(title, (FONT, 20)))?;
        let panels = root.split_evenly((2, 2));
        let servers = distinct(medians.iter().map(|m| m.server.as_str()));
        throughput_panel(&panels[0], medians, &servers, 1)?;
        throughput_panel(&panels[1], medians, &servers, 16)?;
        let scenarios = latency_scenarios(medians);
        latency_panel(
            &panels[2],
            medians,
            &servers,
            scenarios.first().map(String::as_str),
        )?;
        latency_panel(
            &panels[3],
            medians,
            &servers,
            scenarios.get(1).map(String::as_str),
        )?;
        drawn(root.present())?;
    }
    Ok(svg)
}

/// Reads `results` and writes the plot to `svg`.
pub fn plot_file(results: &Path, svg: &Path) -> Result<(), String> {
    let text = std::fs::read_to_string(results)
        .map_err(|e| format!("cannot read {}: {e}", results.display()))?;
    let medians = read_medians(&text).map_err(|e| format!("{}: {e}", results.display()))?;
    if medians.is_empty() {
        return Err(format!("{} has no median lines", results.display()));
    }
    let name = results
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let title = format!("echo-bench compare: medians of interleaved rounds ({name})");
    let svg_text = render(&medians, &title)?;
    std::fs::write(svg, svg_text).map_err(|e| format!("cannot write {}: {e}", svg.display()))
}

/// The newest `compare-*.jsonl` in `dir` (names sort by time).
fn newest_results(dir: &Path) -> Result<PathBuf, String> {
    let entries =
        std::fs::read_dir(dir).map_err(|e| format!("cannot read {}: {e}", dir.display()))?;
    entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.extension().is_some_and(|x| x == "jsonl")
                && p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with("compare-"))
        })
        .max()
        .ok_or_else(|| format!("no compare-*.jsonl in {}", dir.display()))
}

pub fn run(opts: &Options) -> ExitCode {
    let results = match &opts.results {
        Some(p) => Ok(p.clone()),
        None => Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .map(|root| root.join("target").join("echo-bench"))
            .ok_or_else(|| "no workspace root".to_string())
            .and_then(|dir| newest_results(&dir)),
    };
    let done = results.and_then(|results| {
        let svg = opts
            .out
            .clone()
            .unwrap_or_else(|| results.with_extension("svg"));
        plot_file(&results, &svg).map(|()| svg)
    });
    match done {
        Ok(svg) => {
            eprintln!("echo-bench: wrote {}", svg.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("echo-bench: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(
        setup: &str,
        server: &str,
        scenario: &str,
        conns: u64,
        depth: u64,
        rate: f64,
    ) -> String {
        serde_json::json!({
            "kind": "median", "setup": setup, "server": server, "scenario": scenario,
            "conns": conns, "depth": depth, "size": 64, "msgs_per_s": rate,
            "p50_us": 10.0, "p90_us": 20.0, "p99_us": 40.0, "p999_us": 80.0, "max_us": 300.0,
        })
        .to_string()
    }

    fn sample() -> String {
        let mut lines = vec![
            r#"{"kind":"meta"}"#.to_string(),
            r#"{"kind":"run"}"#.to_string(),
        ];
        for (setup, scale) in [("pinned", 1.0), ("unpinned", 1.5)] {
            for (server, s) in [("alpha", 1.0), ("beta", 0.8)] {
                for (conns, depth) in [(1, 1), (50, 1), (1000, 1), (1, 16), (50, 16), (1000, 16)] {
                    let label = format!("64B c{conns} d{depth}");
                    let rate = 1000.0 * conns as f64 * depth as f64 * s * scale;
                    lines.push(line(setup, server, &label, conns, depth, rate));
                }
                lines.push(line(setup, server, "64B c1000 open", 1000, 1, 10_000.0));
            }
        }
        lines.join("\n")
    }

    #[test]
    fn latency_ticks_run_one_two_five() {
        assert_eq!(ticks_125(0.8, 60.0), [1.0, 2.0, 5.0, 10.0, 20.0, 50.0]);
        assert_eq!(ticks_125(150.0, 1100.0), [200.0, 500.0, 1000.0]);
        assert_eq!(
            ticks_125(25.0, 110.0),
            [30.0, 40.0, 50.0, 60.0, 70.0, 80.0, 90.0, 100.0]
        );
        assert_eq!(tick_label(2000.0), "2 ms");
        assert_eq!(tick_label(1500.0), "1.5 ms");
        assert_eq!(tick_label(50.0), "50 µs");
        assert_eq!(rate_label(1_200_000.0), "1.2M");
        assert_eq!(rate_label(80_000.0), "80k");
    }

    #[test]
    fn only_median_lines_are_read() {
        let m = read_medians(&sample()).expect("parses");
        assert_eq!(m.len(), 2 * 2 * 7);
        assert!(m
            .iter()
            .all(|m| m.latency == [Some(10.0), Some(20.0), Some(40.0), Some(80.0), Some(300.0)]));
        assert!(read_medians("{not json").is_err());
        assert!(read_medians(r#"{"kind":"median"}"#).is_err());
    }

    #[test]
    fn the_open_loop_scenario_comes_first_among_latency_panels() {
        let m = read_medians(&sample()).expect("parses");
        assert_eq!(latency_scenarios(&m), ["64B c1000 open", "64B c1000 d1"]);
        let only: Vec<Median> = m
            .into_iter()
            .filter(|m| m.scenario == "64B c50 d16")
            .collect();
        assert_eq!(latency_scenarios(&only), ["64B c50 d16"]);
    }

    #[test]
    fn the_svg_has_every_series_and_panel() {
        let m = read_medians(&sample()).expect("parses");
        let svg = render(&m, "test figure").expect("renders");
        assert!(svg.starts_with("<svg"), "{}", &svg[..svg.len().min(200)]);
        for text in [
            "test figure",
            "alpha (pinned)",
            "beta (unpinned)",
            "1 in flight per connection",
            "16 in flight per connection",
            "latency percentiles, 64B c1000 open",
            "p99.9",
            "connections",
        ] {
            assert!(svg.contains(text), "no {text:?} in the SVG");
        }
        assert!(!svg.contains("no data"), "every panel has data");
    }

    #[test]
    fn a_panel_without_data_says_so() {
        let m: Vec<Median> = read_medians(&sample())
            .expect("parses")
            .into_iter()
            .filter(|m| m.depth == 16)
            .collect();
        let svg = render(&m, "t").expect("renders");
        assert!(svg.contains("no data in these results"));
    }
}
