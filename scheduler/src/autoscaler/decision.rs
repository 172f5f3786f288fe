//! The autoscaler's decision, a pure function of what the scheduler sees, the pool's
//! settings and the time since things happened (tested with tables below).

use std::time::Duration;

use crate::config::PoolConfig;

/// Work of one device class, read from the scheduler's running jobs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Observation {
    /// Partitions of resolved or running stages of this class not yet assigned.
    pub pending: usize,
    /// Slots used by running tasks of this class (wherever they run).
    pub running: usize,
    /// Stages of this class waiting for their inputs (work that is coming).
    pub upcoming: usize,
    /// Tasks of any class running on this pool's executors (they must not be killed).
    pub running_on_pool: usize,
}

impl Observation {
    /// Anything for this pool to do, or being done on it.
    pub fn busy(&self) -> bool {
        self.pending + self.running + self.upcoming + self.running_on_pool > 0
    }

    /// Executors this work asks for: enough slots for what is pending and running, and one
    /// as soon as a stage of this class is coming.
    pub fn executors_needed(&self, tasks_per_executor: u32) -> u32 {
        let tasks = (self.pending + self.running) as u64;
        let per = u64::from(tasks_per_executor.max(1));
        let n = tasks.div_ceil(per);
        let n = if self.upcoming > 0 { n.max(1) } else { n };
        u32::try_from(n).unwrap_or(u32::MAX)
    }
}

/// What to do with one pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Leave the replicas as they are.
    Keep,
    /// Set the Deployment's replicas.
    Scale {
        /// New replica count.
        to: u32,
        /// Why (logged, and kept in the scheduler's status).
        reason: String,
    },
}

/// Timing inputs: how long since this pool's replicas last changed (by us), and how long
/// its class has had nothing to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Clock {
    /// None: never changed by this scheduler.
    pub since_change: Option<Duration>,
    /// Zero while busy.
    pub idle_for: Duration,
}

/// Decides one pool's replicas.
///
/// - Up as soon as work of the pool's class is pending or coming: from zero at once, later
///   steps after the cool-down (so new executors can register before more are added).
/// - Down to `minReplicas` only when the class has had nothing pending, running or coming
///   and nothing runs on the pool's executors for `idleSeconds`, and the cool-down has
///   passed: no running task is killed by a scale-down (executors also drain on SIGTERM).
/// - Always within `[minReplicas, maxReplicas]`; a pool with `maxReplicas: 0` is not
///   managed.
pub fn decide(
    pool: &PoolConfig,
    cooldown: Duration,
    obs: &Observation,
    current: u32,
    clock: Clock,
) -> Action {
    if pool.max_replicas == 0 {
        return Action::Keep;
    }
    if current < pool.min_replicas {
        return Action::Scale {
            to: pool.min_replicas,
            reason: format!("below minReplicas {}", pool.min_replicas),
        };
    }
    if current > pool.max_replicas {
        return Action::Scale {
            to: pool.max_replicas,
            reason: format!("above maxReplicas {}", pool.max_replicas),
        };
    }
    let cooled = clock.since_change.is_none_or(|d| d >= cooldown);
    let wanted = obs
        .executors_needed(pool.tasks_per_executor)
        .clamp(pool.min_replicas, pool.max_replicas);
    if wanted > current {
        if current == 0 || cooled {
            return Action::Scale {
                to: wanted,
                reason: format!(
                    "{} pending, {} running, {} stages coming",
                    obs.pending, obs.running, obs.upcoming
                ),
            };
        }
        return Action::Keep;
    }
    let idle_enough = !obs.busy() && clock.idle_for >= Duration::from_secs(pool.idle_seconds);
    if current > pool.min_replicas && idle_enough && cooled {
        return Action::Scale {
            to: pool.min_replicas,
            reason: format!("idle for {}s", clock.idle_for.as_secs()),
        };
    }
    Action::Keep
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(min: u32, max: u32, per: u32, idle: u64) -> PoolConfig {
        PoolConfig {
            deployment: "d".into(),
            min_replicas: min,
            max_replicas: max,
            tasks_per_executor: per,
            idle_seconds: idle,
        }
    }

    fn obs(pending: usize, running: usize, upcoming: usize, on_pool: usize) -> Observation {
        Observation {
            pending,
            running,
            upcoming,
            running_on_pool: on_pool,
        }
    }

    fn clock(since_change: Option<u64>, idle_for: u64) -> Clock {
        Clock {
            since_change: since_change.map(Duration::from_secs),
            idle_for: Duration::from_secs(idle_for),
        }
    }

    fn to(n: u32) -> Option<u32> {
        Some(n)
    }

    #[test]
    fn decision_table() {
        let gpu = pool(0, 2, 1, 300);
        let cpu = pool(1, 4, 4, 120);
        let off = pool(0, 0, 1, 0);
        let cool = Duration::from_secs(30);
        // (pool, observation, current replicas, clock, expected replicas or None = keep)
        #[rustfmt::skip]
        type Row<'a> = (&'a str, &'a PoolConfig, Observation, u32, Clock, Option<u32>);
        let rows: Vec<Row> = vec![
            (
                "gpu idle at zero stays at zero",
                &gpu,
                obs(0, 0, 0, 0),
                0,
                clock(None, 9999),
                None,
            ),
            (
                "torch work pending: up from zero at once",
                &gpu,
                obs(5, 0, 0, 0),
                0,
                clock(Some(1), 0),
                to(2),
            ),
            (
                "one torch task: one executor",
                &gpu,
                obs(1, 0, 0, 0),
                0,
                clock(None, 0),
                to(1),
            ),
            (
                "torch stage coming: one executor",
                &gpu,
                obs(0, 0, 1, 0),
                0,
                clock(None, 0),
                to(1),
            ),
            (
                "more work, cooling down: wait",
                &gpu,
                obs(3, 1, 0, 1),
                1,
                clock(Some(10), 0),
                None,
            ),
            (
                "more work, cooled down: up to max",
                &gpu,
                obs(3, 1, 0, 1),
                1,
                clock(Some(31), 0),
                to(2),
            ),
            (
                "running, nothing pending: keep",
                &gpu,
                obs(0, 2, 0, 2),
                2,
                clock(Some(500), 0),
                None,
            ),
            (
                "idle but not long enough: keep",
                &gpu,
                obs(0, 0, 0, 0),
                2,
                clock(Some(500), 299),
                None,
            ),
            (
                "idle long enough: back to zero",
                &gpu,
                obs(0, 0, 0, 0),
                2,
                clock(Some(500), 300),
                to(0),
            ),
            (
                "idle, tasks of another class on it: keep",
                &gpu,
                obs(0, 0, 0, 1),
                1,
                clock(Some(500), 400),
                None,
            ),
            (
                "idle, just changed: keep",
                &gpu,
                obs(0, 0, 0, 0),
                1,
                clock(Some(5), 400),
                None,
            ),
            (
                "cpu below min: up to min",
                &cpu,
                obs(0, 0, 0, 0),
                0,
                clock(None, 0),
                to(1),
            ),
            (
                "cpu 9 tasks, 4 per executor: 3",
                &cpu,
                obs(7, 2, 0, 2),
                1,
                clock(None, 0),
                to(3),
            ),
            (
                "cpu 100 tasks: capped at max",
                &cpu,
                obs(100, 0, 0, 0),
                1,
                clock(None, 0),
                to(4),
            ),
            (
                "cpu within capacity: keep",
                &cpu,
                obs(2, 2, 0, 2),
                1,
                clock(None, 0),
                None,
            ),
            (
                "cpu idle: down to min, not zero",
                &cpu,
                obs(0, 0, 0, 0),
                4,
                clock(Some(200), 120),
                to(1),
            ),
            (
                "above max after a config change",
                &cpu,
                obs(0, 0, 0, 0),
                6,
                clock(None, 0),
                to(4),
            ),
            (
                "pool disabled (max 0): not managed",
                &off,
                obs(9, 0, 0, 0),
                3,
                clock(None, 0),
                None,
            ),
        ];
        for (name, pool, obs, current, clock, want) in rows {
            let got = match decide(pool, cool, &obs, current, clock) {
                Action::Keep => None,
                Action::Scale { to, .. } => Some(to),
            };
            assert_eq!(got, want, "{name}");
        }
    }

    #[test]
    fn cpu_only_work_never_asks_for_gpu_executors() {
        // The GPU pool's observation counts only torch stages: CPU work leaves it empty.
        let gpu = pool(0, 2, 1, 300);
        let none = Observation::default();
        assert_eq!(
            decide(&gpu, Duration::ZERO, &none, 0, clock(None, 0)),
            Action::Keep
        );
    }
}
