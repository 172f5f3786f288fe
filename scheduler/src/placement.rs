//! GPU-aware task placement: Ballista's `DistributionPolicy` hook.
//!
//! Executors report their device class in their id (`gpu-…` or `cpu-…`, set by
//! `dlp-executor` from the device it resolved, or `--device-class`). Stages that run torch
//! operators go to GPU executors when any are registered, and to CPU executors when none
//! is; other stages go to CPU executors first and use GPU executors only when no CPU
//! executor has room. Within a class, each stage packs onto the executors with the most
//! free slots first (Ballista's default `bias` policy).

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use ballista_core::JobId;
use ballista_core::config::BallistaConfig;
use ballista_core::execution_plans::{RangeShuffleReaderExec, ShuffleReaderExec};
use ballista_core::serde::protobuf::{AvailableVcores, executor_status, job_status};
use ballista_core::serde::scheduler::TaskKey;
use ballista_scheduler::cluster::{BoundTask, ClusterState, DistributionPolicy};
use ballista_scheduler::state::execution_graph::{TaskDescription, create_task_info};
use ballista_scheduler::state::execution_stage::RunningStage;
use ballista_scheduler::state::task_manager::JobInfoCache;
use datafusion::physical_plan::ExecutionPlan;

/// What an executor or a stage needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DeviceClass {
    /// Plain CPU work / executor.
    Cpu,
    /// Torch work / an executor with a GPU.
    Gpu,
}

impl DeviceClass {
    /// The class an executor id announces (`gpu-…`); anything else is a CPU executor, so
    /// plain Ballista executors keep working.
    pub fn of_executor(executor_id: &str) -> Self {
        if executor_id.starts_with("gpu-") {
            Self::Gpu
        } else {
            Self::Cpu
        }
    }

    /// The class of a stage's plan.
    pub fn of_plan(plan: &Arc<dyn ExecutionPlan>) -> Self {
        if dlp_plugin::torch::plan_runs_torch(plan) {
            Self::Gpu
        } else {
            Self::Cpu
        }
    }

    /// Lower-case name, as in ids, metrics and logs.
    pub fn name(self) -> &'static str {
        match self {
            Self::Cpu => "cpu",
            Self::Gpu => "gpu",
        }
    }
}

impl fmt::Display for DeviceClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Which executor classes a stage may use, in order of preference.
pub fn allowed_classes(stage: DeviceClass, gpu_registered: bool) -> &'static [DeviceClass] {
    match (stage, gpu_registered) {
        (DeviceClass::Gpu, true) => &[DeviceClass::Gpu],
        (DeviceClass::Gpu, false) => &[DeviceClass::Cpu],
        (DeviceClass::Cpu, _) => &[DeviceClass::Cpu, DeviceClass::Gpu],
    }
}

/// One running stage's unassigned work, as the decision sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct StageDemand {
    /// Whether it runs torch.
    pub class: DeviceClass,
    /// Partitions not yet assigned.
    pub pending: usize,
    /// A stage whose input collapses to one partition: its whole queue is one task on one
    /// slot (as Ballista's own policies do).
    pub collapse: bool,
    /// At most this many partitions per task (`ballista.max_partitions_per_task`).
    pub max_per_task: usize,
}

/// Free slots of one executor.
#[derive(Debug, Clone, PartialEq)]
pub struct Slots {
    /// The executor's class.
    pub class: DeviceClass,
    /// Free vcores.
    pub free: u32,
}

/// One task to launch: `partitions` of stage `stage` on executor `executor`, using
/// `vcores` of its slots.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// Index into the stages.
    pub stage: usize,
    /// Index into the executors.
    pub executor: usize,
    /// Partitions of the stage's queue.
    pub partitions: usize,
    /// Slots used.
    pub vcores: u32,
}

/// The placement decision: which stage's partitions go to which executor. Torch stages are
/// served first (so that CPU stages never take GPU slots that torch work is waiting for),
/// then the others; within a class, executors with the most free slots first.
/// `slots[i].free` is decremented by what is granted.
pub fn assign(stages: &[StageDemand], slots: &mut [Slots], gpu_registered: bool) -> Vec<Grant> {
    let mut grants = Vec::new();
    let mut order: Vec<usize> = (0..slots.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(slots[i].free));
    for pass in [DeviceClass::Gpu, DeviceClass::Cpu] {
        for (s, stage) in stages.iter().enumerate().filter(|(_, s)| s.class == pass) {
            let mut left = stage.pending;
            for &class in allowed_classes(stage.class, gpu_registered) {
                let candidates: Vec<usize> = order
                    .iter()
                    .copied()
                    .filter(|&e| slots[e].class == class)
                    .collect();
                for e in candidates {
                    while left > 0 && slots[e].free > 0 {
                        let (partitions, vcores) = if stage.collapse {
                            (left, 1)
                        } else {
                            let n = left.min(slots[e].free as usize).min(stage.max_per_task);
                            (n, n as u32)
                        };
                        slots[e].free -= vcores;
                        left -= partitions;
                        grants.push(Grant {
                            stage: s,
                            executor: e,
                            partitions,
                            vcores,
                        });
                    }
                }
            }
        }
    }
    grants
}

/// The policy installed in `dlp-scheduler` (`TaskDistributionPolicy::Custom`).
pub struct DevicePlacement {
    cluster: Arc<dyn ClusterState>,
    /// Tasks bound per class since start (for metrics and tests).
    bound: [AtomicU64; 2],
}

impl fmt::Debug for DevicePlacement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DevicePlacement").finish_non_exhaustive()
    }
}

impl DevicePlacement {
    /// A policy reading registered executors from `cluster`.
    pub fn new(cluster: Arc<dyn ClusterState>) -> Self {
        Self {
            cluster,
            bound: [AtomicU64::new(0), AtomicU64::new(0)],
        }
    }

    /// Whether any live GPU executor is registered (busy or not).
    fn gpu_registered(&self) -> bool {
        self.cluster.executor_heartbeats().values().any(|h| {
            DeviceClass::of_executor(&h.executor_id) == DeviceClass::Gpu
                && matches!(
                    h.status.as_ref().and_then(|s| s.status.as_ref()),
                    Some(executor_status::Status::Active(_)) | None
                )
        })
    }
}

/// Ballista's rule (private upstream): a stage whose input collapses to one partition runs
/// its whole pending queue as one task.
fn input_collapses(plan: &Arc<dyn ExecutionPlan>) -> bool {
    fn walk(node: &Arc<dyn ExecutionPlan>) -> bool {
        if node.is::<ShuffleReaderExec>() || node.is::<RangeShuffleReaderExec>() {
            return false;
        }
        if node.properties().output_partitioning().partition_count() == 1 {
            return true;
        }
        match node.children().as_slice() {
            [child] => walk(child),
            _ => false,
        }
    }
    match plan.children().as_slice() {
        [child] => walk(child),
        _ => false,
    }
}

fn demand_of(stage: &RunningStage) -> StageDemand {
    let max_per_task = stage
        .session_config
        .options()
        .extensions
        .get::<BallistaConfig>()
        .map(|c| c.max_partitions_per_task())
        .filter(|&n| n > 0)
        .unwrap_or(usize::MAX);
    StageDemand {
        class: DeviceClass::of_plan(&stage.plan),
        pending: stage.pending.remaining(),
        collapse: input_collapses(&stage.plan),
        max_per_task,
    }
}

/// Takes `partitions` from the stage's queue and records the task, as Ballista's own
/// policies do.
fn bind(
    stage: &mut RunningStage,
    session_id: &str,
    job_id: &JobId,
    executor_id: &str,
    partitions: usize,
    vcores: u32,
) -> Option<BoundTask> {
    let ids = stage.pending.next_slice(partitions);
    if ids.is_empty() {
        return None;
    }
    let task_id = stage.task_infos.len();
    let task_attempt = ids
        .iter()
        .map(|&p| stage.task_failure_numbers[p])
        .max()
        .unwrap_or(0);
    let mut info = create_task_info(executor_id.to_string(), task_id);
    info.global_input_partition_ids = ids.clone();
    info.vcores_consumed = vcores;
    stage.task_infos.push(info);
    Some((
        executor_id.to_string(),
        TaskDescription {
            session_id: session_id.to_string(),
            key: TaskKey {
                job_id: job_id.clone(),
                stage_id: stage.stage_id,
                task_id,
            },
            stage_attempt_num: stage.stage_attempt_num,
            task_attempt,
            global_input_partition_ids: ids,
            vcores_consumed: vcores,
            plan: stage.plan.clone(),
            session_config: stage.session_config.clone(),
        },
    ))
}

#[async_trait]
impl DistributionPolicy for DevicePlacement {
    async fn bind_tasks(
        &self,
        mut budgets: Vec<&mut AvailableVcores>,
        running_jobs: Arc<HashMap<JobId, JobInfoCache>>,
    ) -> datafusion::error::Result<Vec<BoundTask>> {
        if budgets.iter().all(|b| b.vcores == 0) {
            return Ok(vec![]);
        }
        let running: Vec<(&JobId, &JobInfoCache)> = running_jobs
            .iter()
            .filter(|(_, j)| matches!(j.status, Some(job_status::Status::Running(_))))
            .collect();
        // 1. What is waiting: (job, stage id, demand), read under each graph's lock.
        let mut keys = Vec::new();
        let mut stages = Vec::new();
        for (job_id, job) in &running {
            let mut graph = job.execution_graph.write().await;
            let mut seen = vec![];
            while let Some(stage) = graph.fetch_running_stage(&seen) {
                seen.push(stage.stage_id);
                let demand = demand_of(stage);
                if demand.pending > 0 {
                    keys.push(((*job_id).clone(), stage.stage_id));
                    stages.push(demand);
                }
            }
        }
        if stages.is_empty() {
            return Ok(vec![]);
        }
        // 2. The decision.
        let mut slots: Vec<Slots> = budgets
            .iter()
            .map(|b| Slots {
                class: DeviceClass::of_executor(&b.executor_id),
                free: b.vcores,
            })
            .collect();
        let grants = assign(&stages, &mut slots, self.gpu_registered());
        // 3. Bind what was decided.
        let mut bound = Vec::with_capacity(grants.len());
        for (job_id, job) in &running {
            if !grants.iter().any(|g| &keys[g.stage].0 == *job_id) {
                continue;
            }
            let mut graph = job.execution_graph.write().await;
            let session_id = graph.session_id().to_string();
            let mut seen = vec![];
            while let Some(stage) = graph.fetch_running_stage(&seen) {
                let stage_id = stage.stage_id;
                seen.push(stage_id);
                for g in grants
                    .iter()
                    .filter(|g| &keys[g.stage].0 == *job_id && keys[g.stage].1 == stage_id)
                {
                    let budget = &mut budgets[g.executor];
                    let executor_id = budget.executor_id.clone();
                    if let Some(task) = bind(
                        stage,
                        &session_id,
                        job_id,
                        &executor_id,
                        g.partitions,
                        g.vcores,
                    ) {
                        budget.vcores = budget.vcores.saturating_sub(g.vcores);
                        let class = stages[g.stage].class;
                        self.bound[class as usize].fetch_add(1, Ordering::Relaxed);
                        tracing::debug!(
                            job = %job_id, stage = stage_id, executor = %executor_id,
                            partitions = task.1.global_input_partition_ids.len(),
                            %class, "task placed"
                        );
                        bound.push(task);
                    }
                }
            }
        }
        Ok(bound)
    }

    fn name(&self) -> &str {
        "dlp-device-placement"
    }
}

#[cfg(test)]
mod tests {
    use super::DeviceClass::{Cpu, Gpu};
    use super::*;

    fn stage(class: DeviceClass, pending: usize) -> StageDemand {
        StageDemand {
            class,
            pending,
            collapse: false,
            max_per_task: usize::MAX,
        }
    }

    fn slots(list: &[(DeviceClass, u32)]) -> Vec<Slots> {
        list.iter()
            .map(|&(class, free)| Slots { class, free })
            .collect()
    }

    /// Partitions granted per (stage, executor).
    fn table(grants: &[Grant]) -> Vec<(usize, usize, usize)> {
        let mut t: Vec<(usize, usize, usize)> = vec![];
        for g in grants {
            match t
                .iter_mut()
                .find(|(s, e, _)| *s == g.stage && *e == g.executor)
            {
                Some(row) => row.2 += g.partitions,
                None => t.push((g.stage, g.executor, g.partitions)),
            }
        }
        t.sort();
        t
    }

    #[test]
    fn executor_class_comes_from_the_id() {
        assert_eq!(DeviceClass::of_executor("gpu-dlp-executor-gpu-7f9c"), Gpu);
        assert_eq!(DeviceClass::of_executor("cpu-x"), Cpu);
        assert_eq!(DeviceClass::of_executor("5d1e-uuid"), Cpu);
        assert_eq!(DeviceClass::of_executor("gpux"), Cpu);
    }

    #[test]
    fn allowed_classes_table() {
        assert_eq!(allowed_classes(Gpu, true), &[Gpu]);
        assert_eq!(allowed_classes(Gpu, false), &[Cpu]);
        assert_eq!(allowed_classes(Cpu, true), &[Cpu, Gpu]);
        assert_eq!(allowed_classes(Cpu, false), &[Cpu, Gpu]);
    }

    #[test]
    fn torch_stages_go_to_gpu_executors_and_others_to_cpu_executors() {
        // executors: 0 = cpu (4 free), 1 = gpu (2 free)
        let mut s = slots(&[(Cpu, 4), (Gpu, 2)]);
        let grants = assign(&[stage(Gpu, 6), stage(Cpu, 3)], &mut s, true);
        // torch: 2 on the GPU executor, the other 4 wait (never on the CPU executor);
        // CPU stage: 3 on the CPU executor.
        assert_eq!(table(&grants), vec![(0, 1, 2), (1, 0, 3)]);
        assert_eq!((s[0].free, s[1].free), (1, 0));
    }

    #[test]
    fn busy_gpu_executors_make_torch_work_wait_not_fall_back() {
        let mut s = slots(&[(Cpu, 4), (Gpu, 0)]);
        let grants = assign(&[stage(Gpu, 3)], &mut s, true);
        assert!(grants.is_empty());
        assert_eq!(s[0].free, 4);
    }

    #[test]
    fn without_gpu_executors_torch_runs_on_cpu_executors() {
        let mut s = slots(&[(Cpu, 2), (Cpu, 3)]);
        let grants = assign(&[stage(Gpu, 4)], &mut s, false);
        // the executor with most free slots first
        assert_eq!(table(&grants), vec![(0, 0, 1), (0, 1, 3)]);
    }

    #[test]
    fn cpu_work_spills_onto_gpu_executors_only_when_cpu_executors_are_full() {
        let mut s = slots(&[(Cpu, 2), (Gpu, 4)]);
        let grants = assign(&[stage(Cpu, 2)], &mut s, true);
        assert_eq!(table(&grants), vec![(0, 0, 2)]);
        let mut s = slots(&[(Cpu, 2), (Gpu, 4)]);
        let grants = assign(&[stage(Cpu, 5)], &mut s, true);
        assert_eq!(table(&grants), vec![(0, 0, 2), (0, 1, 3)]);
        // only GPU executors registered: CPU stages still run
        let mut s = slots(&[(Gpu, 4)]);
        let grants = assign(&[stage(Cpu, 1)], &mut s, true);
        assert_eq!(table(&grants), vec![(0, 0, 1)]);
    }

    #[test]
    fn torch_work_is_served_before_cpu_work_on_gpu_slots() {
        // CPU stage listed first, CPU executors full: GPU slots still go to torch first.
        let mut s = slots(&[(Cpu, 0), (Gpu, 2)]);
        let grants = assign(&[stage(Cpu, 5), stage(Gpu, 1)], &mut s, true);
        assert_eq!(table(&grants), vec![(0, 1, 1), (1, 1, 1)]);
    }

    #[test]
    fn collapse_stages_take_their_whole_queue_on_one_slot() {
        let mut s = slots(&[(Cpu, 3)]);
        let mut st = stage(Cpu, 8);
        st.collapse = true;
        let grants = assign(&[st], &mut s, false);
        assert_eq!(
            grants,
            vec![Grant {
                stage: 0,
                executor: 0,
                partitions: 8,
                vcores: 1
            }]
        );
        assert_eq!(s[0].free, 2);
    }

    #[test]
    fn max_partitions_per_task_splits_tasks() {
        let mut s = slots(&[(Cpu, 4)]);
        let mut st = stage(Cpu, 4);
        st.max_per_task = 1;
        let grants = assign(&[st], &mut s, false);
        assert_eq!(grants.len(), 4);
        assert!(grants.iter().all(|g| g.partitions == 1 && g.vcores == 1));
    }
}
