//! Integration tests of dapt-trainer on tiny random models.
use dapt_core::PackedRow;
use dapt_trainer::tch::{nn, Device, Tensor};
use dapt_trainer::{Batch, Llama, ModelConfig};

fn tiny(tied: bool) -> ModelConfig {
    ModelConfig {
        vocab_size: 61,
        hidden_size: 32,
        intermediate_size: 48,
        num_hidden_layers: 2,
        num_attention_heads: 4,
        num_key_value_heads: 2,
        max_position_embeddings: 64,
        tie_word_embeddings: tied,
        ..ModelConfig::default()
    }
}

fn logits_of(model: &Llama, row: &PackedRow) -> Tensor {
    let batch = Batch::from_rows(&[row], Device::Cpu);
    model
        .forward(&batch.input_ids, &batch.positions, &batch.mask)
        .squeeze_dim(0)
}

/// A packed row gives, at every token, the logits its document gives when run alone: no attention
/// across segments, positions restart per segment.
#[test]
fn packed_row_equals_documents_run_one_by_one() {
    dapt_trainer::tch::manual_seed(3);
    let vs = nn::VarStore::new(Device::Cpu);
    let model = Llama::new(&vs.root(), &tiny(false)).unwrap();
    let documents: Vec<Vec<i32>> = vec![
        (0..5).map(|i| 3 + i * 7 % 50).collect(),
        (0..9).map(|i| 1 + i * 5 % 60).collect(),
        (0..4).map(|i| 20 + i).collect(),
    ];
    let seq_len = 24;
    let mut input_ids: Vec<i32> = documents.concat();
    let used = input_ids.len();
    input_ids.resize(seq_len, 0);
    let packed = PackedRow {
        input_ids,
        segment_lengths: documents.iter().map(|d| d.len() as i32).collect(),
        loss_mask: (0..seq_len).map(|i| i < used).collect(),
        ..Default::default()
    };
    let packed_logits = logits_of(&model, &packed);
    let mut start = 0;
    for document in &documents {
        let alone = PackedRow {
            input_ids: document.clone(),
            segment_lengths: vec![document.len() as i32],
            loss_mask: vec![true; document.len()],
            ..Default::default()
        };
        let alone_logits = logits_of(&model, &alone);
        let slice = packed_logits.narrow(0, start, document.len() as i64);
        let difference = (&slice - &alone_logits).abs().max().double_value(&[]);
        assert!(
            difference < 1e-5,
            "document at {start}: max difference {difference}"
        );
        start += document.len() as i64;
    }
}

/// Saved weights carry HF names and load back to the same logits.
#[test]
fn save_and_load_round_trip_with_hf_names() {
    dapt_trainer::tch::manual_seed(4);
    let vs = nn::VarStore::new(Device::Cpu);
    let model = Llama::new(&vs.root(), &tiny(true)).unwrap();
    let dir = tempfile::tempdir().unwrap();
    model.save(&vs, dir.path()).unwrap();
    let names: Vec<String> = Tensor::read_safetensors(dir.path().join("model.safetensors"))
        .unwrap()
        .into_iter()
        .map(|(name, _)| name)
        .collect();
    for expected in [
        "model.embed_tokens.weight",
        "model.layers.0.self_attn.q_proj.weight",
        "model.layers.1.self_attn.k_proj.weight",
        "model.layers.1.mlp.gate_proj.weight",
        "model.layers.0.input_layernorm.weight",
        "model.layers.0.post_attention_layernorm.weight",
        "model.norm.weight",
    ] {
        assert!(
            names.iter().any(|n| n == expected),
            "{expected} missing from {names:?}"
        );
    }
    assert!(
        !names.iter().any(|n| n.starts_with("lm_head")),
        "tied embeddings have no lm_head"
    );
    let (_, loaded) = Llama::load(dir.path(), Device::Cpu).unwrap();
    let row = PackedRow {
        input_ids: vec![1, 2, 3, 4, 5, 6],
        segment_lengths: vec![6],
        loss_mask: vec![true; 6],
        ..Default::default()
    };
    let difference = (logits_of(&model, &row) - logits_of(&loaded, &row))
        .abs()
        .max()
        .double_value(&[]);
    assert_eq!(difference, 0.0);
    assert_eq!(loaded.config(), model.config());
}

/// Training on a repeated pattern drives its loss far down; GQA and untied heads train too.
#[test]
fn training_learns_a_pattern() {
    dapt_trainer::tch::manual_seed(5);
    let vs = nn::VarStore::new(Device::Cpu);
    let model = Llama::new(&vs.root(), &tiny(false)).unwrap();
    let rows: Vec<PackedRow> = (0..16)
        .map(|r| {
            let ids: Vec<i32> = (0..32).map(|i| (i + r) % 10 + 5).collect();
            PackedRow {
                input_ids: ids,
                segment_lengths: vec![16, 16],
                loss_mask: vec![true; 32],
                ..Default::default()
            }
        })
        .collect();
    let options = dapt_trainer::TrainOptions {
        steps: 60,
        batch_size: 4,
        grad_accumulation: 2,
        learning_rate: 1e-2,
        warmup_steps: 5,
        ..Default::default()
    };
    let history = dapt_trainer::train(&model, &vs, &rows, &options, 9, |_| {}).unwrap();
    let first = history[0].loss;
    let last = history.last().unwrap().loss;
    assert!(first > 3.5, "random init is near ln(61) = 4.1: {first}");
    assert!(last < 0.5, "pattern learned: {first} → {last}");
    assert!(history.iter().all(|m| m.tokens == 8 * 30));
}
