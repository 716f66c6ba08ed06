//! The gauntlet's budget: which cases a host can run at all, and which a
//! time budget buys. Pure functions on [`Case`], apart from the builder
//! that makes the cases, so the harness's runner and the gauntlet both
//! use them without needing each other.

use std::time::Duration;

/// Where a gauntlet test came from (for the budget and the skip rule).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Case {
    pub preset: &'static str,
    pub profile: String,
    pub vcpus: u32,
}

/// vCPUs per host CPU a preset may have and still run here; a larger one
/// is skipped with the reason (it would take the emulation or the host
/// far past any deadline).
pub const OVERCOMMIT: u32 = 2;

/// Why `c` cannot run on a host of `host_cpus` CPUs, if it cannot.
pub fn too_big(c: &Case, host_cpus: usize) -> Option<String> {
    let most = host_cpus as u32 * OVERCOMMIT;
    (c.vcpus > most).then(|| {
        format!(
            "preset {} has {} vCPUs; this host runs at most {most} ({host_cpus} CPUs x {OVERCOMMIT})",
            c.preset, c.vcpus
        )
    })
}

/// Expected seconds for one case: a boot and set-up, the scenario, and a
/// little per vCPU (scenario set-up forks per CPU).
pub fn expected_secs(c: &Case, scenario_secs: f64) -> f64 {
    BOOT_SECS + scenario_secs + 0.25 * f64::from(c.vcpus)
}

/// A boot and the scheduler's attach, with room for a nested host.
const BOOT_SECS: f64 = 15.0;

/// Picks, greedily, the cases that add the most not-yet-covered presets
/// and profiles per expected second, until `budget` is spent. Returns the
/// indices chosen (into `cases`, each with its expected seconds).
pub fn choose(cases: &[(Case, f64)], budget: Duration) -> Vec<usize> {
    let mut left = budget.as_secs_f64();
    let mut chosen: Vec<usize> = Vec::new();
    let mut presets: Vec<&str> = Vec::new();
    let mut profiles: Vec<&str> = Vec::new();
    loop {
        let best = cases
            .iter()
            .enumerate()
            .filter(|(i, (_, secs))| !chosen.contains(i) && *secs <= left)
            .map(|(i, (c, secs))| {
                let new = u32::from(!presets.contains(&c.preset))
                    + u32::from(!profiles.contains(&c.profile.as_str()));
                // Cases that cover nothing new still fill the budget, last.
                (i, (f64::from(new) + 0.01) / secs.max(0.1))
            })
            .max_by(|a, b| a.1.total_cmp(&b.1).then(b.0.cmp(&a.0)));
        let Some((i, _)) = best else {
            break;
        };
        let (c, secs) = &cases[i];
        left -= secs;
        presets.push(c.preset);
        profiles.push(&c.profile);
        chosen.push(i);
    }
    chosen.sort_unstable();
    chosen
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_preset_too_big_for_the_host_says_so() {
        let c = Case {
            preset: "big-smt",
            profile: "default".into(),
            vcpus: 64,
        };
        let why = too_big(&c, 2).unwrap();
        assert!(
            why.contains("64 vCPUs") && why.contains("at most 4"),
            "{why}"
        );
        assert!(too_big(&c, 32).is_none());
    }

    #[test]
    fn the_budget_buys_the_most_coverage_per_second() {
        let case = |preset, profile: &str, vcpus| Case {
            preset,
            profile: profile.into(),
            vcpus,
        };
        let cases = vec![
            (case("tiny", "a", 1), 10.0),
            (case("tiny", "b", 1), 10.0),
            (case("quad", "a", 4), 15.0),
            (case("quad", "b", 4), 15.0),
        ];
        // 30 s: tiny/a (2 new in 10 s), then quad/b (2 new in 15 s, more
        // per second than tiny/b's 1 in 10 s); then nothing fits.
        assert_eq!(choose(&cases, Duration::from_secs(30)), vec![0, 3]);
        assert_eq!(choose(&cases, Duration::from_secs(5)), Vec::<usize>::new());
        assert_eq!(choose(&cases, Duration::from_secs(600)).len(), 4);
    }
}
