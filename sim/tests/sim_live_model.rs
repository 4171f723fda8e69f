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
