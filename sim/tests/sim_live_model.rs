//! The live machine model (`SimConfig::rt_cpus`) and the dispatch overhead, on hand-made
//! invocation lists whose finishing times can be worked out by hand.

use tariff_sim::events::{from_secs, Nanos};
use tariff_sim::workload::Invocation;
use tariff_sim::{run_invocations, Overheads, SchedulerKind, SimConfig};

/// 100 ms of CPU.
const RUN: Nanos = 100_000_000;
/// Classes in these set-ups: 0 pays, 1 is the cheapest.
const CLASSES: usize = 2;

/// One machine of two cores, Tariff only, four slots so nothing waits in the shard.
fn machine(rt_cpus: Option<usize>) -> SimConfig {
    SimConfig {
        machines: 1,
        cores: 2,
        shards: 1,
        k: 1,
        classes: CLASSES,
        slots: 4,
        duration_s: 10.0,
        schedulers: vec![SchedulerKind::TARIFF],
        rt_cpus,
        ..SimConfig::paper(1.0)
    }
}

fn call(at_ms: u64, class: u8) -> Invocation {
    Invocation {
        arrival: at_ms * 1_000_000,
        function: u32::from(class),
        runtime: RUN,
        memory: 0,
        class,
    }
}

/// p50 and p99 latency in ms of `class` over `calls`.
fn latency(config: &SimConfig, calls: &[Invocation], class: usize) -> (f64, f64) {
    let report = run_invocations(config, calls).expect("valid set-up");
    let c = &report.schedulers[0].classes[class];
    (c.latency_ms.p50, c.latency_ms.p99)
}

/// Within the histograms' three significant digits.
fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= b * 2e-3
}

#[test]
fn paying_classes_are_confined_to_their_cores() {
    // Two paying calls at once: both run on the paper's two-core machine, one after the
    // other on a live machine whose paying classes have one core.
    let calls = [call(0, 0), call(0, 0)];
    let (_, paper) = latency(&machine(None), &calls, 0);
    let (_, live) = latency(&machine(Some(1)), &calls, 0);
    assert!(close(paper, 100.0), "paper model: {paper} ms");
    assert!(close(live, 200.0), "live model: {live} ms");
}

#[test]
fn the_cheapest_class_shares_what_paying_classes_leave() {
    // Two cheapest-class calls and one paying call at once on two cores. The paying call
    // takes one core for 100 ms; the two cheap ones share the other (half a core each, 50 ms
    // of work done), then have a core each for the 50 ms left: both finish at 150 ms. The
    // paper's run queue instead preempts one cheap call: one finishes at 100 ms, one at 200.
    let calls = [call(0, 1), call(0, 1), call(0, 0)];
    let (p50, p99) = latency(&machine(Some(1)), &calls, 1);
    assert!(close(p50, 150.0) && close(p99, 150.0), "live: {p50}, {p99}");
    let (p50, p99) = latency(&machine(None), &calls, 1);
    assert!(
        close(p50, 100.0) && close(p99, 200.0),
        "paper: {p50}, {p99}"
    );
    let (paid, _) = latency(&machine(Some(1)), &calls, 0);
    assert!(
        close(paid, 100.0),
        "the paying call waits for nothing: {paid}"
    );
}

#[test]
fn a_late_paying_call_slows_running_cheap_ones_down() {
    // Two cheap calls have a core each until a paying call arrives at 20 ms (80 ms left
    // each); they then share the one core left at half speed for its 100 ms (50 ms of work
    // each) and finish their last 30 ms at full speed: both at 150 ms, 300 core-ms of work on
    // two cores with nothing idle. Without the share they would have finished at 100 ms.
    let calls = [call(0, 1), call(0, 1), call(20, 0)];
    let (p50, p99) = latency(&machine(Some(1)), &calls, 1);
    assert!(close(p50, 150.0) && close(p99, 150.0), "{p50}, {p99}");
}

#[test]
fn a_host_shared_with_other_work_slows_only_the_cheapest_class() {
    // Half of its fair share (another engineer's build on the same CPUs): the cheap call
    // alone takes 200 ms; the paying call, real-time, still 100 ms.
    let config = SimConfig {
        shared_speed: 0.5,
        ..machine(Some(1))
    };
    let calls = [call(0, 1), call(0, 0)];
    let (cheap, _) = latency(&config, &calls, 1);
    let (paid, _) = latency(&config, &calls, 0);
    assert!(close(cheap, 200.0) && close(paid, 100.0), "{cheap}, {paid}");
}

#[test]
fn dispatch_overhead_is_added_to_every_latency_and_holds_no_core() {
    let mut config = machine(None);
    config.overheads = Overheads {
        dispatch: Some(from_secs(0.005)),
        ..Overheads::default()
    };
    // Two calls on two cores: neither waits, each is 5 ms later; the overhead does not delay
    // a third call that arrives when the first finishes (its core is free at 100 ms).
    let calls = [call(0, 0), call(0, 0), call(100, 0)];
    let (p50, p99) = latency(&config, &calls, 0);
    assert!(close(p50, 105.0) && close(p99, 105.0), "{p50}, {p99}");
}

#[test]
fn real_time_cores_beyond_the_machine_are_refused() {
    let err = run_invocations(&machine(Some(3)), &[call(0, 0)]).unwrap_err();
    assert!(err.to_string().contains("invalid"), "{err}");
}

/// A call of `ms` of CPU.
fn call_of(at_ms: u64, class: u8, ms: u64) -> Invocation {
    Invocation {
        runtime: ms * 1_000_000,
        ..call(at_ms, class)
    }
}

/// The live model with the paying classes on both cores under a real-time budget of half of
/// each core.
fn budgeted() -> SimConfig {
    SimConfig {
        rt_budget: Some(0.5),
        ..machine(Some(2))
    }
}

#[test]
fn a_core_out_of_budget_stops_its_paying_call_and_the_cheapest_class_gets_it() {
    // Two paying calls of 100 ms on two cores, half of each core per 100 ms period: each runs
    // 50 ms, waits out the period and runs its last 50 ms: 150 ms. A cheap call of 50 ms has
    // no core until both are throttled, then a whole one: it finishes at 100 ms. Without the
    // budget the paying calls finish at 100 ms and the cheap one after them, at 150.
    let calls = [call(0, 0), call(0, 0), call_of(0, 1, 50)];
    let (paid, _) = latency(&budgeted(), &calls, 0);
    let (cheap, _) = latency(&budgeted(), &calls, 1);
    assert!(
        close(paid, 150.0) && close(cheap, 100.0),
        "budget: {paid}, {cheap}"
    );
    let (paid, _) = latency(&machine(Some(2)), &calls, 0);
    let (cheap, _) = latency(&machine(Some(2)), &calls, 1);
    assert!(
        close(paid, 100.0) && close(cheap, 150.0),
        "none: {paid}, {cheap}"
    );
}

#[test]
fn the_budget_is_whole_again_each_period() {
    // A lone paying call of 100 ms arriving at 80 ms begins a period: 50 ms (80–130), throttled
    // to the period's end at 180, a new budget for its last 50 ms: done at 230 ms, 150 ms after
    // arriving.
    let (paid, _) = latency(&budgeted(), &[call(80, 0)], 0);
    assert!(close(paid, 150.0), "{paid}");
    // A call that fits in what is left of its core's budget is never held.
    let (paid, _) = latency(&budgeted(), &[call_of(0, 0, 40)], 0);
    assert!(close(paid, 40.0), "{paid}");
}

#[test]
fn a_period_begins_with_the_first_paying_call_after_a_quiet_spell() {
    // The first call (100 ms at 0) ends at 150 ms; at 200 ms the period ends with nothing to
    // run and the timer stops. A call at 330 ms starts a period there: 50 ms, throttled to
    // 430, 50 ms more: 150 ms. On a fixed grid of periods it would have met a period's end at
    // 400 ms and taken 120 ms.
    let calls = [call(0, 0), call(330, 0)];
    let (p50, p99) = latency(&budgeted(), &calls, 0);
    assert!(close(p50, 150.0) && close(p99, 150.0), "{p50}, {p99}");
}

#[test]
fn impossible_budgets_and_pools_are_refused() {
    for config in [
        SimConfig {
            rt_budget: Some(0.5),
            ..machine(None)
        },
        SimConfig {
            rt_budget: Some(1.5),
            ..machine(Some(2))
        },
        SimConfig {
            rt_budget: Some(1e-12),
            ..machine(Some(2))
        },
        SimConfig {
            overheads: Overheads {
                cold_start: Some(1),
                prewarm: u32::MAX,
                ..Overheads::default()
            },
            ..machine(None)
        },
    ] {
        let err = run_invocations(&config, &[call(0, 0)]).unwrap_err();
        assert!(err.to_string().contains("invalid"), "{err}");
    }
}

/// The paper's machine with 10 ms cold starts, instances kept 100 ms, `prewarm` idle
/// instances per function at the start.
fn cold(prewarm: u32) -> SimConfig {
    let mut config = machine(None);
    config.overheads = Overheads {
        cold_start: Some(from_secs(0.010)),
        keep_alive: from_secs(0.100),
        prewarm,
        ..Overheads::default()
    };
    config
}

#[test]
fn overlapping_calls_of_one_function_need_an_instance_each() {
    // One function, two calls at once, a third at 150 ms. With one instance warm at the
    // start, one of the first two is cold (110 ms); both instances are idle by 110 ms, so the
    // third is warm (100 ms).
    let calls = [call(0, 0), call(0, 0), call(150, 0)];
    let report = run_invocations(&cold(1), &calls).expect("valid set-up");
    let c = &report.schedulers[0].classes[0];
    assert!(close(c.latency_ms.p50, 100.0), "p50 {}", c.latency_ms.p50);
    assert!(close(c.latency_ms.p99, 110.0), "p99 {}", c.latency_ms.p99);
    // With none warm both first calls are cold.
    let (p50, _) = latency(&cold(0), &calls, 0);
    assert!(close(p50, 110.0), "{p50}");
    // An instance idle longer than its keep-alive is gone: at 300 ms every start is cold.
    let late = [call(0, 0), call(300, 0)];
    let (p50, p99) = latency(&cold(1), &late, 0);
    assert!(close(p50, 100.0) && close(p99, 110.0), "{p50}, {p99}");
}

#[test]
fn a_report_says_which_machine_model_it_ran() {
    let calls = [call(0, 0)];
    let live = run_invocations(&budgeted(), &calls).expect("valid set-up");
    let model = live.live_machine.expect("the live model is reported");
    assert_eq!((model.rt_cpus, model.rt_budget), (2, Some(0.5)));
    let paper = run_invocations(&machine(None), &calls).expect("valid set-up");
    assert!(paper.live_machine.is_none());
    let json = serde_json::to_string(&paper).expect("reports serialise");
    assert!(
        !json.contains("live_machine"),
        "the paper's reports are unchanged"
    );
}
