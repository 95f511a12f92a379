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

/// A word-level tokenizer over `t0 … t{n-1}` (decoding joins tokens with spaces), for the random models.
fn word_tokenizer(n: usize) -> dapt_encoder::TokenizerFile {
    let vocab: serde_json::Map<String, serde_json::Value> = (0..n)
        .map(|i| (format!("t{i}"), serde_json::json!(i)))
        .collect();
    let json = serde_json::json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": [],
        "normalizer": null,
        "pre_tokenizer": { "type": "WhitespaceSplit" },
        "post_processor": null,
        "decoder": null,
        "model": { "type": "WordLevel", "vocab": vocab, "unk_token": "t0" }
    });
    dapt_encoder::TokenizerFile::from_json(json.to_string().into_bytes(), "word-level").unwrap()
}

/// Greedy generation equals repeated argmax of full forward passes (the KV cache changes nothing);
/// sampling depends on the seed only; stop strings cut the text; max_tokens bounds it.
#[test]
fn generation_greedy_sampling_stops_and_limits() {
    dapt_trainer::tch::manual_seed(21);
    let config = ModelConfig {
        vocab_size: 30,
        hidden_size: 16,
        intermediate_size: 32,
        num_hidden_layers: 2,
        num_attention_heads: 2,
        num_key_value_heads: 1,
        initializer_range: 0.5,
        ..ModelConfig::default()
    };
    let vs = nn::VarStore::new(Device::Cpu);
    let model = CausalLm::new(&vs.root(), &config).unwrap();
    let tokenizer = word_tokenizer(30);
    let prompt = [3u32, 7, 11];
    let greedy = dapt_eval::GenerateOptions {
        max_tokens: 8,
        ..Default::default()
    };
    let out = dapt_eval::generate(&model, &tokenizer, &prompt, &greedy, Device::Cpu).unwrap();
    assert_eq!(out.tokens.len(), 8);
    assert_eq!(out.finish_reason, dapt_eval::FinishReason::Length);
    // The same tokens by argmax over full forward passes without a cache.
    let mut ids: Vec<u32> = prompt.to_vec();
    for _ in 0..8 {
        let row = PackedRow {
            input_ids: ids.iter().map(|&t| t as i32).collect(),
            segment_lengths: vec![ids.len() as i32],
            loss_mask: vec![true; ids.len()],
            ..Default::default()
        };
        let batch = Batch::from_rows(&[&row], Device::Cpu);
        let logits = dapt_trainer::tch::no_grad(|| {
            model.forward(&batch.input_ids, &batch.positions, &batch.mask)
        });
        ids.push(logits.get(0).get(-1).argmax(-1, false).int64_value(&[]) as u32);
    }
    assert_eq!(out.tokens, ids[3..]);
    assert_eq!(out.text, tokenizer.decode(&out.tokens).unwrap());

    let sample = |seed: u64| {
        let options = dapt_eval::GenerateOptions {
            max_tokens: 12,
            temperature: 1.5,
            seed,
            ..Default::default()
        };
        dapt_eval::generate(&model, &tokenizer, &prompt, &options, Device::Cpu)
            .unwrap()
            .tokens
    };
    assert_eq!(sample(1), sample(1));
    assert!(
        (2..8).any(|s| sample(s) != sample(1)),
        "the seed changes samples"
    );

    // Stop at the text of the third greedy token: the output ends before it.
    let third = tokenizer.decode(&out.tokens[2..3]).unwrap();
    let stopped = dapt_eval::GenerateOptions {
        max_tokens: 8,
        stop: vec![third.clone()],
        ..Default::default()
    };
    let cut = dapt_eval::generate(&model, &tokenizer, &prompt, &stopped, Device::Cpu).unwrap();
    assert_eq!(cut.finish_reason, dapt_eval::FinishReason::Stop);
    assert!(
        !cut.text.contains(&third) && out.text.starts_with(cut.text.trim_end()),
        "{:?} / {:?}",
        cut.text,
        out.text
    );
}
