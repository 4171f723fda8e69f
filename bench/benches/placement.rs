//! How long the shard's core takes to choose the next invocation and place it, with 1,000
//! machines and 4 classes: the target is a median of at most 1 µs per decision.
//!
//! Three paths are measured: placement from the idle list, placement by power-of-k polling
//! (answers fed back at once, as the simulator does), and, as the baseline the ratio is
//! quoted against, a bare `VecDeque` push and pop, the least any queueing shard could do.

#![allow(missing_docs)] // criterion's macros generate undocumented items

use std::collections::VecDeque;
use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use tariff_policy::placement::PolledLoad;
use tariff_policy::{FunctionKey, MachineIdx, ShardConfig, ShardCore, Step};
use tariff_types::wire::IdleEntry;
use tariff_types::{ClassId, PriceClasses};

const MACHINES: u32 = 1_000;
const SLOTS: u32 = 8;
const BACKLOG: u64 = 1_000;

fn core(use_idle_list: bool) -> ShardCore<u64> {
    let config = ShardConfig {
        use_idle_list,
        max_queued: usize::MAX,
        ..ShardConfig::default()
    };
    let mut core = ShardCore::new(PriceClasses::default().prices(), config, 42);
    for m in 0..MACHINES {
        core.add_machine(MachineIdx(m), SLOTS);
        if use_idle_list {
            core.idle_update(
                MachineIdx(m),
                IdleEntry {
                    listed: true,
                    free_memory_bytes: 16 << 30,
                    queue_length: m % SLOTS,
                },
            );
        }
    }
    for i in 0..BACKLOG {
        core.submit(
            ClassId((i % 4) as u8),
            FunctionKey(i % 50),
            i,
            Duration::from_micros(i),
        )
        .expect("unbounded queue");
    }
    core
}

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("decision");

    let mut idle = core(true);
    let mut now = Duration::from_millis(10);
    let mut n = BACKLOG;
    group.bench_function("idle_list", |b| {
        b.iter(|| {
            now += Duration::from_micros(1);
            n += 1;
            idle.submit(ClassId((n % 4) as u8), FunctionKey(n % 50), n, now)
                .unwrap();
            match idle.next(now) {
                Some(Step::Place(taken, machine, _)) => {
                    black_box(taken.item);
                    idle.completed(machine);
                }
                other => panic!("expected an idle-list placement, got {other:?}"),
            }
        })
    });

    let mut polling = core(false);
    let loads: Vec<[u32; 4]> = (0..MACHINES).map(|m| [0, m % 2, m % 3, m % 5]).collect();
    let mut answers = Vec::with_capacity(4);
    group.bench_function("power_of_k", |b| {
        b.iter(|| {
            now += Duration::from_micros(1);
            n += 1;
            polling
                .submit(ClassId((n % 4) as u8), FunctionKey(n % 50), n, now)
                .unwrap();
            match polling.next(now) {
                Some(Step::Poll(taken, candidates)) => {
                    answers.clear();
                    answers.extend(candidates.iter().map(|&m| PolledLoad {
                        machine: m,
                        per_class: &loads[m.0 as usize],
                        slots: SLOTS,
                        warm: false,
                    }));
                    match polling.polled(taken, &answers) {
                        Ok((taken, machine)) => {
                            black_box(taken.item);
                            polling.completed(machine);
                        }
                        Err(_) => polling.unblock(),
                    }
                }
                other => panic!("expected a poll, got {other:?}"),
            }
        })
    });

    let mut fifo: VecDeque<u64> = (0..BACKLOG).collect();
    group.bench_function("baseline_vecdeque", |b| {
        b.iter(|| {
            n += 1;
            fifo.push_back(n);
            black_box(fifo.pop_front())
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
