//! `alloc`: makes N MB resident, one MB at a time, holds it briefly, then prints
//! `allocated N MB`.
//!
//! Payload: `N` or `N STEP_MS` on stdin or as arguments: N megabytes (MiB), with an optional
//! pause of STEP_MS milliseconds after each one so memory grows gradually. Every page is
//! written, so the memory really is resident: used to test peak-memory accounting, memory
//! limits and page-out. Each page gets a byte of its own and every one is checked before the
//! answer, so a run whose memory went to swap and came back answers only if it came back
//! intact (exit status 1 otherwise).

use std::time::Duration;

use tariff_example_functions::{input, numbers};

/// One allocation step.
const MB: usize = 1 << 20;
/// Touch one byte per page; 4 KiB is the smallest page size on the machines we run on.
const PAGE_BYTES: usize = 4096;
/// How long the memory is held at its peak, so samplers can see it.
const HOLD: Duration = Duration::from_millis(50);

/// The byte page `page` of megabyte `index` holds: never 0, so an unwritten page shows.
fn mark(index: u64, page: usize) -> u8 {
    (index as usize + page) as u8 | 1
}

fn main() {
    let args = numbers(&input(), 1, 2, "N [STEP_MS]");
    let megabytes = args[0];
    let step = Duration::from_millis(args.get(1).copied().unwrap_or(0));
    let mut held: Vec<Vec<u8>> = Vec::new();
    for index in 0..megabytes {
        // A fresh allocation may be untouched zero pages; writing every page makes it resident.
        let mut chunk = vec![0u8; MB];
        for (page, byte) in chunk.iter_mut().step_by(PAGE_BYTES).enumerate() {
            *byte = mark(index, page);
        }
        held.push(std::hint::black_box(chunk));
        if !step.is_zero() {
            std::thread::sleep(step);
        }
    }
    std::thread::sleep(HOLD);
    for (index, chunk) in held.iter().enumerate() {
        for (page, byte) in chunk.iter().step_by(PAGE_BYTES).enumerate() {
            if *byte != mark(index as u64, page) {
                eprintln!("memory corrupted: MB {index}, page {page}");
                std::process::exit(1);
            }
        }
    }
    drop(std::hint::black_box(held));
    println!("allocated {megabytes} MB");
}
