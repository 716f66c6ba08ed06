//! `schedrig run --report DIR`: one self-contained HTML page for the whole
//! run (`DIR/index.html`: inline CSS, no script, nothing fetched): a
//! verdict matrix of scenario by scheduler, the baseline's column beside
//! when there is one, each cell with every repeat's verdict, the key
//! numbers and a link to the scenario's timeline page (written beside
//! it), and what the run was measured with.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use schedrig_scenarios::checks::ScenarioVerdict;

use super::{Outcome, RunOptions, RunSummary};

/// The colours a cell takes, by verdict (also what the VM test looks for
/// in a screenshot).
pub const PASS_COLOUR: &str = "#2da44e";
pub const FAIL_COLOUR: &str = "#cf222e";
const INCONCLUSIVE_COLOUR: &str = "#bf8700";
const ERROR_COLOUR: &str = "#6e7781";

fn colour(v: ScenarioVerdict) -> &'static str {
    match v {
        ScenarioVerdict::Pass => PASS_COLOUR,
        ScenarioVerdict::Fail => FAIL_COLOUR,
        ScenarioVerdict::Inconclusive => INCONCLUSIVE_COLOUR,
        ScenarioVerdict::Error => ERROR_COLOUR,
    }
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// One column: a scheduler's run and the timeline pages of its outcomes
/// (relative to DIR, by outcome index).
pub struct Column<'a> {
    pub name: String,
    pub summary: &'a RunSummary,
    pub pages: Vec<Option<String>>,
}

/// Writes each column's timeline pages (the first into DIR, a baseline's
/// into DIR/baseline) and DIR/index.html; returns the index's path. DIR
/// was checked (and created) before any VM.
pub fn write(
    dir: &Path,
    opts: &RunOptions,
    main: &RunSummary,
    baseline: Option<(&RunOptions, &RunSummary)>,
) -> std::io::Result<PathBuf> {
    let mut columns = vec![column(dir, None, &opts.scheduler_name(), main)?];
    if let Some((bo, bs)) = baseline {
        columns.push(column(dir, Some("baseline"), &bo.scheduler_name(), bs)?);
    }
    let path = dir.join("index.html");
    super::write_whole(&path, page(opts, &columns).as_bytes())?;
    Ok(path)
}

fn column<'a>(
    dir: &Path,
    sub: Option<&str>,
    name: &str,
    s: &'a RunSummary,
) -> std::io::Result<Column<'a>> {
    let target = match sub {
        Some(d) => {
            let p = dir.join(d);
            std::fs::create_dir_all(&p)?;
            p
        }
        None => dir.to_path_buf(),
    };
    let mut pages = Vec::new();
    for (i, o) in s.outcomes.iter().enumerate() {
        let p = super::timeline::write(&target, i + 1, o, name)?;
        let file = p.file_name().map(|f| f.to_string_lossy().into_owned());
        pages.push(file.map(|f| match sub {
            Some(d) => format!("{d}/{f}"),
            None => f,
        }));
    }
    Ok(Column {
        name: name.to_string(),
        summary: s,
        pages,
    })
}

/// The page.
pub fn page(opts: &RunOptions, columns: &[Column]) -> String {
    let main = columns[0].summary;
    let mut h = String::new();
    let title = format!("schedrig run: {} on {}", columns[0].name, opts.topology);
    let _ = write!(
        h,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{t}</title>\
<style>body{{font:14px system-ui,sans-serif;margin:16px;color:#1f2328}}\
table.m{{border-collapse:separate;border-spacing:6px 10px}}\
th{{text-align:left;padding:4px 8px}}td.s{{padding:4px 8px;font-weight:600}}\
td.v{{padding:6px 10px;color:#fff;min-width:260px}}td.v a{{color:#fff}}\
.k{{font-size:12px;opacity:.95}}table.f td{{padding:1px 10px 1px 0;font-size:12px}}</style>\
</head><body><h1>{t}</h1>",
        t = esc(&title)
    );
    // The matrix: one row per scenario, in the order they first ran.
    let mut names: Vec<&str> = Vec::new();
    for o in &main.outcomes {
        if !names.contains(&o.scenario.name.as_str()) {
            names.push(&o.scenario.name);
        }
    }
    h.push_str("<table class=\"m\"><tr><th>scenario</th>");
    for c in columns {
        let _ = write!(h, "<th>{}</th>", esc(&c.name));
    }
    h.push_str("</tr>");
    for name in &names {
        let _ = write!(h, "<tr><td class=\"s\">{}</td>", esc(name));
        for c in columns {
            h.push_str(&cell(c, name));
        }
        h.push_str("</tr>");
    }
    h.push_str("</table>");
    let count = |v: ScenarioVerdict| {
        main.outcomes
            .iter()
            .filter(|o| o.judgement.verdict == v)
            .count()
    };
    let _ = write!(
        h,
        "<p>{}: {} pass, {} fail, {} inconclusive, {} error; {} VM(s), {:.1} s.</p>",
        esc(&columns[0].name),
        count(ScenarioVerdict::Pass),
        count(ScenarioVerdict::Fail),
        count(ScenarioVerdict::Inconclusive),
        count(ScenarioVerdict::Error),
        main.boots,
        main.wall.as_secs_f64()
    );
    // What it was measured with.
    h.push_str("<h2>Measured with</h2><table class=\"f\">");
    if let Ok(serde_json::Value::Object(m)) = serde_json::to_value(&main.fingerprint) {
        for (k, v) in m {
            let v = match v {
                serde_json::Value::String(s) => s,
                v => v.to_string(),
            };
            let _ = write!(h, "<tr><td>{}</td><td>{}</td></tr>", esc(&k), esc(&v));
        }
    }
    h.push_str("</table></body></html>\n");
    h
}

/// A scheduler's cell for scenario `name`: every repeat's verdict (the
/// cell takes the worst one's colour), the last one's key numbers and
/// reason, a link to each repeat's timeline page.
fn cell(c: &Column, name: &str) -> String {
    let runs: Vec<(usize, &Outcome)> = c
        .summary
        .outcomes
        .iter()
        .enumerate()
        .filter(|(_, o)| o.scenario.name == name)
        .collect();
    let Some(&(_, last)) = runs.last() else {
        return format!("<td class=\"v\" style=\"background:{ERROR_COLOUR}\">not run</td>");
    };
    let worst = runs
        .iter()
        .map(|(_, o)| o.judgement.verdict)
        .max_by_key(|v| crate::exit_status::Outcome::of_scenario(*v))
        .unwrap_or(ScenarioVerdict::Error);
    let verdicts: Vec<String> = runs
        .iter()
        .map(|(i, o)| {
            let v = o.judgement.verdict.as_str();
            match c.pages.get(*i).cloned().flatten() {
                Some(p) => format!("<a href=\"{}\">{v}</a>", esc(&p)),
                None => v.to_string(),
            }
        })
        .collect();
    let reason = if last.judgement.verdict == ScenarioVerdict::Pass {
        String::new()
    } else {
        format!(
            "<br><span class=\"k\">{}</span>",
            esc(&last.judgement.reason)
        )
    };
    format!(
        "<td class=\"v\" style=\"background:{}\">{}<br><span class=\"k\">{}</span>{reason}</td>",
        colour(worst),
        verdicts.join(" "),
        esc(&super::output::key_numbers(last))
    )
}
