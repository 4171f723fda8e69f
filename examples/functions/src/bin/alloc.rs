//! `alloc`: makes N MB resident, one MB at a time, holds it briefly, then prints
//! `allocated N MB`.
//!
//! Payload: `N` or `N STEP_MS` on stdin or as arguments: N megabytes (MiB), with an optional
//! pause of STEP_MS milliseconds after each one so memory grows gradually. Every page is
//! written, so the memory really is resident: used to test peak-memory accounting, memory
//! limits and page-out.

use std::time::Duration;

use tariff_example_functions::{input, numbers};

/// One allocation step.
const MB: usize = 1 << 20;
/// Touch one byte per page; 4 KiB is the smallest page size on the machines we run on.
const PAGE_BYTES: usize = 4096;
/// How long the memory is held at its peak, so samplers can see it.
const HOLD: Duration = Duration::from_millis(50);

fn main() {
    let args = numbers(&input(), 1, 2, "N [STEP_MS]");
    let megabytes = args[0];
    let step = Duration::from_millis(args.get(1).copied().unwrap_or(0));
    let mut held: Vec<Vec<u8>> = Vec::new();
    for _ in 0..megabytes {
        // A fresh allocation may be untouched zero pages; writing every page makes it resident.
        let mut chunk = vec![0u8; MB];
        for byte in chunk.iter_mut().step_by(PAGE_BYTES) {
            *byte = 1;
        }
        held.push(std::hint::black_box(chunk));
        if !step.is_zero() {
            std::thread::sleep(step);
        }
    }
    std::thread::sleep(HOLD);
    drop(std::hint::black_box(held));
    println!("allocated {megabytes} MB");
}
