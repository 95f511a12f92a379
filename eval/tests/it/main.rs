//! Perplexity on a tiny random model: independent of batch size, and equal to the exponent of the
//! trainer's mean loss over the same targets.
use dapt_core::PackedRow;
use dapt_trainer::tch::{nn, Device};
use dapt_trainer::{Batch, CausalLm, ModelConfig};

#[test]
fn perplexity_is_batch_size_independent_and_matches_the_loss() {
    dapt_trainer::tch::manual_seed(11);
    let config = ModelConfig {
        vocab_size: 40,
        hidden_size: 16,
        intermediate_size: 32,
        num_hidden_layers: 1,
        num_attention_heads: 2,
        num_key_value_heads: 1,
        ..ModelConfig::default()
    };
    let vs = nn::VarStore::new(Device::Cpu);
    let model = CausalLm::new(&vs.root(), &config).unwrap();
    let rows: Vec<PackedRow> = (0..7)
        .map(|r| {
            let used = 10 + r;
            let mut ids: Vec<i32> = (0..used).map(|i| (i * 3 + r) % 39 + 1).collect();
            ids.resize(20, 0);
            PackedRow {
                input_ids: ids,
                segment_lengths: vec![4, used - 4],
                loss_mask: (0..20).map(|i| i < used).collect(),
                ..Default::default()
            }
        })
        .collect();
    let one = dapt_eval::perplexity(&model, &rows, 1, Device::Cpu).unwrap();
    let three = dapt_eval::perplexity(&model, &rows, 3, Device::Cpu).unwrap();
    let all = dapt_eval::perplexity(&model, &rows, 64, Device::Cpu).unwrap();
    assert_eq!(one.tokens, three.tokens);
    // Equal up to float32 summation order inside one batch.
    assert!((one.mean_loss - three.mean_loss).abs() < 1e-5 * one.mean_loss);
    assert!((one.mean_loss - all.mean_loss).abs() < 1e-5 * one.mean_loss);
    // Targets: per row, each segment of length L contributes L - 1.
    let expected_tokens: i64 = rows.iter().map(|r| (r.used() - 2) as i64).sum();
    assert_eq!(all.tokens, expected_tokens);
    let refs: Vec<&PackedRow> = rows.iter().collect();
    let batch = Batch::from_rows(&refs, Device::Cpu);
    let mean = model.loss_sum(&batch).double_value(&[]) / batch.target_count as f64;
    assert!((all.perplexity - mean.exp()).abs() < 1e-6 * all.perplexity);
    assert!(dapt_eval::perplexity(&model, &[], 4, Device::Cpu).is_err());
}
