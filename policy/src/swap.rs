//! Price-class-based swapping: which instances to page out under memory pressure, which to
//! bring back once it eases, and whom to kill when swapping cannot free enough.
//!
//! The paper's argument (section 3.2) is that priority scheduling makes swapping realistic:
//! the machine scheduler never runs a lower class while a higher one waits, so the memory of
//! the lowest class's waiting instances will not be touched soon, and paging it out costs the
//! machine nothing it needs right now. The choices here follow from that:
//!
//! * swap out the lowest class first (highest class number), and within a class the most
//!   recently arrived first: under first-come-first-served it is the last to run;
//! * never swap a running instance (it would fault its pages straight back in);
//! * never touch a dearer class while a cheaper one still has swappable memory;
//! * swap back in dearest class first, earliest arrival first: the order the run queue will
//!   run them in;
//! * when the running instances alone outgrow memory (eight cores of functions that may each
//!   grow to 10 GB can pass 32 GB on their own), suspend running ones in the same cheapest,
//!   latest-first order and swap them out ([`choose_suspensions`]) rather than kill;
//! * kill only when swap space runs out too, counting what each instance holds in memory *and*
//!   in swap ([`choose_kills`]), so the top class is never killed while a cheaper class holds
//!   any memory. (Counting resident bytes alone, as before, passed over cheaper instances
//!   already in swap and killed running top-class ones; the simulator's memory experiment
//!   showed it, docs/simulator.md.)
//!
//! [`decide`] puts these together into one tick's decision for a live machine: the
//! dispatcher's memory guard (`tariff_machine_sched::memory_guard`) calls it with what the
//! kernel reports, and acts on the answer; the simulator calls the same choosers.
//!
//! This module is pure (no I/O, no clock).

/// A function instance on the machine, as the swap policy sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Instance {
    /// The caller's identifier for the instance.
    pub id: u64,
    /// Its price class; 0 is the most expensive.
    pub class: u8,
    /// Arrival order on the machine: lower arrived earlier (and runs earlier within its class).
    pub arrival: u64,
    /// Bytes it holds in memory now.
    pub resident_bytes: u64,
    /// Bytes of it that are swapped out now.
    pub swapped_bytes: u64,
    /// Whether it holds a core now.
    pub running: bool,
}

/// The outcome of a choice that must free memory.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FreePlan {
    /// Instances chosen, in the order they should be acted on.
    pub victims: Vec<u64>,
    /// Bytes the victims free together.
    pub freed_bytes: u64,
    /// Bytes still missing after every eligible instance was chosen; zero when the request
    /// is met. A swap plan with a shortfall tells the caller to fall back on
    /// [`choose_kills`].
    pub shortfall_bytes: u64,
}

/// Lowest class first, then most recent arrival first: the instances that will run last.
fn last_to_run_first(a: &Instance, b: &Instance) -> std::cmp::Ordering {
    b.class.cmp(&a.class).then(b.arrival.cmp(&a.arrival))
}

/// Takes instances from `candidates` in order until `need` bytes (as `bytes` counts them)
/// are freed.
fn take_until(candidates: Vec<&Instance>, need: u64, bytes: fn(&Instance) -> u64) -> FreePlan {
    let mut plan = FreePlan::default();
    for instance in candidates {
        if plan.freed_bytes >= need {
            break;
        }
        plan.victims.push(instance.id);
        plan.freed_bytes += bytes(instance);
    }
    plan.shortfall_bytes = need.saturating_sub(plan.freed_bytes);
    plan
}

/// Chooses non-running instances to swap out so that at least `need` bytes are freed.
///
/// Stops as soon as enough is freed, so a dearer class is only touched once every cheaper
/// class's swappable memory is gone. Running instances and instances with nothing resident
/// are never chosen.
pub fn choose_swap_out(instances: &[Instance], need: u64) -> FreePlan {
    if need == 0 {
        return FreePlan::default();
    }
    let mut candidates: Vec<&Instance> = instances
        .iter()
        .filter(|i| !i.running && i.resident_bytes > 0)
        .collect();
    candidates.sort_by(|a, b| last_to_run_first(a, b));
    take_until(candidates, need, |i| i.resident_bytes)
}

/// Chooses *running* instances to suspend and swap out when the waiting ones cannot free
/// `need` bytes of memory (the running instances alone outgrow it): lowest class first, latest
/// arrival first, the run queue's own preemption order applied to memory. A suspended instance
/// gives up its core, so its pages are not faulted straight back in; it runs again once it is
/// swapped back in ([`choose_swap_in`]). Suspending instead of killing leaves killing to the
/// one case swapping cannot handle: swap space running out.
pub fn choose_suspensions(instances: &[Instance], need: u64) -> FreePlan {
    if need == 0 {
        return FreePlan::default();
    }
    let mut candidates: Vec<&Instance> = instances
        .iter()
        .filter(|i| i.running && i.resident_bytes > 0)
        .collect();
    candidates.sort_by(|a, b| last_to_run_first(a, b));
    take_until(candidates, need, |i| i.resident_bytes)
}

/// Chooses instances to kill when memory and swap space together cannot hold `need` more
/// bytes: the last resort the paper keeps for when swap space runs out.
///
/// An instance's bytes here are everything it holds, resident and swapped: when killing is
/// needed it is swap space that ran out, and a swapped cheap instance is exactly what must
/// go. So the top class is never killed while a cheaper class holds any memory. Same order
/// as [`choose_swap_out`] (lowest class, latest arrival), running instances allowed: within a
/// class a waiting instance still goes before a running one, since it has done less work that
/// would be lost.
pub fn choose_kills(instances: &[Instance], need: u64) -> FreePlan {
    if need == 0 {
        return FreePlan::default();
    }
    let mut candidates: Vec<&Instance> = instances.iter().filter(|i| held_bytes(i) > 0).collect();
    candidates.sort_by(|a, b| {
        b.class
            .cmp(&a.class)
            .then(a.running.cmp(&b.running))
            .then(b.arrival.cmp(&a.arrival))
    });
    take_until(candidates, need, held_bytes)
}

/// Everything an instance holds: resident plus swapped bytes.
pub fn held_bytes(instance: &Instance) -> u64 {
    instance.resident_bytes + instance.swapped_bytes
}

/// Chooses swapped-out instances to bring back into `free_bytes` of memory: dearest class
/// first, earliest arrival first, the order the run queue will want them in.
///
/// Stops at the first instance that does not fit rather than skipping ahead to a smaller
/// one: letting a later, cheaper instance take the room would only delay the one that runs
/// next.
pub fn choose_swap_in(instances: &[Instance], free_bytes: u64) -> Vec<u64> {
    let mut candidates: Vec<&Instance> = instances.iter().filter(|i| i.swapped_bytes > 0).collect();
    candidates.sort_by(|a, b| a.class.cmp(&b.class).then(a.arrival.cmp(&b.arrival)));
    let mut left = free_bytes;
    let mut chosen = Vec::new();
    for instance in candidates {
        if instance.swapped_bytes > left {
            break;
        }
        left -= instance.swapped_bytes;
        chosen.push(instance.id);
    }
    chosen
}

/// Free memory and swap as one tick of a live machine sees them, and the watermarks that turn
/// them into action. All in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pressure {
    /// Memory the functions may still take before the machine's limit.
    pub free_bytes: u64,
    /// Below this much free memory, swap out (or, without swap, kill below
    /// `kill_watermark`).
    pub low_watermark: u64,
    /// Swapping out goes on until this much is free; resuming a swapped function leaves at
    /// least `low_watermark` free.
    pub high_watermark: u64,
    /// Below this much free memory, with swap unable to take what is needed, kill.
    pub kill_watermark: u64,
    /// Swap space left on the machine.
    pub swap_free_bytes: u64,
}

/// What one tick should do. Instances not `running` in the input are the ones the machine
/// holds stopped (swapped, or being swapped).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MemoryActions {
    /// Running instances to stop and swap out, in order.
    pub suspend: Vec<u64>,
    /// Stopped instances whose remaining resident memory should be paged out too.
    pub swap_out: Vec<u64>,
    /// Stopped instances to let run again, in order.
    pub resume: Vec<u64>,
    /// Instances to kill, in order.
    pub kill: Vec<u64>,
}

/// One tick's decision for a live machine.
///
/// * Below the low watermark, with swap space left, free memory up to the high watermark: the
///   resident memory of stopped instances first ([`choose_swap_out`]), then by stopping
///   running ones ([`choose_suspensions`]), cheapest class and latest arrival first. Swap
///   space bounds what can be asked of it.
/// * Below the kill watermark, when swap cannot take what is needed to get back above the low
///   watermark (none left, or none at all), kill just enough for that ([`choose_kills`]): the
///   cheapest class's latest arrival holding memory first.
///   Stopping an instance frees nothing without swap, so without swap nothing is suspended.
/// * Otherwise resume stopped instances in run order while they fit above the low watermark
///   ([`choose_swap_in`]), and when nothing runs at all, resume the next to run whatever it
///   holds in swap: something must run for memory to free.
pub fn decide(instances: &[Instance], pressure: &Pressure) -> MemoryActions {
    let mut actions = MemoryActions::default();
    let free = pressure.free_bytes;
    if free < pressure.low_watermark {
        let need = pressure.high_watermark.saturating_sub(free);
        let swappable = need.min(pressure.swap_free_bytes);
        if swappable > 0 {
            let stopped = choose_swap_out(instances, swappable);
            actions.swap_out = stopped.victims;
            actions.suspend = choose_suspensions(instances, stopped.shortfall_bytes).victims;
        }
        // Killing loses work: free only what gets the machine back above the low watermark.
        let kill_need = pressure.low_watermark - free;
        if free < pressure.kill_watermark && pressure.swap_free_bytes < kill_need {
            let kills = choose_kills(instances, kill_need - pressure.swap_free_bytes);
            actions.suspend.retain(|id| !kills.victims.contains(id));
            actions.swap_out.retain(|id| !kills.victims.contains(id));
            actions.kill = kills.victims;
        }
        return actions;
    }
    let stopped: Vec<Instance> = instances
        .iter()
        .filter(|i| !i.running)
        .map(|i| Instance {
            // Stopped with nothing in swap (paged out to nothing, or never paged): it still
            // waits to be resumed.
            swapped_bytes: i.swapped_bytes.max(1),
            ..*i
        })
        .collect();
    actions.resume = choose_swap_in(&stopped, free - pressure.low_watermark);
    if actions.resume.is_empty() && !instances.iter().any(|i| i.running) {
        let mut next: Vec<&Instance> = stopped.iter().collect();
        next.sort_by(|a, b| a.class.cmp(&b.class).then(a.arrival.cmp(&b.arrival)));
        actions.resume.extend(next.first().map(|i| i.id));
    }
    actions
}

#[cfg(test)]
mod tests {
    use super::*;

    const MB: u64 = 1 << 20;

    fn inst(id: u64, class: u8, arrival: u64, resident_mb: u64, running: bool) -> Instance {
        Instance {
            id,
            class,
            arrival,
            resident_bytes: resident_mb * MB,
            swapped_bytes: 0,
            running,
        }
    }

    #[test]
    fn lowest_class_and_latest_arrival_go_first() {
        let instances = [
            inst(1, 3, 1, 100, false),
            inst(2, 3, 2, 100, false),
            inst(3, 1, 0, 100, false),
        ];
        let plan = choose_swap_out(&instances, 150 * MB);
        assert_eq!(plan.victims, vec![2, 1]);
        assert_eq!(plan.freed_bytes, 200 * MB);
        assert_eq!(plan.shortfall_bytes, 0);
    }

    #[test]
    fn dearer_classes_are_untouched_when_cheaper_ones_suffice() {
        let instances = [inst(1, 0, 0, 500, false), inst(2, 2, 1, 500, false)];
        let plan = choose_swap_out(&instances, 400 * MB);
        assert_eq!(plan.victims, vec![2]);
    }

    #[test]
    fn running_instances_are_never_swapped_and_shortfall_is_reported() {
        let instances = [inst(1, 3, 0, 1000, true), inst(2, 2, 1, 100, false)];
        let plan = choose_swap_out(&instances, 500 * MB);
        assert_eq!(plan.victims, vec![2]);
        assert_eq!(plan.shortfall_bytes, 400 * MB);
    }

    #[test]
    fn kills_may_take_a_running_lowest_class_instance() {
        let instances = [
            inst(1, 3, 0, 1000, true),
            inst(2, 0, 1, 1000, true),
            inst(3, 3, 2, 10, false),
        ];
        let plan = choose_kills(&instances, 500 * MB);
        assert_eq!(
            plan.victims,
            vec![3, 1],
            "waiting before running within a class"
        );
        assert_eq!(plan.shortfall_bytes, 0);
    }

    #[test]
    fn swap_in_goes_dearest_and_earliest_first_and_stops_when_full() {
        let mut a = inst(1, 2, 5, 0, false);
        a.swapped_bytes = 100 * MB;
        let mut b = inst(2, 1, 9, 0, false);
        b.swapped_bytes = 300 * MB;
        let mut c = inst(3, 2, 1, 0, false);
        c.swapped_bytes = 50 * MB;
        let chosen = choose_swap_in(&[a, b, c], 360 * MB);
        assert_eq!(chosen, vec![2, 3], "instance 1 does not fit after them");
        assert!(choose_swap_in(&[a, b, c], 10 * MB).is_empty());
    }

    #[test]
    fn suspensions_take_running_instances_cheapest_and_latest_first() {
        let instances = [
            inst(1, 0, 0, 4000, true),
            inst(2, 3, 1, 1000, true),
            inst(3, 3, 2, 1000, true),
            inst(4, 3, 3, 9000, false),
        ];
        let plan = choose_suspensions(&instances, 1500 * MB);
        assert_eq!(
            plan.victims,
            vec![3, 2],
            "waiting instances are not suspended"
        );
        assert_eq!(plan.shortfall_bytes, 0);
        let plan = choose_suspensions(&instances, 5500 * MB);
        assert_eq!(plan.victims, vec![3, 2, 1], "the top class goes last");
    }

    #[test]
    fn kills_count_swapped_bytes_and_spare_the_top_class_while_cheaper_memory_exists() {
        let mut swapped = inst(2, 3, 1, 0, false);
        swapped.swapped_bytes = 2000 * MB;
        let instances = [inst(1, 0, 0, 4000, true), swapped];
        let plan = choose_kills(&instances, 1000 * MB);
        assert_eq!(
            plan.victims,
            vec![2],
            "a swapped cheap instance before the top class"
        );
        assert_eq!(plan.freed_bytes, 2000 * MB);
    }

    /// Random machines: whatever the need, a kill plan never takes a class while a cheaper
    /// instance holding memory is left unchosen.
    #[test]
    fn kills_never_skip_a_cheaper_instance_holding_memory() {
        let mut state = 0x2545_F491_4F6C_DD1D_u64;
        let mut next = |n: u64| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state % n
        };
        for _ in 0..2000 {
            let instances: Vec<Instance> = (0..1 + next(12))
                .map(|id| {
                    let mut i = inst(id, next(4) as u8, next(100), next(3) * 100, next(2) == 0);
                    i.swapped_bytes = next(3) * 100 * MB;
                    i
                })
                .collect();
            let need = next(1000) * MB;
            let plan = choose_kills(&instances, need);
            let Some(dearest) = plan
                .victims
                .iter()
                .map(|v| instances.iter().find(|i| i.id == *v).expect("known").class)
                .min()
            else {
                continue;
            };
            for i in &instances {
                if i.class > dearest && held_bytes(i) > 0 {
                    assert!(
                        plan.victims.contains(&i.id),
                        "{instances:?} need {need}: {plan:?}"
                    );
                }
            }
        }
    }

    fn pressure(free_mb: u64, swap_mb: u64) -> Pressure {
        Pressure {
            free_bytes: free_mb * MB,
            low_watermark: 100 * MB,
            high_watermark: 200 * MB,
            kill_watermark: 50 * MB,
            swap_free_bytes: swap_mb * MB,
        }
    }

    #[test]
    fn decide_suspends_the_cheapest_running_until_the_high_watermark() {
        let instances = [
            inst(1, 0, 0, 300, true),
            inst(2, 3, 1, 100, true),
            inst(3, 3, 2, 100, true),
        ];
        let actions = decide(&instances, &pressure(80, 1000));
        assert_eq!(
            actions.suspend,
            vec![3, 2],
            "120 MB needed: both batch, critical spared"
        );
        assert!(actions.kill.is_empty() && actions.resume.is_empty());
    }

    #[test]
    fn decide_without_swap_kills_only_below_the_kill_watermark_and_never_suspends() {
        let instances = [inst(1, 0, 0, 300, true), inst(2, 3, 1, 100, true)];
        assert_eq!(
            decide(&instances, &pressure(80, 0)),
            MemoryActions::default()
        );
        let actions = decide(&instances, &pressure(40, 0));
        assert_eq!(actions.kill, vec![2]);
        assert!(actions.suspend.is_empty());
    }

    #[test]
    fn decide_kills_when_swap_runs_out() {
        let instances = [inst(1, 0, 0, 300, true), inst(2, 3, 1, 100, true)];
        let actions = decide(&instances, &pressure(40, 10));
        assert_eq!(actions.kill, vec![2]);
        assert!(
            !actions.suspend.contains(&2),
            "a killed instance is not also swapped"
        );
    }

    #[test]
    fn decide_resumes_in_run_order_what_fits_and_the_next_when_nothing_runs() {
        let mut a = inst(1, 3, 1, 0, false);
        a.swapped_bytes = 150 * MB;
        let mut b = inst(2, 3, 2, 0, false);
        b.swapped_bytes = 50 * MB;
        let running = inst(3, 0, 0, 10, true);
        assert!(decide(&[a, b, running], &pressure(200, 1000))
            .resume
            .is_empty());
        assert_eq!(
            decide(&[a, b, running], &pressure(300, 1000)).resume,
            vec![1, 2]
        );
        assert_eq!(decide(&[a, b], &pressure(150, 1000)).resume, vec![1]);
    }

    #[test]
    fn nothing_needed_nothing_chosen() {
        let instances = [inst(1, 3, 0, 100, false)];
        assert_eq!(choose_swap_out(&instances, 0), FreePlan::default());
        assert_eq!(choose_kills(&instances, 0), FreePlan::default());
        assert_eq!(choose_suspensions(&instances, 0), FreePlan::default());
    }
}
