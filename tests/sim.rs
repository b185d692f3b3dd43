//! The worker loop over the simulated network, for many seeds. A failing seed is printed; rerun
//! exactly that one with `SIM_SEED=<n> cargo test --test sim`. `SIM_SEEDS=<count>` runs more.

use std::panic;

use epoll_echo::sim::{self, Stats};

const DEFAULT_SEEDS: u64 = 400;

fn env_u64(name: &str) -> Option<u64> {
    let v = std::env::var(name).ok()?;
    Some(
        v.parse()
            .unwrap_or_else(|_| panic!("{name} must be a number, got {v:?}")),
    )
}

fn run_checked(seed: u64) -> Stats {
    match panic::catch_unwind(|| sim::run_seed(seed)) {
        Ok(stats) => stats,
        Err(cause) => {
            eprintln!(
                "simulation failed for seed {seed}; rerun it alone with \
                 SIM_SEED={seed} cargo test --test sim"
            );
            panic::resume_unwind(cause)
        }
    }
}

#[test]
fn worker_keeps_every_rule_over_many_seeded_networks() {
    if let Some(seed) = env_u64("SIM_SEED") {
        let s = run_checked(seed);
        eprintln!("seed {seed}: {s:?}");
        return;
    }
    let seeds = env_u64("SIM_SEEDS").unwrap_or(DEFAULT_SEEDS);
    let mut total = Stats::default();
    for seed in 0..seeds {
        total += run_checked(seed);
    }
    eprintln!("{seeds} seeds: {total:?}");
    // The schedule must actually reach the situations it claims to test.
    if seeds >= DEFAULT_SEEDS {
        let reached = [
            ("whole payloads echoed", total.full_echoes),
            (
                "connections closed at the drain deadline",
                total.deadline_closes,
            ),
            ("connections closed for silence", total.idle_closes),
            ("client resets", total.client_resets),
            ("short or refused writes", total.short_writes),
            ("short reads", total.short_reads),
            ("EMFILE on accept", total.emfile),
            ("ECONNABORTED on accept", total.aborted),
            ("stops while traffic was in flight", total.stop_with_traffic),
            ("backpressure pauses", total.backpressure_pauses),
            ("connections turned away at the limit", total.rejected),
            ("reads stopped at an urgent mark", total.urgent_stops),
        ];
        for (what, n) in reached {
            assert!(
                n > 0,
                "no {what} in {seeds} seeds: the simulation lost its reach"
            );
        }
    }
}

#[test]
fn a_seed_replays_the_same_run() {
    let a = sim::run_seed(12345);
    let b = sim::run_seed(12345);
    assert_eq!(format!("{a:?}"), format!("{b:?}"));
}
