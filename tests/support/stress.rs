//! Randomized tests' size: `base` cases, times `BC_STRESS_SCALE` (1 unless `make stress`).

use proptest::test_runner::Config;

pub fn config(base: u32) -> Config {
    let scale = std::env::var("BC_STRESS_SCALE")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(1);
    Config {
        cases: base * scale,
        failure_persistence: None,
        ..Config::default()
    }
}
