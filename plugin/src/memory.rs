//! Process memory: how many glibc malloc arenas the process may use.
//!
//! glibc gives a thread that finds its heap locked a new arena, up to eight per core, and
//! every arena keeps the pages its threads freed. A featurizing process has many threads
//! that allocate large buffers (Tokio workers decoding, libtorch's pool, Arrow batches), so
//! its footprint grows with the arena count, not with the work: featurizing the 1,428
//! flowers on 2 cores peaked at 1,852 MB with glibc's default and 1,453 MB with two arenas.
//! [`cap_malloc_arenas`] caps them at the cores the process runs on, once, before the heavy
//! work starts; `MALLOC_ARENA_MAX` (or `glibc.malloc.arena_max` in `GLIBC_TUNABLES`) set by
//! the operator wins, and `DLP_MALLOC_ARENAS` sets another cap (`0`: glibc's default).

use std::sync::OnceLock;

/// Caps glibc's malloc arenas (see the module docs); returns the cap set, if any.
pub fn cap_malloc_arenas() -> Option<usize> {
    static CAP: OnceLock<Option<usize>> = OnceLock::new();
    *CAP.get_or_init(|| {
        let operator_set = std::env::var_os("MALLOC_ARENA_MAX").is_some()
            || std::env::var("GLIBC_TUNABLES").is_ok_and(|t| t.contains("arena_max"));
        if operator_set {
            return None;
        }
        let cap = match std::env::var("DLP_MALLOC_ARENAS") {
            Ok(v) => match v.trim().parse::<usize>() {
                Ok(0) => return None,
                Ok(n) => n,
                Err(_) => {
                    tracing::warn!(value = %v, "DLP_MALLOC_ARENAS: expected a number of arenas (0: glibc's default); using the core count");
                    cores()
                }
            },
            Err(_) => cores(),
        };
        set_arena_max(cap).then_some(cap)
    })
}

fn cores() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get())
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn set_arena_max(cap: usize) -> bool {
    // mallopt(3); M_ARENA_MAX is -8 in glibc's <malloc.h>.
    const M_ARENA_MAX: std::ffi::c_int = -8;
    unsafe extern "C" {
        fn mallopt(param: std::ffi::c_int, value: std::ffi::c_int) -> std::ffi::c_int;
    }
    let value = std::ffi::c_int::try_from(cap.max(1)).unwrap_or(std::ffi::c_int::MAX);
    // SAFETY: mallopt only sets a tunable of the allocator; it is safe to call at any time.
    let ok = unsafe { mallopt(M_ARENA_MAX, value) } == 1;
    if ok {
        tracing::debug!(arenas = value, "malloc arenas capped");
    }
    ok
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn set_arena_max(_cap: usize) -> bool {
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cap_is_set_once_and_reported() {
        // The test process sets none of the variables: the cap is the core count, on glibc.
        let first = cap_malloc_arenas();
        assert_eq!(first, cap_malloc_arenas());
        if cfg!(all(target_os = "linux", target_env = "gnu"))
            && std::env::var_os("MALLOC_ARENA_MAX").is_none()
            && std::env::var_os("GLIBC_TUNABLES").is_none()
            && std::env::var_os("DLP_MALLOC_ARENAS").is_none()
        {
            assert_eq!(first, Some(cores()));
        }
    }
}
