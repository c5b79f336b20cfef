//! Group commit: deliveries waiting for the same mailbox share one lock, one write, one fsync.
//!
//! Interface:
//! - `Gates::submit(user, bytes, write_batch)`: queue a message for `user`'s mailbox. The first
//!   thread to find the mailbox free becomes the leader: it takes every message queued so far,
//!   calls `write_batch` once with all of them (lock, append, sync, unlock), and hands the one
//!   outcome to each. A thread returns only when its own bytes are on disk, or failed.
//! - `Gates::exclusive(user)` waits for the mailbox and holds it (deliveries to several mailboxes,
//!   and a POP3 rewrite), released when the guard is dropped.
//!
//! Why: with one fsync per message, every client of a busy mailbox waits for all the fsyncs
//! before its own; an fsync costs milliseconds while the append costs microseconds. Sharing it
//! keeps "250 means on disk" for every client and divides the cost. Waiting threads sleep on a
//! condition variable and wake at once, instead of polling the lock files.
//!
//! Standards: RFC 5321 §6.1, RFC 4155 §2

use std::collections::HashMap;
use std::sync::{Arc, Condvar, Mutex, PoisonError};

use crate::lock;

/// Every mailbox's gate, created on first use. `E` is the error a batch can end with; each
/// message of a failed batch gets a clone of it.
#[derive(Debug)]
pub struct Gates<E> {
    gates: Mutex<HashMap<String, Arc<Gate<E>>>>,
}

#[derive(Debug)]
struct Gate<E> {
    state: Mutex<GateState<E>>,
    wake: Condvar,
}

#[derive(Debug)]
struct GateState<E> {
    /// A leader or an exclusive holder is using the mailbox.
    busy: bool,
    /// Messages waiting for the next batch.
    pending: Vec<Arc<Ticket<E>>>,
}

/// One message waiting to be written, and, once it has been, what happened.
#[derive(Debug)]
struct Ticket<E> {
    bytes: Vec<u8>,
    outcome: Mutex<Option<Result<(), E>>>,
}

/// Holds a mailbox exclusively until dropped.
#[derive(Debug)]
pub struct Exclusive<E> {
    gate: Arc<Gate<E>>,
}

impl<E> Default for Gates<E> {
    fn default() -> Self {
        Gates {
            gates: Mutex::new(HashMap::new()),
        }
    }
}

impl<E: Clone> Gates<E> {
    fn gate(&self, user: &str) -> Arc<Gate<E>> {
        let mut gates = lock(&self.gates);
        let gate = gates.entry(user.to_string()).or_insert_with(|| {
            Arc::new(Gate {
                state: Mutex::new(GateState {
                    busy: false,
                    pending: Vec::new(),
                }),
                wake: Condvar::new(),
            })
        });
        gate.clone()
    }

    // ANCHOR: submit
    /// Queue `bytes` for `user`'s mailbox and return once they are written (or failed).
    pub fn submit(
        &self,
        user: &str,
        bytes: Vec<u8>,
        write_batch: impl FnOnce(&[&[u8]]) -> Result<(), E>,
    ) -> Result<(), E> {
        let gate = self.gate(user);
        let ticket = Arc::new(Ticket {
            bytes,
            outcome: Mutex::new(None),
        });
        let mut state = lock(&gate.state);
        state.pending.push(ticket.clone());
        // Wait until a leader has written our bytes, or until the mailbox is free.
        while state.busy {
            state = gate
                .wake
                .wait(state)
                .unwrap_or_else(PoisonError::into_inner);
            if let Some(outcome) = lock(&ticket.outcome).take() {
                return outcome;
            }
        }
        // Leader: take every waiting message, ours among them, and write them as one.
        state.busy = true;
        let batch = std::mem::take(&mut state.pending);
        drop(state);
        let messages: Vec<&[u8]> = batch.iter().map(|t| t.bytes.as_slice()).collect();
        let outcome = write_batch(&messages);
        for waiter in &batch {
            *lock(&waiter.outcome) = Some(outcome.clone());
        }
        lock(&gate.state).busy = false;
        gate.wake.notify_all();
        outcome
    }
    // ANCHOR_END: submit

    /// Wait until nobody uses `user`'s mailbox, then hold it until the guard is dropped.
    pub fn exclusive(&self, user: &str) -> Exclusive<E> {
        let gate = self.gate(user);
        let mut state = lock(&gate.state);
        while state.busy {
            state = gate
                .wake
                .wait(state)
                .unwrap_or_else(PoisonError::into_inner);
        }
        state.busy = true;
        drop(state);
        Exclusive { gate }
    }
}

impl<E> Drop for Exclusive<E> {
    fn drop(&mut self) {
        lock(&self.gate.state).busy = false;
        self.gate.wake.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::thread;

    #[test]
    fn waiting_messages_share_a_batch_and_each_gets_the_outcome() {
        let gates: Arc<Gates<String>> = Arc::new(Gates::default());
        let written = Arc::new(Mutex::new(Vec::new()));
        let batches = Arc::new(AtomicUsize::new(0));
        // Hold the mailbox so that every submitter queues up behind it.
        let held = gates.exclusive("alice");
        let threads: Vec<_> = (0..8u8)
            .map(|i| {
                let (gates, written, batches) = (gates.clone(), written.clone(), batches.clone());
                thread::spawn(move || {
                    gates.submit("alice", vec![b'a' + i], |bytes| {
                        batches.fetch_add(1, Ordering::SeqCst);
                        lock(&written).extend(bytes.concat());
                        Ok(())
                    })
                })
            })
            .collect();
        // Wait (with a deadline) until all eight are queued, then let them in.
        let gate = gates.gate("alice");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while lock(&gate.state).pending.len() < 8 {
            assert!(
                std::time::Instant::now() < deadline,
                "submitters did not queue"
            );
            thread::yield_now();
        }
        drop(held);
        for t in threads {
            assert_eq!(t.join().unwrap(), Ok(()));
        }
        let mut bytes = lock(&written).clone();
        bytes.sort_unstable();
        assert_eq!(bytes, b"abcdefgh", "every message written exactly once");
        assert_eq!(batches.load(Ordering::SeqCst), 1, "one batch, one fsync");
    }

    #[test]
    fn a_failed_batch_fails_every_message_in_it() {
        let gates: Gates<String> = Gates::default();
        let failed = gates.submit("bob", b"x".to_vec(), |_| Err("disk full".to_string()));
        assert_eq!(failed, Err("disk full".to_string()));
        assert_eq!(
            gates.submit("bob", b"y".to_vec(), |_| Ok(())),
            Ok(()),
            "the gate is free again"
        );
    }
}
