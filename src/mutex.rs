//! One way to take a `std::sync::Mutex` across the crate.
//!
//! The crate's mutexes guard small tables (known nodes, open HTTP
//! connections, the daemon's shared state) held only for a few statements and
//! never across an `.await`; a panic in one task must not take the others
//! down with a poisoned lock.

use std::sync::Mutex;

/// Locks a mutex, recovering the data if a panicking thread poisoned it: the
/// states guarded with it are replaced or inserted
/// into whole, never left half-written.
pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}
