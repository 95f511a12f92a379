//! AdamW (Loshchilov & Hutter) with decoupled weight decay, written on tensors so that its state
//! (first and second moments, step count) can be saved and restored exactly — LibTorch's C++ optimiser
//! that tch wraps exposes no state. Norm weights and biases do not decay. Matches `torch.optim.AdamW`.
use std::collections::HashMap;

use tch::{nn, Kind, Tensor};

use crate::{Error, Result};

/// One optimised variable and its moments.
#[derive(Debug)]
struct Parameter {
    name: String,
    tensor: Tensor,
    decay: bool,
    /// Multiplies the step's learning rate for this variable.
    lr_scale: f64,
    /// The rank that updates this variable and holds its moments (ZeRO-1); 0 unsharded.
    owner: usize,
    /// Whether this rank holds the moments (empty tensors otherwise).
    owned: bool,
    exp_avg: Tensor,
    exp_avg_sq: Tensor,
}

/// The moments of one variable as a sharded optimiser describes them.
#[derive(Debug)]
pub struct Moments {
    /// The variable's name.
    pub name: String,
    /// Its shape (the moments have the same).
    pub shape: Vec<i64>,
    /// `exp_avg` and `exp_avg_sq`, on the rank that owns the variable.
    pub values: Option<(Tensor, Tensor)>,
}

/// AdamW over the trainable variables of one VarStore.
#[derive(Debug)]
pub struct AdamW {
    beta1: f64,
    beta2: f64,
    eps: f64,
    weight_decay: f64,
    /// Steps taken.
    step: i64,
    parameters: Vec<Parameter>,
}

/// Whether a variable decays: not norms, not biases.
#[expect(
    clippy::case_sensitive_file_extension_comparisons,
    reason = "a variable name, not a file"
)]
pub fn decays(name: &str) -> bool {
    !(name.contains("norm") || name.ends_with(".bias"))
}

impl AdamW {
    /// Optimises every variable of `vs` that requires a gradient, in name order.
    pub fn new(vs: &nn::VarStore, beta1: f64, beta2: f64, eps: f64, weight_decay: f64) -> Self {
        let mut variables: Vec<(String, Tensor)> = vs
            .variables()
            .into_iter()
            .filter(|(_, t)| t.requires_grad())
            .collect();
        variables.sort_by(|a, b| a.0.cmp(&b.0));
        let parameters = variables
            .into_iter()
            .map(|(name, tensor)| Parameter {
                decay: decays(&name),
                lr_scale: 1.0,
                owner: 0,
                owned: true,
                exp_avg: tensor.zeros_like().to_kind(Kind::Float),
                exp_avg_sq: tensor.zeros_like().to_kind(Kind::Float),
                name,
                tensor,
            })
            .collect();
        Self {
            beta1,
            beta2,
            eps,
            weight_decay,
            step: 0,
            parameters,
        }
    }

    /// Scales the learning rate (and so the decoupled decay) of each variable by `scale(name)`.
    pub fn with_lr_scale(mut self, scale: impl Fn(&str) -> f64) -> Self {
        for p in &mut self.parameters {
            p.lr_scale = scale(&p.name);
        }
        self
    }

    /// Shards the optimiser state over `world` ranks (ZeRO-1): each variable gets one owner (the
    /// largest first, each to the least loaded rank, ties to the lower rank), which alone keeps its
    /// moments and updates it; the others drop their moments. Every rank computes the same owners.
    pub fn shard(&mut self, rank: usize, world: usize) {
        let mut order: Vec<usize> = (0..self.parameters.len()).collect();
        order.sort_by_key(|&i| std::cmp::Reverse(self.parameters[i].tensor.numel()));
        let mut load = vec![0usize; world.max(1)];
        for i in order {
            let owner = (0..load.len()).min_by_key(|&r| (load[r], r)).unwrap_or(0);
            load[owner] += self.parameters[i].tensor.numel();
            let p = &mut self.parameters[i];
            p.owner = owner;
            p.owned = owner == rank;
            if !p.owned {
                p.exp_avg = Tensor::zeros([0], (Kind::Float, p.tensor.device()));
                p.exp_avg_sq = Tensor::zeros([0], (Kind::Float, p.tensor.device()));
            }
        }
    }

    /// The optimised variables with their owners, in name order.
    pub fn owners(&self) -> Vec<(Tensor, usize)> {
        self.parameters
            .iter()
            .map(|p| (p.tensor.shallow_clone(), p.owner))
            .collect()
    }

    /// The optimised variables, in name order.
    pub fn tensors(&self) -> Vec<Tensor> {
        self.parameters
            .iter()
            .map(|p| p.tensor.shallow_clone())
            .collect()
    }

    /// Bytes of optimiser state this rank holds (both moments of the variables it owns).
    pub fn state_bytes(&self) -> i64 {
        self.parameters
            .iter()
            .filter(|p| p.owned)
            .map(|p| 2 * 4 * p.tensor.numel() as i64)
            .sum()
    }

    /// The moments of the variables `owner` owns, in name order (the tensors only on the owner).
    pub fn moments_of(&self, owner: usize) -> Vec<Moments> {
        self.parameters
            .iter()
            .filter(|p| p.owner == owner)
            .map(|p| Moments {
                name: p.name.clone(),
                shape: p.tensor.size(),
                values: p
                    .owned
                    .then(|| (p.exp_avg.shallow_clone(), p.exp_avg_sq.shallow_clone())),
            })
            .collect()
    }

    /// Number of optimised values.
    pub fn parameter_count(&self) -> i64 {
        self.parameters
            .iter()
            .map(|p| p.tensor.numel() as i64)
            .sum()
    }

    /// Steps taken so far.
    pub fn steps_taken(&self) -> i64 {
        self.step
    }

    /// Clears the gradients of every optimised variable.
    pub fn zero_grad(&mut self) {
        for p in &mut self.parameters {
            let mut grad = p.tensor.grad();
            if grad.defined() {
                let _ = grad.detach_().zero_();
            }
        }
    }

    /// Global L2 norm of the gradients; scales them to at most `max` when `max > 0`. Returns the norm
    /// before scaling.
    pub fn clip_grad_norm(&mut self, max: f64) -> f64 {
        self.clip_grad_norm_by(max, Ok).unwrap_or(0.0)
    }

    /// As [`AdamW::clip_grad_norm`] over the gradients of the variables this rank owns, where
    /// `sum` turns this rank's sum of squares into the sum over all ranks (ZeRO-1: each rank holds
    /// the reduced gradients of its own variables only).
    pub fn clip_grad_norm_by(
        &mut self,
        max: f64,
        sum: impl FnOnce(f64) -> Result<f64>,
    ) -> Result<f64> {
        tch::no_grad(|| {
            let grads: Vec<Tensor> = self
                .parameters
                .iter()
                .filter(|p| p.owned)
                .map(|p| p.tensor.grad())
                .filter(tch::Tensor::defined)
                .collect();
            let squares: Vec<Tensor> = grads
                .iter()
                .map(|g| g.to_kind(Kind::Float).pow_tensor_scalar(2).sum(Kind::Float))
                .collect();
            let local = if squares.is_empty() {
                0.0
            } else {
                Tensor::stack(&squares, 0)
                    .sum(Kind::Float)
                    .double_value(&[])
            };
            let norm = sum(local)?.sqrt();
            if max > 0.0 && norm > max {
                let scale = max / (norm + 1e-6);
                for mut g in grads {
                    let _ = g.g_mul_scalar_(scale);
                }
            }
            Ok(norm)
        })
    }

    /// One update at learning rate `lr`.
    pub fn step(&mut self, lr: f64) {
        self.step += 1;
        let t = self.step as i32;
        let bias1 = 1.0 - self.beta1.powi(t);
        let bias2 = 1.0 - self.beta2.powi(t);
        tch::no_grad(|| {
            for p in &mut self.parameters {
                let grad = p.tensor.grad();
                if !p.owned || !grad.defined() {
                    continue;
                }
                let grad = grad.to_kind(Kind::Float);
                let lr = lr * p.lr_scale;
                if p.decay && self.weight_decay > 0.0 {
                    let _ = p.tensor.g_mul_scalar_(1.0 - lr * self.weight_decay);
                }
                let _ = p
                    .exp_avg
                    .g_mul_scalar_(self.beta1)
                    .g_add_(&(&grad * (1.0 - self.beta1)));
                let _ = p
                    .exp_avg_sq
                    .g_mul_scalar_(self.beta2)
                    .g_add_(&(&grad * &grad * (1.0 - self.beta2)));
                let denominator = (p.exp_avg_sq.sqrt() / bias2.sqrt()) + self.eps;
                let update = (&p.exp_avg / denominator) * (lr / bias1);
                let _ = p.tensor.g_sub_(&update.to_kind(p.tensor.kind()));
            }
        });
    }

    /// The state as named tensors (`exp_avg.NAME`, `exp_avg_sq.NAME`) plus the step count (of the
    /// variables this rank owns, when sharded).
    pub fn state(&self) -> (Vec<(String, Tensor)>, i64) {
        let mut out = Vec::with_capacity(self.parameters.len() * 2);
        for p in self.parameters.iter().filter(|p| p.owned) {
            out.push((format!("exp_avg.{}", p.name), p.exp_avg.shallow_clone()));
            out.push((
                format!("exp_avg_sq.{}", p.name),
                p.exp_avg_sq.shallow_clone(),
            ));
        }
        (out, self.step)
    }

    /// Restores a state written by [`AdamW::state`] (unsharded); every moment must be present. A
    /// sharded optimiser keeps the moments of the variables it owns.
    pub fn load_state(
        &mut self,
        tensors: Vec<(String, Tensor)>,
        step: i64,
        what: &str,
    ) -> Result<()> {
        let mut by_name: HashMap<String, Tensor> = tensors.into_iter().collect();
        for p in self.parameters.iter_mut().filter(|p| p.owned) {
            for (prefix, target) in [
                ("exp_avg", &mut p.exp_avg),
                ("exp_avg_sq", &mut p.exp_avg_sq),
            ] {
                let key = format!("{prefix}.{}", p.name);
                let value = by_name.remove(&key).ok_or_else(|| Error::File {
                    path: what.into(),
                    reason: format!("optimiser state has no {key}"),
                })?;
                if value.size() != target.size() {
                    return Err(Error::File {
                        path: what.into(),
                        reason: format!(
                            "{key} has shape {:?}, expected {:?}",
                            value.size(),
                            target.size()
                        ),
                    });
                }
                tch::no_grad(|| target.copy_(&value.to_device(target.device())));
            }
        }
        self.step = step;
        Ok(())
    }
}
