//! Slot reuse for the simulators' per-invocation tables: a finished invocation's slot is taken
//! by the next arrival, so memory stays flat however long the simulated time.

/// Stores `value` in a free slot of `slots` if there is one, else at the end, and returns its
/// index. `reuse` builds the stored value from the slot's old one and the new value, so that
/// what must survive reuse (a generation counter that invalidates stale events) carries over.
pub(super) fn store<T>(
    slots: &mut Vec<T>,
    free: &mut Vec<u32>,
    value: T,
    reuse: impl FnOnce(&T, T) -> T,
) -> u32 {
    match free.pop() {
        Some(id) => {
            let slot = &mut slots[id as usize];
            *slot = reuse(slot, value);
            id
        }
        None => {
            slots.push(value);
            (slots.len() - 1) as u32
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_slots_are_reused_and_keep_what_reuse_keeps() {
        let mut slots = vec![(7, "old")];
        let mut free = vec![0];
        let id = store(&mut slots, &mut free, (0, "new"), |old, new| {
            (old.0 + 1, new.1)
        });
        assert_eq!((id, slots[0]), (0, (8, "new")));
        let id = store(&mut slots, &mut free, (0, "more"), |_, new| new);
        assert_eq!((id, slots.len()), (1, 2));
    }
}
