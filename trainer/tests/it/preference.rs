//! Preference objectives against TRL (`tests/fixtures/dpo/generate.py`): DPO's four losses from
//! `trl.DPOTrainer` and SimPO from `trl.experimental.cpo.CPOTrainer`, on the batch TRL built — loss,
//! log-probabilities, rewards and the gradients of the policy's weights; and the LoRA reference
//! taken from the same weights with the adapters off.
use std::collections::BTreeMap;

use dapt_core::PackedRow;
use dapt_trainer::tch::{Device, Kind, Tensor};
use dapt_trainer::weights::read_safetensors;
use dapt_trainer::{
    pair_terms, segment_logps, Batch, CausalLm, Objective, PreferenceLoss, ReferenceLogps,
    TrainOptions,
};

use super::{fixture, rng_lock};

fn load(path: &str) -> BTreeMap<String, Tensor> {
    read_safetensors(&fixture(path))
        .unwrap()
        .into_iter()
        .collect()
}

/// A sequence's ids and, per token, whether it is a response token.
type Sequence = (Vec<i64>, Vec<bool>);

fn ints(t: &Tensor) -> Vec<Vec<i64>> {
    Vec::<Vec<i64>>::try_from(t).unwrap()
}

fn scalar(t: &Tensor) -> f64 {
    t.double_value(&[0])
}

/// One row per pair: the chosen sequence, then the rejected one (`ids`, per token whether it is a
/// response token), padded to `width`.
fn pair_rows(pairs: &[(Sequence, Sequence)], width: usize) -> Vec<PackedRow> {
    pairs
        .iter()
        .map(|((chosen, chosen_mask), (rejected, rejected_mask))| {
            let mut input_ids: Vec<i32> =
                chosen.iter().chain(rejected).map(|&t| t as i32).collect();
            let mut loss_mask: Vec<bool> =
                chosen_mask.iter().chain(rejected_mask).copied().collect();
            input_ids.resize(width, 0);
            loss_mask.resize(width, false);
            PackedRow {
                input_ids,
                segment_lengths: vec![chosen.len() as i32, rejected.len() as i32],
                loss_mask,
                segment_sources: vec!["chosen".into(), "rejected".into()],
            }
        })
        .collect()
}

/// The sequence of row `r` where `keep` is set, and its response flags.
fn sequence(
    ids: &[Vec<i64>],
    keep: &[Vec<i64>],
    response: impl Fn(usize) -> bool,
    r: usize,
) -> Sequence {
    let mut out = (Vec::new(), Vec::new());
    for (t, (&id, &k)) in ids[r].iter().zip(&keep[r]).enumerate() {
        if k == 1 {
            out.0.push(id);
            out.1.push(response(t));
        }
    }
    out
}

/// The rows of a `DPOTrainer` fixture's batch (`input_ids`: chosen rows, then rejected ones).
fn dpo_rows(fixture: &BTreeMap<String, Tensor>) -> Vec<PackedRow> {
    let ids = ints(&fixture["input_ids"]);
    let completion = ints(&fixture["completion_mask"]);
    let attention = ints(&fixture["attention_mask"]);
    let pairs = ids.len() / 2;
    let side = |r: usize| sequence(&ids, &attention, |t| completion[r][t] == 1, r);
    pair_rows(
        &(0..pairs)
            .map(|p| (side(p), side(pairs + p)))
            .collect::<Vec<_>>(),
        2 * ids[0].len(),
    )
}

fn check(
    name: &str,
    options: &TrainOptions,
    rows: &[PackedRow],
    fixture: &BTreeMap<String, Tensor>,
) {
    let _guard = rng_lock();
    let (vs, policy) = CausalLm::load(&super::fixture("llama"), Device::Cpu, Kind::Float).unwrap();
    policy.set_training(true);
    let refs: Vec<&PackedRow> = rows.iter().collect();
    let reference = (options.objective == Objective::Dpo).then(|| {
        let (_rvs, model) =
            CausalLm::load(&super::fixture("dpo/reference"), Device::Cpu, Kind::Float).unwrap();
        ReferenceLogps::compute(&model, rows, 2, Device::Cpu)
            .unwrap()
            .for_rows(&refs, Device::Cpu)
            .unwrap()
    });
    let batch = Batch::from_rows_with(&refs, Device::Cpu, options.objective);
    let (logps, counts) = segment_logps(&policy, &batch);
    let terms = pair_terms(options, &logps, &counts, reference.as_ref()).unwrap();
    let loss = terms.losses.mean(Kind::Float);
    loss.backward();
    let metrics = terms.sums.finish();
    let close = |what: &str, ours: f64, theirs: f64, tolerance: f64| {
        assert!(
            (ours - theirs).abs() <= tolerance * (1.0 + theirs.abs()),
            "{name}: {what} is {ours}, TRL's {theirs}"
        );
    };
    for (key, ours) in [
        ("metric.logps.chosen", metrics.chosen_logps),
        ("metric.logps.rejected", metrics.rejected_logps),
        ("metric.rewards.chosen", metrics.chosen_rewards),
        ("metric.rewards.rejected", metrics.rejected_rewards),
        ("metric.rewards.margins", metrics.reward_margin),
        ("metric.rewards.accuracies", metrics.reward_accuracy),
    ] {
        close(key, ours, scalar(&fixture[key]), 1e-5);
    }
    close(
        "loss",
        loss.double_value(&[]),
        scalar(&fixture["loss"]),
        1e-5,
    );
    let variables = vs.variables();
    let mut compared = 0;
    for (key, theirs) in fixture {
        let Some(parameter) = key.strip_prefix("grad.") else {
            continue;
        };
        let ours = variables[parameter].grad();
        let difference = (&ours - theirs).abs().max().double_value(&[]);
        let scale = theirs.abs().max().double_value(&[]);
        assert!(scale > 0.0, "{name}: TRL's gradient of {parameter} is zero");
        assert!(
            difference <= 1e-5,
            "{name}: gradient of {parameter} differs from TRL's by {difference} (largest {scale})"
        );
        compared += 1;
    }
    assert_eq!(compared, 5, "{name}: gradients compared");
}

#[test]
fn dpo_losses_and_gradients_equal_trls() {
    for (loss, smoothing) in [
        (PreferenceLoss::Sigmoid, 0.0),
        (PreferenceLoss::Hinge, 0.0),
        (PreferenceLoss::Ipo, 0.0),
        (PreferenceLoss::Robust, 0.1),
    ] {
        let name = format!(
            "dpo_{}",
            serde_json::to_value(loss).unwrap().as_str().unwrap()
        );
        let fixture = load(&format!("dpo/{name}.safetensors"));
        let rows = dpo_rows(&fixture);
        let options = TrainOptions {
            objective: Objective::Dpo,
            beta: 0.3,
            loss,
            label_smoothing: smoothing,
            ..Default::default()
        };
        check(&name, &options, &rows, &fixture);
    }
}

#[test]
fn simpo_equals_trls_cpo_trainer() {
    let fixture = load("dpo/simpo.safetensors");
    let side = |name: &str| {
        let ids = ints(&fixture[&format!("{name}_input_ids")]);
        let labels = ints(&fixture[&format!("{name}_labels")]);
        let attention = ints(&fixture[&format!("{name}_attention_mask")]);
        (0..ids.len())
            .map(|r| sequence(&ids, &attention, |t| labels[r][t] != -100, r))
            .collect::<Vec<_>>()
    };
    let (chosen, rejected) = (side("chosen"), side("rejected"));
    let width = chosen
        .iter()
        .chain(&rejected)
        .map(|s| s.0.len())
        .max()
        .unwrap()
        * 2;
    let rows = pair_rows(&chosen.into_iter().zip(rejected).collect::<Vec<_>>(), width);
    let options = TrainOptions {
        objective: Objective::Simpo,
        beta: 0.3,
        simpo_gamma: 0.5,
        label_smoothing: 0.1,
        ..Default::default()
    };
    check("simpo", &options, &rows, &fixture);
}

/// With LoRA the reference is the same model with its adapters off: equal to the base loaded on
/// its own, and different from the adapted model.
#[test]
fn lora_reference_is_the_base_with_adapters_off() {
    let _guard = rng_lock();
    let fixture = load("dpo/dpo_sigmoid.safetensors");
    let rows = dpo_rows(&fixture);
    let refs: Vec<&PackedRow> = rows.iter().collect();
    let (_base_vs, base) =
        CausalLm::load(&super::fixture("llama"), Device::Cpu, Kind::Float).unwrap();
    let base_logps = ReferenceLogps::compute(&base, &rows, 8, Device::Cpu)
        .unwrap()
        .for_rows(&refs, Device::Cpu)
        .unwrap();
    let (vs, mut model) =
        CausalLm::load(&super::fixture("llama"), Device::Cpu, Kind::Float).unwrap();
    vs.variables().values().for_each(|v| {
        let _ = v.set_requires_grad(false);
    });
    let (_adapters, _) = super::attach_moved_lora(&mut model, 3);
    let reference = ReferenceLogps::compute(&model, &rows, 8, Device::Cpu)
        .unwrap()
        .for_rows(&refs, Device::Cpu)
        .unwrap();
    assert!(
        model.adapters_enabled(),
        "adapters are on again after the reference pass"
    );
    let difference = (&reference - &base_logps).abs().max().double_value(&[]);
    assert!(
        difference < 1e-5,
        "adapters-off reference differs from the base by {difference}"
    );
    let batch = Batch::from_rows_with(&refs, Device::Cpu, Objective::Dpo);
    let (adapted, _) = dapt_trainer::tch::no_grad(|| segment_logps(&model, &batch));
    let moved = (&adapted.to_kind(Kind::Double) - &base_logps)
        .abs()
        .max()
        .double_value(&[]);
    assert!(
        moved > 1e-3,
        "the adapters change the log-probabilities ({moved})"
    );
}
