//! The fine-tuning optimizers, on the driver, over flat f32 parameters: the update rules of
//! `torch.optim.SGD` (momentum, no dampening), `Adam` and `AdamW`, written out so that a
//! PyTorch loop with the same hyperparameters gives the same weights; and the learning-rate
//! schedules (constant, cosine over all steps, step decay per epochs).

use serde::{Deserialize, Serialize};

use super::tensors::NamedTensors;

/// `optimizer`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OptimizerKind {
    /// SGD with `momentum` (0 for plain SGD) and L2 `weightDecay`.
    Sgd,
    /// Adam with L2 `weightDecay` added to the gradient.
    Adam,
    /// AdamW: decoupled `weightDecay`.
    #[default]
    Adamw,
}

/// `schedule`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Schedule {
    /// The learning rate throughout.
    #[default]
    Constant,
    /// Cosine annealing from the learning rate to 0 over all steps of the fit.
    Cosine,
    /// Multiplied by `gamma` every `stepEpochs` epochs.
    Step,
}

impl Schedule {
    /// The rate at `step` (0-based, over the whole fit) of `total` steps, in `epoch`.
    pub fn rate(
        self,
        lr: f64,
        step: u64,
        total: u64,
        epoch: usize,
        step_epochs: usize,
        gamma: f64,
    ) -> f64 {
        match self {
            Self::Constant => lr,
            Self::Cosine => {
                let t = step as f64 / total.max(1) as f64;
                lr * 0.5 * (1.0 + (std::f64::consts::PI * t).cos())
            }
            Self::Step => lr * gamma.powi((epoch / step_epochs.max(1)) as i32),
        }
    }
}

const BETA1: f64 = 0.9;
const BETA2: f64 = 0.999;
const EPS: f64 = 1e-8;

/// An optimizer and its state (one buffer per parameter array).
#[derive(Debug, Clone, PartialEq)]
pub struct Optimizer {
    pub kind: OptimizerKind,
    pub momentum: f64,
    pub weight_decay: f64,
    /// Steps taken.
    pub steps: u64,
    /// SGD's momentum buffers, or Adam's first moments.
    first: Vec<Vec<f32>>,
    /// Adam's second moments.
    second: Vec<Vec<f32>>,
}

impl Optimizer {
    /// A fresh optimizer for parameters of `sizes`.
    pub fn new(kind: OptimizerKind, momentum: f64, weight_decay: f64, sizes: &[usize]) -> Self {
        let zeros = || sizes.iter().map(|&n| vec![0f32; n]).collect::<Vec<_>>();
        Self {
            kind,
            momentum,
            weight_decay,
            steps: 0,
            first: zeros(),
            second: if kind == OptimizerKind::Sgd {
                vec![]
            } else {
                zeros()
            },
        }
    }

    /// One update of `params` by the mean gradient `grads` at rate `lr`.
    pub fn step(&mut self, params: &mut [Vec<f32>], grads: &[Vec<f32>], lr: f64) {
        self.steps += 1;
        let t = self.steps as i32;
        let wd = self.weight_decay as f32;
        match self.kind {
            OptimizerKind::Sgd => {
                let mu = self.momentum as f32;
                for ((p, g), buf) in params.iter_mut().zip(grads).zip(&mut self.first) {
                    for i in 0..p.len() {
                        let mut d = g[i];
                        if wd != 0.0 {
                            d += wd * p[i];
                        }
                        if mu != 0.0 {
                            // torch: the buffer starts as the first gradient.
                            buf[i] = if t == 1 { d } else { mu * buf[i] + d };
                            d = buf[i];
                        }
                        p[i] -= lr as f32 * d;
                    }
                }
            }
            OptimizerKind::Adam | OptimizerKind::Adamw => {
                let decoupled = self.kind == OptimizerKind::Adamw;
                let bc1 = 1.0 - BETA1.powi(t);
                let bc2 = 1.0 - BETA2.powi(t);
                let step_size = (lr / bc1) as f32;
                let bc2_sqrt = bc2.sqrt() as f32;
                let (b1, b2, eps) = (BETA1 as f32, BETA2 as f32, EPS as f32);
                for (((p, g), m), v) in params
                    .iter_mut()
                    .zip(grads)
                    .zip(&mut self.first)
                    .zip(&mut self.second)
                {
                    for i in 0..p.len() {
                        let mut d = g[i];
                        if decoupled {
                            p[i] *= 1.0 - lr as f32 * wd;
                        } else if wd != 0.0 {
                            d += wd * p[i];
                        }
                        m[i] = b1 * m[i] + (1.0 - b1) * d;
                        v[i] = b2 * v[i] + (1.0 - b2) * d * d;
                        let denom = v[i].sqrt() / bc2_sqrt + eps;
                        p[i] -= step_size * m[i] / denom;
                    }
                }
            }
        }
    }

    /// The state as arrays named after the parameters (`first.<name>`, `second.<name>`).
    pub fn save_into(&self, layout: &NamedTensors, out: &mut NamedTensors) {
        for (i, (name, shape)) in layout.names.iter().zip(&layout.shapes).enumerate() {
            out.push(
                format!("first.{name}"),
                shape.clone(),
                self.first[i].clone(),
            );
            if let Some(s) = self.second.get(i) {
                out.push(format!("second.{name}"), shape.clone(), s.clone());
            }
        }
        out.metadata
            .insert("optimizer_steps".into(), self.steps.to_string());
    }

    /// Restores the state [`save_into`](Self::save_into) wrote; false when `saved` lacks it.
    pub fn restore(&mut self, layout: &NamedTensors, saved: &NamedTensors) -> bool {
        let Some(steps) = saved
            .metadata
            .get("optimizer_steps")
            .and_then(|s| s.parse().ok())
        else {
            return false;
        };
        for (i, name) in layout.names.iter().enumerate() {
            let Some(f) = saved.get(&format!("first.{name}")) else {
                return false;
            };
            if f.len() != self.first[i].len() {
                return false;
            }
            self.first[i] = f.to_vec();
            if let Some(s) = self.second.get_mut(i) {
                let Some(saved) = saved.get(&format!("second.{name}")) else {
                    return false;
                };
                *s = saved.to_vec();
            }
        }
        self.steps = steps;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sgd_momentum_follows_torch() {
        // torch.optim.SGD([p], lr=0.1, momentum=0.9, weight_decay=0.01), p=1, grads 1 then 2:
        // step 1: d = 1 + 0.01 = 1.01, buf = 1.01, p = 1 - 0.101 = 0.899
        // step 2: d = 2 + 0.00899 = 2.00899, buf = 0.909 + 2.00899 = 2.91799, p = 0.607201
        let mut o = Optimizer::new(OptimizerKind::Sgd, 0.9, 0.01, &[1]);
        let mut p = vec![vec![1.0f32]];
        o.step(&mut p, &[vec![1.0]], 0.1);
        assert!((p[0][0] - 0.899).abs() < 1e-6);
        o.step(&mut p, &[vec![2.0]], 0.1);
        assert!((p[0][0] - 0.607201).abs() < 1e-6, "{}", p[0][0]);
    }

    #[test]
    fn adamw_first_step_moves_by_the_rate() {
        // Adam's first step is lr * g / (|g| + eps): the rate, whatever the gradient's size;
        // AdamW first shrinks p by lr * wd.
        let mut o = Optimizer::new(OptimizerKind::Adamw, 0.0, 0.1, &[2]);
        let mut p = vec![vec![1.0f32, -2.0]];
        o.step(&mut p, &[vec![5.0, -0.001]], 0.01);
        assert!((p[0][0] - (1.0 * 0.999 - 0.01)).abs() < 1e-5, "{:?}", p);
        assert!((p[0][1] - (-2.0 * 0.999 + 0.01 * 0.001 / (0.001 + 1e-8))).abs() < 1e-5);
        let mut layout = NamedTensors::default();
        layout.push("w", vec![2], vec![0.0; 2]);
        let mut saved = NamedTensors::default();
        o.save_into(&layout, &mut saved);
        let mut back = Optimizer::new(OptimizerKind::Adamw, 0.0, 0.1, &[2]);
        assert!(back.restore(&layout, &saved));
        assert_eq!(back, o);
    }

    #[test]
    fn schedules() {
        assert_eq!(Schedule::Constant.rate(0.1, 5, 10, 1, 1, 0.5), 0.1);
        assert!((Schedule::Cosine.rate(0.1, 5, 10, 0, 1, 0.5) - 0.05).abs() < 1e-12);
        assert!((Schedule::Step.rate(0.1, 0, 10, 3, 2, 0.5) - 0.05).abs() < 1e-12);
    }
}
