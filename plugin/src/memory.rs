//! Process memory: glibc malloc's arenas and when freed memory goes back to the kernel.
//!
//! [`tune_malloc`] runs once, before the heavy work starts, in every process that runs
//! models (the executor, the embedded cluster). It does two things:
//!
//! - **Arenas.** glibc gives a thread that finds its heap locked a new arena, up to eight
//!   per core, and every arena keeps the pages its threads freed. A featurizing process has
//!   many threads that allocate large buffers (Tokio workers decoding, libtorch's pool,
//!   Arrow batches), so its footprint grows with the arena count, not with the work:
//!   featurizing the 1,428 flowers on 2 cores peaked at 1,852 MB with glibc's default and
//!   1,453 MB with two arenas. The arenas are capped at the cores the process runs on;
//!   `MALLOC_ARENA_MAX` (or `glibc.malloc.arena_max` in `GLIBC_TUNABLES`) set by the
//!   operator wins, and `DLP_MALLOC_ARENAS` sets another cap (`0`: glibc's default).
//! - **Freed memory is kept for reuse.** A forward pass allocates and frees its activations
//!   (megabytes each) layer by layer, batch after batch. With glibc's default thresholds
//!   much of that memory went back to the kernel on free and came back as fresh pages, which
//!   the kernel faults in and zeroes (much of the 10% of the CPU a featurizing process spent in
//!   the kernel). Blocks under
//!   32 MiB now come from the arenas (`M_MMAP_THRESHOLD`), and an arena gives its free top
//!   back only beyond `DLP_MALLOC_KEEP_MB` (default 256; `M_TRIM_THRESHOLD`). The peak
//!   footprint stays about the same, since the memory kept is what the work used and reuses.
//!   `DLP_MALLOC_KEEP_MB=0` keeps glibc's own thresholds, and so does an operator's
//!   `MALLOC_MMAP_THRESHOLD_`, `MALLOC_TRIM_THRESHOLD_` or either in `GLIBC_TUNABLES`.

use std::sync::OnceLock;

/// What [`tune_malloc`] set: `None` where glibc's default (or the operator's) stays.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MallocTuning {
    /// The arena cap.
    pub arenas: Option<usize>,
    /// Freed memory an arena keeps before giving its top back, in MiB.
    pub keep_mb: Option<usize>,
}

/// Tunes glibc malloc for this process, once (see the module docs).
pub fn tune_malloc() -> MallocTuning {
    static SET: OnceLock<MallocTuning> = OnceLock::new();
    *SET.get_or_init(|| {
        let tuning = MallocTuning {
            arenas: cap_malloc_arenas(),
            keep_mb: keep_freed_memory(),
        };
        tracing::debug!(?tuning, "malloc tuned");
        tuning
    })
}

/// Blocks under this size come from the arenas, not from a mapping of their own: glibc's
/// largest default (`DEFAULT_MMAP_THRESHOLD_MAX` on 64-bit).
const MMAP_THRESHOLD: usize = 32 << 20;

fn keep_freed_memory() -> Option<usize> {
    let operator_set = std::env::var_os("MALLOC_MMAP_THRESHOLD_").is_some()
        || std::env::var_os("MALLOC_TRIM_THRESHOLD_").is_some()
        || std::env::var("GLIBC_TUNABLES")
            .is_ok_and(|t| t.contains("mmap_threshold") || t.contains("trim_threshold"));
    if operator_set {
        return None;
    }
    let keep_mb = setting(
        "DLP_MALLOC_KEEP_MB",
        "MiB of freed memory an arena keeps",
        256,
    )?;
    let trim = keep_mb.saturating_mul(1 << 20);
    let ok = set(M_MMAP_THRESHOLD, MMAP_THRESHOLD.min(trim)) && set(M_TRIM_THRESHOLD, trim);
    ok.then_some(keep_mb)
}

fn cap_malloc_arenas() -> Option<usize> {
    let operator_set = std::env::var_os("MALLOC_ARENA_MAX").is_some()
        || std::env::var("GLIBC_TUNABLES").is_ok_and(|t| t.contains("arena_max"));
    if operator_set {
        return None;
    }
    let cap = setting("DLP_MALLOC_ARENAS", "a number of arenas", cores())?;
    set(M_ARENA_MAX, cap).then_some(cap)
}

/// The number in `var`: `default` when unset (or not a number, with a warning), `None` for
/// 0 (glibc's default).
fn setting(var: &str, expected: &str, default: usize) -> Option<usize> {
    let Ok(value) = std::env::var(var) else {
        return Some(default);
    };
    match value.trim().parse::<usize>() {
        Ok(0) => None,
        Ok(n) => Some(n),
        Err(_) => {
            tracing::warn!(%value, "{var}: expected {expected} (0: glibc's default); using {default}");
            Some(default)
        }
    }
}

fn cores() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get())
}

// mallopt(3) parameters, from glibc's <malloc.h>.
const M_TRIM_THRESHOLD: std::ffi::c_int = -1;
const M_MMAP_THRESHOLD: std::ffi::c_int = -3;
const M_ARENA_MAX: std::ffi::c_int = -8;

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn set(param: std::ffi::c_int, value: usize) -> bool {
    unsafe extern "C" {
        fn mallopt(param: std::ffi::c_int, value: std::ffi::c_int) -> std::ffi::c_int;
    }
    let value = std::ffi::c_int::try_from(value).unwrap_or(std::ffi::c_int::MAX);
    // SAFETY: mallopt only sets a tunable of the allocator; it is safe to call at any time.
    unsafe { mallopt(param, value) == 1 }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn set(_param: std::ffi::c_int, _value: usize) -> bool {
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn malloc_is_tuned_once_and_reported() {
        // The test process sets none of the variables: on glibc, the arenas are capped at the
        // core count and arenas keep 256 MiB.
        let first = tune_malloc();
        assert_eq!(first, tune_malloc());
        let untouched = [
            "MALLOC_ARENA_MAX",
            "MALLOC_MMAP_THRESHOLD_",
            "MALLOC_TRIM_THRESHOLD_",
        ]
        .into_iter()
        .chain(["GLIBC_TUNABLES", "DLP_MALLOC_ARENAS", "DLP_MALLOC_KEEP_MB"])
        .all(|v| std::env::var_os(v).is_none());
        if cfg!(all(target_os = "linux", target_env = "gnu")) && untouched {
            assert_eq!(
                first,
                MallocTuning {
                    arenas: Some(cores()),
                    keep_mb: Some(256),
                }
            );
        }
    }
}
