//! `schedrig run --timeline DIR`: a picture of each scenario, one
//! self-contained HTML page (inline SVG and CSS, no script, nothing
//! fetched), from what the host saw: a lane per CPU over the scenario's
//! time with `nr_running` (bars) and sched_ext's local queue depth (a
//! line) from the run-queue monitor, the step ends from STIM, stall and
//! snapshot marks, and the verdict with every check.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use super::Outcome;
#[cfg(test)]
use schedrig_vmm::introspect::snapshot::Snapshot;

/// Plot geometry (SVG user units).
const LEFT: f64 = 70.0;
const WIDTH: f64 = 1000.0;
const LANE: f64 = 46.0;
const TOP: f64 = 42.0;

/// Writes `NN-NAME.html` for outcome number `n` (from 1) into `dir` and
/// returns its path. The page is written to a temporary name and
/// renamed, so a failure leaves no half-written page.
pub fn write(dir: &Path, n: usize, o: &Outcome, scheduler: &str) -> std::io::Result<PathBuf> {
    let name: String = o
        .scenario
        .name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let path = dir.join(format!("{n:02}-{name}.html"));
    super::write_whole(&path, page(o, scheduler).as_bytes())?;
    Ok(path)
}

/// Escapes text for HTML and SVG.
fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The whole page.
pub fn page(o: &Outcome, scheduler: &str) -> String {
    let verdict = o.judgement.verdict.as_str();
    let mut h = String::new();
    let _ = write!(
        h,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <title>{name}: {verdict}</title>\n<style>\
         body{{font:14px sans-serif;margin:1em 2em;color:#222}}\
         .pass{{color:#1a7f37}}.fail{{color:#cf222e}}.inconclusive{{color:#9a6700}}.error{{color:#8250df}}\
         table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:2px 6px;text-align:left}}\
         svg text{{font:11px sans-serif}}</style></head><body>\n\
         <h1>{name} <span class=\"{verdict}\" id=\"verdict\">{verdict}</span></h1>\n\
         <p>{desc}</p><p>scheduler <b>{sched}</b>, VM {vm}. {reason}</p>\n",
        name = esc(&o.scenario.name),
        desc = esc(&o.scenario.description),
        sched = esc(scheduler),
        vm = o.vm,
        reason = esc(&o.judgement.reason),
    );
    h.push_str(&svg(o));
    h.push_str("<h2>Checks</h2><table id=\"checks\"><tr><th>check</th><th>pass</th><th>value</th><th>limit</th><th>detail</th></tr>\n");
    for c in &o.judgement.checks {
        let _ = writeln!(
            h,
            "<tr><td>{}</td><td class=\"{}\">{}</td><td>{:.1} {}</td><td>{:.1}</td><td>{}</td></tr>",
            c.name,
            if c.pass { "pass" } else { "fail" },
            if c.pass { "yes" } else { "no" },
            c.value,
            esc(c.unit),
            c.limit,
            esc(&c.detail)
        );
    }
    h.push_str("</table>\n");
    if !o.snapshots.is_empty() {
        h.push_str("<h2>Snapshots</h2><ul>\n");
        for s in &o.snapshots {
            let _ = writeln!(
                h,
                "<li><b>{}</b> at {} ms, sched_ext {}, {} tasks{}</li>",
                esc(&s.tag),
                s.scenario_ms.unwrap_or(0),
                esc(s.scx_state),
                s.tasks.len(),
                s.cause
                    .as_deref()
                    .map(|c| format!(": {}", esc(c)))
                    .unwrap_or_default()
            );
        }
        h.push_str("</ul>\n");
    }
    h.push_str("</body></html>\n");
    h
}

/// The lanes: one per CPU the monitor sampled.
fn svg(o: &Outcome) -> String {
    let r = o.result.as_ref();
    let view = r.and_then(|r| r.host_rq.as_ref());
    let samples = view.map(|v| v.samples.as_slice()).unwrap_or_default();
    let ncpu = samples
        .iter()
        .map(|s| s.nr_running.len())
        .max()
        .unwrap_or(0);
    let offset = r.map_or(0, |r| r.start_offset_ms);
    let end_ms = samples
        .iter()
        .map(|s| s.at_ms)
        .chain(r.map(|r| r.elapsed_ms + offset))
        .chain(o.snapshots.iter().filter_map(|s| s.scenario_ms))
        .max()
        .unwrap_or(0)
        .max(1);
    let x = |ms: u64| LEFT + WIDTH * ms as f64 / end_ms as f64;
    let height = TOP + LANE * ncpu.max(1) as f64 + 40.0;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "<svg id=\"timeline\" xmlns=\"http://www.w3.org/2000/svg\" width=\"{}\" height=\"{height}\" \
         viewBox=\"0 0 {} {height}\" role=\"img\" aria-label=\"run queues over time\">",
        LEFT + WIDTH + 20.0,
        LEFT + WIDTH + 20.0
    );
    if ncpu == 0 {
        let _ = writeln!(
            s,
            "<text x=\"{LEFT}\" y=\"{}\">no run-queue samples: the host did not monitor this scenario</text>",
            TOP + 20.0
        );
    }
    let peak = samples
        .iter()
        .flat_map(|s| s.nr_running.iter().chain(&s.local_dsq_nr))
        .copied()
        .max()
        .unwrap_or(1)
        .max(1) as f64;
    let bar_w = if samples.len() > 1 {
        (WIDTH / samples.len() as f64).max(1.0)
    } else {
        WIDTH
    };
    for cpu in 0..ncpu {
        let y0 = TOP + LANE * cpu as f64;
        let base = y0 + LANE - 6.0;
        let _ = writeln!(
            s,
            "<g class=\"lane\" data-cpu=\"{cpu}\"><rect x=\"{LEFT}\" y=\"{y0}\" width=\"{WIDTH}\" height=\"{}\" fill=\"#f6f8fa\" stroke=\"#d0d7de\"/>\
             <text x=\"4\" y=\"{}\">CPU {cpu}</text>",
            LANE - 4.0,
            y0 + LANE / 2.0 + 4.0
        );
        for smp in samples {
            let n = smp.nr_running.get(cpu).copied().unwrap_or(0);
            if n > 0 {
                let h = (LANE - 12.0) * n as f64 / peak;
                let _ = write!(
                    s,
                    "<rect class=\"nr\" x=\"{:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{h:.1}\" fill=\"{}\"><title>{} ms: nr_running {n}</title></rect>",
                    x(smp.at_ms),
                    base - h,
                    bar_w,
                    if smp.scx_state == 1 { "#54aeff" } else { "#afb8c1" },
                    smp.at_ms
                );
            }
        }
        let points: Vec<String> = samples
            .iter()
            .map(|smp| {
                let d = smp.local_dsq_nr.get(cpu).copied().unwrap_or(0);
                format!(
                    "{:.1},{:.1}",
                    x(smp.at_ms),
                    base - (LANE - 12.0) * d as f64 / peak
                )
            })
            .collect();
        if points.len() > 1 {
            let _ = write!(
                s,
                "<polyline class=\"dsq\" points=\"{}\" fill=\"none\" stroke=\"#cf222e\" stroke-width=\"1.5\"/>",
                points.join(" ")
            );
        }
        s.push_str("</g>\n");
    }
    let bottom = TOP + LANE * ncpu.max(1) as f64;
    if let Some(r) = r {
        for (i, &e) in r.step_ends_ms.iter().enumerate() {
            let at = x(e + offset);
            let _ = writeln!(
                s,
                "<g class=\"step\"><line x1=\"{at:.1}\" y1=\"{TOP}\" x2=\"{at:.1}\" y2=\"{bottom}\" stroke=\"#57606a\" stroke-dasharray=\"4 3\"/>\
                 <text x=\"{at:.1}\" y=\"{}\" text-anchor=\"end\">step {} ends</text></g>",
                // Alternate rows, so close steps do not overwrite each other.
                TOP - 6.0 - 14.0 * (i % 2) as f64,
                i + 1
            );
        }
    }
    for st in view.map(|v| v.stalls.as_slice()).unwrap_or_default() {
        let y0 = TOP + LANE * st.cpu as f64;
        let _ = writeln!(
            s,
            "<rect class=\"stall\" x=\"{:.1}\" y=\"{y0}\" width=\"{:.1}\" height=\"{}\" fill=\"{}\" fill-opacity=\"0.35\">\
             <title>CPU {}: stall of {} ms{}</title></rect>",
            x(st.at_ms.saturating_sub(st.ms)),
            (x(st.at_ms) - x(st.at_ms.saturating_sub(st.ms))).max(2.0),
            LANE - 4.0,
            if st.inconclusive.is_some() { "#d4a72c" } else { "#cf222e" },
            st.cpu,
            st.ms,
            st.inconclusive
                .as_deref()
                .map(|w| format!(" (inconclusive: {})", esc(w)))
                .unwrap_or_default()
        );
    }
    for snap in &o.snapshots {
        let Some(ms) = snap.scenario_ms else {
            continue;
        };
        let at = x(ms);
        let tag = esc(&snap.tag);
        let _ = writeln!(
            s,
            "<g class=\"snapshot\"><path d=\"M{at:.1},{} l-5,-9 h10 z\" fill=\"#8250df\"/>\
             <text x=\"{at:.1}\" y=\"{}\" text-anchor=\"middle\">{tag}</text><title>snapshot {tag} at {ms} ms</title></g>",
            bottom + 10.0,
            bottom + 24.0
        );
    }
    let _ = writeln!(
        s,
        "<text x=\"{LEFT}\" y=\"{}\">0 ms</text><text x=\"{}\" y=\"{}\" text-anchor=\"end\">{end_ms} ms</text>\
         <text x=\"{}\" y=\"{}\" text-anchor=\"middle\">bars: nr_running (blue: sched_ext enabled); red line: local DSQ depth; peak {peak}</text></svg>",
        height - 4.0,
        LEFT + WIDTH,
        height - 4.0,
        LEFT + WIDTH / 2.0,
        height - 4.0
    );
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use schedrig_scenarios::checks::{Judgement, ScenarioVerdict};
    use schedrig_wire::{HostRqSample, HostRqView, HostStall, ScenarioResult};

    fn outcome() -> Outcome {
        let layout = schedrig_scenarios::CpuLayout::uniform(1, 1, 2);
        let scenario = schedrig_scenarios::catalogue::find(&layout, "steady").unwrap();
        let samples = (0..10)
            .map(|i| HostRqSample {
                at_ms: i * 100,
                scx_state: 1,
                nr_running: vec![2, i as u32 % 3],
                scx_nr_running: vec![2, 1],
                local_dsq_nr: vec![1, 0],
            })
            .collect();
        Outcome {
            scenario,
            judgement: Judgement {
                verdict: ScenarioVerdict::Fail,
                checks: Vec::new(),
                reason: "a <b> reason & more".into(),
            },
            result: Some(ScenarioResult {
                elapsed_ms: 1000,
                step_ends_ms: vec![500, 900],
                host_rq: Some(HostRqView {
                    samples,
                    stalls: vec![HostStall {
                        cpu: 1,
                        at_ms: 800,
                        ms: 500,
                        ..HostStall::default()
                    }],
                    imbalance: None,
                }),
                ..ScenarioResult::default()
            }),
            sched_exit: None,
            duration: std::time::Duration::from_secs(1),
            vm: 1,
            revised: false,
            snapshots: vec![Snapshot {
                tag: "before".into(),
                scenario_ms: Some(300),
                ..Snapshot::default()
            }],
        }
    }

    #[test]
    fn a_page_has_a_lane_per_cpu_steps_stalls_snapshots_and_escapes_text() {
        let p = page(&outcome(), "scx_simple");
        assert_eq!(p.matches("class=\"lane\"").count(), 2);
        assert_eq!(p.matches("class=\"step\"").count(), 2);
        assert_eq!(p.matches("class=\"stall\"").count(), 1);
        assert_eq!(p.matches("class=\"snapshot\"").count(), 1);
        assert!(p.contains("a &lt;b&gt; reason &amp; more"));
        assert!(
            !p.contains("http://") || p.matches("http://").count() == 1,
            "only the SVG namespace"
        );
        assert!(p.contains("id=\"verdict\">fail<"));
    }

    #[test]
    fn written_whole_under_its_number_and_name() {
        let dir = std::env::temp_dir().join(format!("schedrig-timeline-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let o = outcome();
        let p = write(&dir, 3, &o, "eevdf").unwrap();
        assert_eq!(
            p.file_name().unwrap().to_str().unwrap(),
            format!("03-{}.html", o.scenario.name)
        );
        assert_eq!(
            std::fs::read_dir(&dir).unwrap().count(),
            1,
            "no temporary file left"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
