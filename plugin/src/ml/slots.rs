//! Task slots of the cluster this process schedules for: the sum of its executors' vcores.
//! An iterative job (a loss evaluation) is planned as that many tasks, so that it runs in
//! one wave: Ballista packs up to an executor's free vcores of a stage's partitions into
//! one task, and five partitions on two slots ran as three waves of tasks (2 + 2 + 1), each
//! wave a scheduling round. The scheduler (`dlp-scheduler` and the embedded cluster)
//! refreshes the figure every second; a process that schedules nothing has none, and the
//! planners fall back to the session's `target_partitions`.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use ballista_scheduler::state::SchedulerState;
use datafusion_proto::protobuf::{LogicalPlanNode, PhysicalPlanNode};

/// The scheduler state whose executors are counted.
pub type State = SchedulerState<LogicalPlanNode, PhysicalPlanNode>;

static VCORES: AtomicUsize = AtomicUsize::new(0);

/// The cluster's task slots, when this process schedules for a cluster with executors.
pub fn cluster_vcores() -> Option<usize> {
    match VCORES.load(Ordering::Relaxed) {
        0 => None,
        n => Some(n),
    }
}

/// Reads the registered executors' vcores once.
pub async fn refresh(state: &State) {
    if let Ok(executors) = state.executor_manager.get_executors_state().await {
        let total: usize = executors
            .iter()
            .map(|(m, _, _)| m.specification.vcores as usize)
            .sum();
        VCORES.store(total, Ordering::Relaxed);
    }
}

/// Refreshes the figure every second (after [`refresh`] at start-up) until the scheduler
/// state is dropped; the loop holds no reference that would keep it alive.
pub fn watch(state: &Arc<State>) {
    let state = Arc::downgrade(state);
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let Some(state) = state.upgrade() else { break };
            refresh(&state).await;
        }
    });
}

/// Tasks for an iterative job of `units` units of work: one per slot of the cluster (or
/// `target_partitions` where the slots are unknown), never more than `target_partitions` or
/// the units.
pub fn tasks_for(units: usize, target_partitions: usize) -> usize {
    let slots = cluster_vcores().unwrap_or(target_partitions);
    slots.min(target_partitions).min(units).max(1)
}
