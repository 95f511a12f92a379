//! Integration tests of dapt-trainer: parity with HF transformers and PEFT on committed fixtures
//! (`tests/fixtures/generate.py` regenerates them), packed-vs-unpacked equality, LoRA merge, exact
//! resume from checkpoints over streamed packed Parquet, embedding resize.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use dapt_core::{Location, OutputDir, PackedRow};
use dapt_trainer::tch::{nn, Device, Kind, Tensor};
use dapt_trainer::weights::read_safetensors;
use dapt_trainer::{
    Batch, CausalLm, InMemoryRows, LoraOptions, ModelConfig, NewTokenSpec, PackedShards,
    ResizeInit, RowSource, StepMetrics, TrainOptions, TrainSettings, Trainer,
};

mod preference;

/// LibTorch's random generator is global to the process: tests that seed it and draw from it take
/// turns, or parallel tests would interleave their draws.
static RNG: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn rng_lock() -> std::sync::MutexGuard<'static, ()> {
    RNG.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn tiny(model_type: &str, tied: bool) -> ModelConfig {
    ModelConfig {
        model_type: model_type.into(),
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

fn single(ids: &[i32]) -> PackedRow {
    PackedRow {
        input_ids: ids.to_vec(),
        segment_lengths: vec![ids.len() as i32],
        loss_mask: vec![true; ids.len()],
        ..Default::default()
    }
}

/// LoRA r = 4 on every linear layer of `model`, its adapters (B included) moved off their start by
/// seeded noise, as training would move them; the adapters' store and how many layers got one.
fn attach_moved_lora(model: &mut CausalLm, seed: i64) -> (nn::VarStore, usize) {
    let adapters = nn::VarStore::new(Device::Cpu);
    dapt_trainer::tch::manual_seed(seed);
    let options = LoraOptions {
        r: 4,
        alpha: 8.0,
        ..Default::default()
    };
    let attached = model.attach_lora(&adapters.root(), &options).unwrap();
    dapt_trainer::tch::no_grad(|| {
        for (_, v) in adapters.variables() {
            let _ = v.shallow_clone().g_add_(&(v.randn_like() * 0.1));
        }
    });
    (adapters, attached)
}

/// Logits `[b, t, vocab]` of rows that are one document each.
fn logits_of(model: &CausalLm, rows: &[PackedRow]) -> Tensor {
    let refs: Vec<&PackedRow> = rows.iter().collect();
    let batch = Batch::from_rows(&refs, Device::Cpu);
    dapt_trainer::tch::no_grad(|| model.forward(&batch.input_ids, &batch.positions, &batch.mask))
}

fn max_difference(a: &Tensor, b: &Tensor) -> f64 {
    (a - b).abs().max().double_value(&[])
}

/// `input_ids` rows and HF's logits from a fixture's `reference.safetensors`.
fn reference(dir: &Path) -> (Vec<PackedRow>, Tensor) {
    reference_file(&dir.join("reference.safetensors"))
}

fn reference_file(path: &Path) -> (Vec<PackedRow>, Tensor) {
    let tensors: BTreeMap<String, Tensor> = read_safetensors(path).unwrap().into_iter().collect();
    let ids = &tensors["input_ids"];
    let rows = (0..ids.size()[0])
        .map(|r| {
            let row: Vec<i64> = ids.get(r).try_into().unwrap();
            single(&row.iter().map(|&i| i as i32).collect::<Vec<_>>())
        })
        .collect();
    (rows, tensors["logits"].shallow_clone())
}

fn assert_parity(family: &str) {
    let dir = fixture(family);
    let (_vs, model) = CausalLm::load(&dir, Device::Cpu, Kind::Float).unwrap();
    assert!(model.config().model_type.starts_with(family));
    let (rows, expected) = reference(&dir);
    let difference = max_difference(&logits_of(&model, &rows), &expected);
    assert!(
        difference < 1e-4,
        "{family}: max |dapt - transformers| = {difference}"
    );
    let spread = expected.std(true).double_value(&[]);
    assert!(spread > 0.5, "the fixture's logits vary ({spread})");
}

/// Llama 3 with llama3 RoPE scaling, untied head: logits equal transformers' within 1e-4.
#[test]
fn llama_matches_transformers() {
    assert_parity("llama");
}

/// Qwen2 with q/k/v biases and tied embeddings.
#[test]
fn qwen2_matches_transformers() {
    assert_parity("qwen2");
}

/// Qwen3 with per-head q/k norms and head_dim apart from hidden/heads.
#[test]
fn qwen3_matches_transformers() {
    assert_parity("qwen3");
}

/// Mistral: Llama's blocks with a sliding window (5 of the fixture's 12 positions, so the logits
/// from position 5 on depend on it).
#[test]
fn mistral_matches_transformers() {
    assert_parity("mistral");
}

/// Gemma 3 (sliding and full layers with their own RoPE, q/k norms, `(1 + w)` norms, GeGLU, scaled
/// embeddings, `query_pre_attn_scalar`): logits equal transformers' within 1e-4.
#[test]
fn gemma3_matches_transformers() {
    assert_parity("gemma3");
}

/// Gemma 2 (attention and final soft-capping that bend these logits): logits equal transformers'.
#[test]
fn gemma2_matches_transformers() {
    assert_parity("gemma2");
}

/// Phi-3 (fused qkv and gate/up projections, LongRoPE on half of each head, a window): logits equal
/// transformers'.
#[test]
fn phi3_matches_transformers() {
    assert_parity("phi3");
}

/// GGUF files that llama.cpp's own converter wrote from tiny Gemma 3 (linear RoPE scaling, a local
/// base, every sixth layer full), Gemma 2 (soft-capping) and Phi-3 (LongRoPE as tensors, partial
/// rotary, fused projections) models import into configs and weights that give transformers' logits
/// for the HF models they came from (Gemma's stored `1 + weight` norms undone).
#[test]
fn gguf_gemma_and_phi3_import_to_transformers_logits() {
    for family in ["gemma3", "gemma2", "phi3"] {
        let dir = fixture("gguf");
        let gguf = dapt_trainer::GgufModel::open(&dir.join(format!("{family}.gguf"))).unwrap();
        let out = tempfile::tempdir().unwrap();
        let config = gguf.config(dapt_trainer::WeightType::F32).unwrap();
        config.save(out.path()).unwrap();
        gguf.write_weights(
            &out.path().join("model.safetensors"),
            dapt_trainer::WeightType::F32,
            |_, _| {},
        )
        .unwrap();
        let (_vs, model) = CausalLm::load(out.path(), Device::Cpu, Kind::Float).unwrap();
        assert!(model.config().model_type.starts_with(family));
        let (rows, expected) = reference_file(&dir.join(format!("{family}.reference.safetensors")));
        let difference = max_difference(&logits_of(&model, &rows), &expected);
        assert!(
            difference < 1e-4,
            "{family}: GGUF import vs transformers: {difference}"
        );
    }
}

/// Mistral's window holds in packed rows (two documents in one row give each document's logits
/// alone) and through the KV cache, one token at a time and in left-padded batches.
#[test]
fn mistral_window_holds_in_packed_rows_and_the_kv_cache() {
    assert_window_holds("mistral", 3);
}

/// Phi-3's window and LongRoPE hold in packed rows and the KV cache (a prompt of 9 positions is past
/// the original 8 already, so the cache stays with the long factors as the whole row does).
#[test]
fn phi3_window_holds_in_packed_rows_and_the_kv_cache() {
    assert_window_holds("phi3", 9);
}

/// Gemma's sliding layers keep their window beside the full layers, in packed rows and the KV cache.
#[test]
fn gemma_windows_hold_in_packed_rows_and_the_kv_cache() {
    assert_window_holds("gemma3", 3);
    assert_window_holds("gemma2", 3);
}

/// `family`'s logits in a packed row of two documents, one token at a time after a `prompt`, and in
/// a left-padded batch equal transformers' for each document alone.
fn assert_window_holds(family: &str, prompt: usize) {
    let (_vs, model) = CausalLm::load(&fixture(family), Device::Cpu, Kind::Float).unwrap();
    let window = model.config().attention_window().unwrap();
    assert!(window < 12, "the window matters over 12 positions");
    let (rows, expected) = reference(&fixture(family));
    let (a, b) = (&rows[0].input_ids, &rows[1].input_ids[..9]);
    let packed = PackedRow {
        input_ids: a.iter().chain(b).copied().collect(),
        segment_lengths: vec![a.len() as i32, b.len() as i32],
        loss_mask: vec![true; a.len() + b.len()],
        ..Default::default()
    };
    let logits = logits_of(&model, &[packed]).get(0);
    let first = logits.narrow(0, 0, a.len() as i64);
    let second = logits.narrow(0, a.len() as i64, b.len() as i64);
    assert!(max_difference(&first, &expected.get(0)) < 1e-4);
    assert!(max_difference(&second, &expected.get(1).narrow(0, 0, 9)) < 1e-4);

    let ids: Vec<i64> = a.iter().map(|&i| i64::from(i)).collect();
    let mut cache = dapt_trainer::KvCache::default();
    let mut pieces = vec![dapt_trainer::tch::no_grad(|| {
        model.forward_cached(&Tensor::from_slice(&ids[..prompt]).unsqueeze(0), &mut cache)
    })];
    for &id in &ids[prompt..] {
        pieces.push(dapt_trainer::tch::no_grad(|| {
            model.forward_cached(&Tensor::from_slice(&[id]).unsqueeze(0), &mut cache)
        }));
    }
    let incremental = Tensor::cat(&pieces, 1).squeeze_dim(0);
    let difference = max_difference(&incremental, &expected.get(0));
    assert!(
        difference < 1e-4,
        "{family}: cached vs transformers: {difference}"
    );

    // Row 1 left-padded by 3 beside row 0: its logits are its own.
    let mut padded = vec![0i64; 3];
    padded.extend(rows[1].input_ids[..9].iter().map(|&i| i64::from(i)));
    let batch = Tensor::stack(&[Tensor::from_slice(&ids), Tensor::from_slice(&padded)], 0);
    let mut cache = dapt_trainer::KvCache::left_padded(vec![0, 3]);
    let logits = dapt_trainer::tch::no_grad(|| model.forward_cached(&batch, &mut cache));
    let difference = max_difference(
        &logits.get(1).narrow(0, 3, 9),
        &expected.get(1).narrow(0, 0, 9),
    );
    assert!(
        difference < 1e-4,
        "{family}: left-padded vs transformers: {difference}"
    );
}

/// LoRA on Mistral under PEFT's names: merged and saved, it loads back with its window and gives the
/// merged logits.
#[test]
fn mistral_lora_merges_and_saves_with_its_window() {
    assert_lora_merges_and_saves("mistral", 2 * 7);
    let (_, model) = CausalLm::load(&fixture("mistral"), Device::Cpu, Kind::Float).unwrap();
    assert_eq!(model.config().extra["sliding_window"], 5);
}

/// The same for Gemma 3 and Gemma 2 (their extra norms and settings survive the save).
#[test]
fn gemma_lora_merges_and_saves() {
    assert_lora_merges_and_saves("gemma3", 3 * 7);
    assert_lora_merges_and_saves("gemma2", 3 * 7);
}

/// The same for Phi-3, whose default targets are its four linear layers per block (the fused ones
/// among them).
#[test]
fn phi3_lora_merges_and_saves() {
    assert_lora_merges_and_saves("phi3", 2 * 4);
}

/// LoRA on every projection of `family`'s fixture (`linears` layers in all) under PEFT's names:
/// merged and saved, the model loads back with its config and gives the merged logits.
fn assert_lora_merges_and_saves(family: &str, linears: usize) {
    let _guard = rng_lock();
    let (vs, mut model) = CausalLm::load(&fixture(family), Device::Cpu, Kind::Float).unwrap();
    let (_adapters, attached) = attach_moved_lora(&mut model, 7);
    assert_eq!(attached, linears);
    let (rows, base) = reference(&fixture(family));
    let adapted = logits_of(&model, &rows);
    assert!(
        max_difference(&adapted, &base) > 1e-2,
        "the adapter changes the logits"
    );
    model.merge_lora();
    let out = tempfile::tempdir().unwrap();
    model.save(&vs, out.path()).unwrap();
    let written: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.path().join("config.json")).unwrap()).unwrap();
    let original: serde_json::Value =
        serde_json::from_slice(&std::fs::read(fixture(family).join("config.json")).unwrap())
            .unwrap();
    for (key, value) in original.as_object().unwrap() {
        if key != "dtype" {
            assert_eq!(&written[key], value, "{family}: config key {key}");
        }
    }
    let (_, loaded) = CausalLm::load(out.path(), Device::Cpu, Kind::Float).unwrap();
    let difference = max_difference(&logits_of(&loaded, &rows), &adapted);
    assert!(
        difference < 1e-4,
        "{family}: saved merged vs adapted: {difference}"
    );
}

/// PEFT adapters on every projection of the Gemma 3 model and on Phi-3's fused projections load
/// under their names and give PEFT's logits.
#[test]
fn peft_adapters_on_gemma3_and_phi3_give_pefts_logits() {
    for (family, linears) in [("gemma3", 3 * 7), ("phi3", 2 * 4)] {
        let (_vs, mut model) = CausalLm::load(&fixture(family), Device::Cpu, Kind::Float).unwrap();
        let (_adapters, _, attached) = model
            .load_adapter(&fixture(&format!("{family}-lora")), Device::Cpu)
            .unwrap();
        assert_eq!(attached, linears);
        let (rows, expected) = reference(&fixture(&format!("{family}-lora")));
        let difference = max_difference(&logits_of(&model, &rows), &expected);
        assert!(
            difference < 1e-4,
            "{family}: dapt+LoRA vs PEFT: {difference}"
        );
        let (_, base) = reference(&fixture(family));
        assert!(
            max_difference(&expected, &base) > 1e-2,
            "the adapter matters"
        );
    }
}

/// Loading a model or an adapter draws nothing from LibTorch's process-wide generator: a seeded run
/// draws the same numbers whether or not a model was loaded after seeding (and a test that loads
/// beside a seeded one cannot move its draws).
#[test]
fn loading_draws_nothing_from_the_global_generator() {
    let _guard = rng_lock();
    let draw = || Tensor::randn([8], (Kind::Float, Device::Cpu));
    dapt_trainer::tch::manual_seed(17);
    let plain = draw();
    dapt_trainer::tch::manual_seed(17);
    let (_vs, mut model) = CausalLm::load(&fixture("qwen3"), Device::Cpu, Kind::Float).unwrap();
    let _adapter = model.load_adapter(&fixture("lora"), Device::Cpu).unwrap();
    assert_eq!(max_difference(&draw(), &plain), 0.0);
    // A fresh model does draw: the check above can fail.
    dapt_trainer::tch::manual_seed(17);
    let vs = nn::VarStore::new(Device::Cpu);
    let _fresh = CausalLm::new(&vs.root(), &tiny("llama", false)).unwrap();
    assert!(max_difference(&draw(), &plain) > 0.0);
}

/// A saved model carries HF's names and config keys, and loads back to the same logits.
#[test]
fn save_keeps_hf_names_config_and_logits() {
    let dir = fixture("llama");
    let (vs, model) = CausalLm::load(&dir, Device::Cpu, Kind::Float).unwrap();
    let out = tempfile::tempdir().unwrap();
    model.save(&vs, out.path()).unwrap();
    let names = |path: &Path| -> Vec<String> {
        let mut n: Vec<String> = read_safetensors(path)
            .unwrap()
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        n.sort();
        n
    };
    assert_eq!(
        names(&out.path().join("model.safetensors")),
        names(&dir.join("model.safetensors"))
    );
    let written: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.path().join("config.json")).unwrap()).unwrap();
    assert_eq!(written["rope_parameters"]["rope_type"], "llama3");
    assert_eq!(
        written["pretraining_tp"], 1,
        "keys dapt does not use survive"
    );
    let (_, loaded) = CausalLm::load(out.path(), Device::Cpu, Kind::Float).unwrap();
    let (rows, _) = reference(&dir);
    assert_eq!(
        max_difference(&logits_of(&model, &rows), &logits_of(&loaded, &rows)),
        0.0
    );
}

/// Missing or extra weights are errors that name the file and the key.
#[test]
fn mismatched_checkpoint_names_the_key() {
    let dir = tempfile::tempdir().unwrap();
    for file in ["config.json", "model.safetensors"] {
        std::fs::copy(fixture("qwen2").join(file), dir.path().join(file)).unwrap();
    }
    // Claim Qwen3: the checkpoint lacks q_norm/k_norm.
    let config = std::fs::read_to_string(dir.path().join("config.json"))
        .unwrap()
        .replace("\"qwen2\"", "\"qwen3\"");
    std::fs::write(dir.path().join("config.json"), config).unwrap();
    let error = CausalLm::load(dir.path(), Device::Cpu, Kind::Float)
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("q_proj.bias") || error.contains("k_norm"),
        "{error}"
    );
}

/// PEFT's adapter loads under PEFT's names and gives PEFT's logits; merging changes nothing; dapt
/// writes the same keys back.
#[test]
fn peft_adapter_loads_merges_and_saves_in_peft_layout() {
    let lora_dir = fixture("lora");
    let (_vs, mut model) = CausalLm::load(&fixture("qwen3"), Device::Cpu, Kind::Float).unwrap();
    let (adapters, options, attached) = model.load_adapter(&lora_dir, Device::Cpu).unwrap();
    assert_eq!((options.r, options.alpha), (4, 8.0));
    assert_eq!(attached, 2 * 4, "q, v, o, down in two layers");
    let (rows, expected) = reference(&lora_dir);
    let with_adapter = logits_of(&model, &rows);
    let difference = max_difference(&with_adapter, &expected);
    assert!(difference < 1e-4, "dapt+LoRA vs PEFT: {difference}");
    let (_, base_logits) = reference(&fixture("qwen3"));
    assert!(
        max_difference(&with_adapter, &base_logits) > 1e-2,
        "the adapter changes the logits"
    );

    let out = tempfile::tempdir().unwrap();
    dapt_trainer::save_adapter(out.path(), &adapters, &options, Some("qwen3"), None).unwrap();
    let keys = |path: PathBuf| -> Vec<String> {
        let mut k: Vec<String> = read_safetensors(&path)
            .unwrap()
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        k.sort();
        k
    };
    assert_eq!(
        keys(out.path().join("adapter_model.safetensors")),
        keys(lora_dir.join("adapter_model.safetensors"))
    );
    assert_eq!(LoraOptions::load_peft(out.path()).unwrap(), options);

    model.merge_lora();
    assert!(!model.has_lora());
    let merged = logits_of(&model, &rows);
    let difference = max_difference(&merged, &with_adapter);
    assert!(difference < 1e-4, "merged vs unmerged: {difference}");
}

/// A packed row gives, at every token, the logits and losses its document gives when run alone: no
/// attention across segments, positions restart per segment.
#[test]
fn packed_row_equals_documents_run_one_by_one() {
    let _rng = rng_lock();
    dapt_trainer::tch::manual_seed(3);
    let vs = nn::VarStore::new(Device::Cpu);
    let model = CausalLm::new(&vs.root(), &tiny("qwen3", false)).unwrap();
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
    let packed_batch = Batch::from_rows(&[&packed], Device::Cpu);
    let packed_logits = logits_of(&model, std::slice::from_ref(&packed)).squeeze_dim(0);
    let packed_losses = model.token_losses(&packed_batch).squeeze_dim(0);
    let mut start = 0;
    let mut total = 0.0;
    for document in &documents {
        let alone = single(document);
        let alone_logits = logits_of(&model, std::slice::from_ref(&alone)).squeeze_dim(0);
        let n = document.len() as i64;
        let difference = max_difference(&packed_logits.narrow(0, start, n), &alone_logits);
        assert!(
            difference < 1e-5,
            "document at {start}: max difference {difference}"
        );
        let alone_losses = model
            .token_losses(&Batch::from_rows(&[&alone], Device::Cpu))
            .squeeze_dim(0);
        let difference = max_difference(&packed_losses.narrow(0, start, n), &alone_losses);
        assert!(difference < 1e-5, "losses at {start}: {difference}");
        total += alone_losses.sum(Kind::Double).double_value(&[]);
        start += n;
    }
    let packed_sum = model.loss_sum(&packed_batch).double_value(&[]);
    assert!((packed_sum - total).abs() < 1e-3, "{packed_sum} vs {total}");
    assert_eq!(packed_batch.target_count, (5 - 1) + (9 - 1) + (4 - 1));
}

fn pattern_rows(count: usize) -> Vec<PackedRow> {
    (0..count)
        .map(|r| {
            let ids: Vec<i32> = (0..32).map(|i| ((i + r) % 10 + 5) as i32).collect();
            PackedRow {
                input_ids: ids,
                segment_lengths: vec![16, 16],
                loss_mask: vec![true; 32],
                ..Default::default()
            }
        })
        .collect()
}

/// Training on a repeated pattern drives its loss far down; GQA and untied heads train too.
#[test]
fn training_learns_a_pattern() {
    let _rng = rng_lock();
    dapt_trainer::tch::manual_seed(5);
    let vs = nn::VarStore::new(Device::Cpu);
    let model = CausalLm::new(&vs.root(), &tiny("llama", false)).unwrap();
    let options = TrainOptions {
        steps: 60,
        batch_size: 4,
        grad_accumulation: 2,
        learning_rate: 1e-2,
        warmup_steps: 5,
        ..Default::default()
    };
    let options = TrainSettings::try_from(options).unwrap();
    let trainer = Trainer::new(&model, &vs, &options, 9);
    let mut data = InMemoryRows::new(pattern_rows(16), 9).unwrap();
    let history = trainer.run(&mut data, false, |_| {}).unwrap().history;
    let first = history[0].loss;
    let last = history.last().unwrap().loss;
    assert!(first > 3.5, "random init is near ln(61) = 4.1: {first}");
    assert!(last < 0.5, "pattern learned: {first} → {last}");
    assert!(history.iter().all(|m| m.tokens == 8 * 30));
}

/// `bf16_cpu`: on a processor with AMX or AVX512-BF16 the steps run under bf16 autocast (the losses
/// differ from float32's in their low bits, stay within 2% of them, and a rerun repeats them
/// exactly); on one without, training is refused naming the key.
#[test]
fn bf16_on_the_cpu_trains_close_to_float32_or_is_refused() {
    let _rng = rng_lock();
    let run = |bf16_cpu: bool| {
        dapt_trainer::tch::manual_seed(5);
        let vs = nn::VarStore::new(Device::Cpu);
        let model = CausalLm::new(&vs.root(), &tiny("llama", false)).unwrap();
        let options = TrainOptions {
            steps: 12,
            batch_size: 4,
            learning_rate: 1e-2,
            warmup_steps: 2,
            bf16_cpu,
            ..Default::default()
        };
        let options = TrainSettings::try_from(options).unwrap();
        let trainer = Trainer::new(&model, &vs, &options, 9);
        let mut data = InMemoryRows::new(pattern_rows(16), 9).unwrap();
        trainer
            .run(&mut data, false, |_| {})
            .map(|r| r.history.iter().map(|m| m.loss).collect::<Vec<f64>>())
    };
    let float = run(false).unwrap();
    let options = TrainOptions {
        bf16_cpu: true,
        ..Default::default()
    };
    if !dapt_trainer::autocast::cpu_bf16_native() {
        let error = run(true).unwrap_err().to_string();
        assert!(error.contains("train.bf16_cpu"), "{error}");
        let refused = dapt_trainer::describe_precision(&options, Device::Cpu).unwrap_err();
        assert!(refused.to_string().contains("AMX"), "{refused}");
        eprintln!("no native bf16 on this processor: the refusal was checked");
        return;
    }
    assert_eq!(
        dapt_trainer::describe_precision(&options, Device::Cpu).unwrap(),
        "bf16 autocast"
    );
    let bf16 = run(true).unwrap();
    assert_eq!(bf16, run(true).unwrap(), "a rerun repeats the bf16 losses");
    assert_ne!(bf16, float, "the bf16 path ran");
    for (step, (b, f)) in bf16.iter().zip(&float).enumerate() {
        assert!(
            (b - f).abs() <= 0.02 * f,
            "step {step}: bf16 {b} vs float32 {f}"
        );
    }
    assert!(
        bf16.last().unwrap() < &(0.8 * bf16[0]),
        "it learns: {bf16:?}"
    );
}

/// LoRA trained by dapt on the Gemma 3 and Phi-3 models (every projection, with dropout) lowers the
/// loss, saves in PEFT's layout and loads back into a fresh copy of the base with the trained logits;
/// merged, the model gives them too. With `DAPT_PEFT_CHECK_DIR` set, the base, the adapter and the
/// trained logits are also written to `DIR/FAMILY/` for `generate.py --check DIR/FAMILY/base --adapter
/// DIR/FAMILY/adapter --reference DIR/FAMILY/reference.safetensors` (PEFT's side; run by hand, PyTorch
/// is not a test dependency).
#[test]
fn lora_trained_by_dapt_saves_in_peft_layout() {
    let _rng = rng_lock();
    for (family, linears) in [("gemma3", 3 * 7), ("phi3", 2 * 4)] {
        lora_trained_by_dapt(family, linears);
    }
}

fn lora_trained_by_dapt(family: &str, linears: usize) {
    dapt_trainer::tch::manual_seed(21);
    let (_vs, mut model) = CausalLm::load(&fixture(family), Device::Cpu, Kind::Float).unwrap();
    let adapters = nn::VarStore::new(Device::Cpu);
    let lora = LoraOptions {
        r: 4,
        alpha: 8.0,
        dropout: 0.1,
        ..Default::default()
    };
    assert_eq!(model.attach_lora(&adapters.root(), &lora).unwrap(), linears);
    let options = TrainSettings::try_from(TrainOptions {
        steps: 8,
        batch_size: 4,
        learning_rate: 1e-2,
        warmup_steps: 1,
        ..Default::default()
    })
    .unwrap();
    let trainer = Trainer::new(&model, &adapters, &options, 3);
    let mut data = InMemoryRows::new(pattern_rows(8), 3).unwrap();
    let history = trainer.run(&mut data, false, |_| {}).unwrap().history;
    assert!(
        history.last().unwrap().loss < history[0].loss * 0.8,
        "{family}: {:?}",
        history.iter().map(|m| m.loss).collect::<Vec<_>>()
    );
    model.set_training(false);
    let (rows, _) = reference(&fixture(family));
    let trained = logits_of(&model, &rows);

    let out = tempfile::tempdir().unwrap();
    let keep = std::env::var_os("DAPT_PEFT_CHECK_DIR").map(|d| PathBuf::from(d).join(family));
    let dir = keep.clone().unwrap_or_else(|| out.path().to_path_buf());
    let saved = lora.for_model(model.config().fused_projections()).unwrap();
    dapt_trainer::save_adapter(&dir.join("adapter"), &adapters, &saved, None, None).unwrap();
    let (_, mut fresh) = CausalLm::load(&fixture(family), Device::Cpu, Kind::Float).unwrap();
    fresh
        .load_adapter(&dir.join("adapter"), Device::Cpu)
        .unwrap();
    let difference = max_difference(&logits_of(&fresh, &rows), &trained);
    assert!(
        difference < 1e-5,
        "reloaded adapter vs trained: {difference}"
    );
    fresh.merge_lora();
    let difference = max_difference(&logits_of(&fresh, &rows), &trained);
    assert!(difference < 1e-4, "merged vs trained: {difference}");
    if let Some(dir) = keep {
        for file in ["config.json", "model.safetensors"] {
            std::fs::create_dir_all(dir.join("base")).unwrap();
            std::fs::copy(fixture(family).join(file), dir.join("base").join(file)).unwrap();
        }
        let ids = Tensor::stack(
            &rows
                .iter()
                .map(|r| Tensor::from_slice(&r.input_ids).to_kind(Kind::Int64))
                .collect::<Vec<_>>(),
            0,
        );
        dapt_trainer::tch::Tensor::write_safetensors(
            &[("input_ids", &ids), ("logits", &trained)],
            dir.join("reference.safetensors"),
        )
        .unwrap();
    }
}

/// Writes rows as a packer output directory (`part-NNNNN.parquet` + `_manifest.json`).
fn write_packed_dir(dir: &Path, rows: &[PackedRow], per_shard: usize) {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let location = Location::parse(dir.to_str().unwrap()).unwrap();
        let mut out = OutputDir::open(location, "pack", "test").await.unwrap();
        for (i, chunk) in rows.chunks(per_shard).enumerate() {
            let batch = dapt_core::packed::rows_to_batch(chunk).unwrap();
            let bytes = dapt_core::parquet_io::encode_packed(
                batch.schema(),
                &[batch],
                &BTreeMap::new(),
                "test",
            )
            .unwrap();
            out.publish(&format!("part-{i:05}.parquet"), bytes, chunk.len() as u64)
                .await
                .unwrap();
        }
        // What a packer output declares about its rows (dapt_core::PackedMetadata).
        let metadata = dapt_core::PackedMetadata {
            tokenizer_sha256: "test".into(),
            seq_len: rows.first().map_or(0, |r| r.input_ids.len()),
            pad_id: 0,
            seed: 0,
            config_hash: "test".into(),
            max_token_id: dapt_core::packed::max_token_id(rows),
        };
        out.finish(metadata.add_to_summary(serde_json::json!({})))
            .await
            .unwrap();
    });
}

/// Fails after a number of rows: an interruption in the middle of a run.
struct Interrupted<'a> {
    inner: &'a mut dyn RowSource,
    left: usize,
}

impl RowSource for Interrupted<'_> {
    fn next_row(&mut self) -> dapt_trainer::Result<PackedRow> {
        if self.left == 0 {
            return Err(dapt_trainer::Error::Setting {
                key: "test".into(),
                reason: "interrupted".into(),
            });
        }
        self.left -= 1;
        self.inner.next_row()
    }
    fn cursor(&self) -> dapt_trainer::DataCursor {
        self.inner.cursor()
    }
    fn seek(&mut self, cursor: dapt_trainer::DataCursor) -> dapt_trainer::Result<()> {
        self.inner.seek(cursor)
    }
}

fn read_log(path: &Path) -> Vec<StepMetrics> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Runs `steps` steps of full or LoRA training over streamed shards in `data_dir`; when `interrupt_after`
/// rows is set, the data fails there, and a second process-like run (fresh model, fresh reader) resumes.
fn resumable_run(
    data_dir: &Path,
    work: &Path,
    lora: bool,
    interrupt_after: Option<usize>,
) -> Vec<StepMetrics> {
    let options = TrainOptions {
        steps: 10,
        batch_size: 3,
        grad_accumulation: 2,
        learning_rate: 5e-3,
        warmup_steps: 2,
        checkpoint_every: 3,
        ..Default::default()
    };
    let options = TrainSettings::try_from(options).unwrap();
    let run = |resume: bool, limit: Option<usize>| -> dapt_trainer::Result<()> {
        dapt_trainer::tch::manual_seed(11);
        let mut vs = nn::VarStore::new(Device::Cpu);
        let mut model = CausalLm::new(&vs.root(), &tiny("qwen2", true)).unwrap();
        let adapters = nn::VarStore::new(Device::Cpu);
        if lora {
            vs.freeze();
            let options = LoraOptions {
                r: 4,
                dropout: 0.1,
                ..Default::default()
            };
            model.attach_lora(&adapters.root(), &options).unwrap();
        }
        let trainer = Trainer {
            checkpoint_dir: Some(work.join("checkpoints")),
            log_path: Some(work.join("log.jsonl")),
            ..Trainer::new(&model, if lora { &adapters } else { &vs }, &options, 21)
        };
        let mut shards =
            PackedShards::open(Location::parse(data_dir.to_str().unwrap()).unwrap(), 21, 8)
                .unwrap();
        match limit {
            Some(left) => {
                let mut data = Interrupted {
                    inner: &mut shards,
                    left,
                };
                trainer.run(&mut data, resume, |_| {})?;
            }
            None => {
                trainer.run(&mut shards, resume, |_| {})?;
            }
        }
        Ok(())
    };
    if let Some(rows) = interrupt_after {
        assert!(
            run(false, Some(rows)).is_err(),
            "the first run is interrupted"
        );
        run(true, None).unwrap();
    } else {
        run(false, None).unwrap();
    }
    read_log(&work.join("log.jsonl"))
}

/// A run interrupted mid-way and resumed from its last checkpoint logs the same losses, learning rates
/// and gradient norms as the uninterrupted run — full-weight and LoRA (with dropout), over streamed
/// Parquet shards that span several epochs.
#[test]
fn interrupted_and_resumed_run_equals_the_uninterrupted_one() {
    let _rng = rng_lock();
    let data = tempfile::tempdir().unwrap();
    let rows: Vec<PackedRow> = (0..23)
        .map(|r| {
            let ids: Vec<i32> = (0..16).map(|i| (i * 7 + r * 3) % 50 + 3).collect();
            PackedRow {
                input_ids: ids,
                segment_lengths: vec![7, 9],
                loss_mask: vec![true; 16],
                segment_sources: vec!["a".into(), "b".into()],
            }
        })
        .collect();
    write_packed_dir(data.path(), &rows, 5);
    for lora in [false, true] {
        let whole = tempfile::tempdir().unwrap();
        let reference = resumable_run(data.path(), whole.path(), lora, None);
        let broken = tempfile::tempdir().unwrap();
        // 6 rows per step: the interruption falls inside step 8, after the checkpoint of step 6.
        let resumed = resumable_run(data.path(), broken.path(), lora, Some(6 * 7 + 4));
        assert_eq!(reference.len(), 10);
        assert_eq!(
            resumed.len(),
            10,
            "lora={lora}: the log is whole, without repeats"
        );
        for (a, b) in reference.iter().zip(&resumed) {
            assert_eq!(a.step, b.step);
            assert_eq!(a.loss, b.loss, "lora={lora} step {}", a.step);
            assert_eq!(a.grad_norm, b.grad_norm, "lora={lora} step {}", a.step);
            assert_eq!(a.learning_rate, b.learning_rate);
        }
        let checkpoints: Vec<String> = std::fs::read_dir(broken.path().join("checkpoints"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert!(
            checkpoints.contains(&"step-00000010".to_string()),
            "{checkpoints:?}"
        );
        assert!(
            checkpoints
                .iter()
                .filter(|n| n.starts_with("step-"))
                .count()
                <= 2,
            "{checkpoints:?}"
        );
    }
}

/// LoRA trains only the adapters (base weights bit-identical), the trainable count is r·(in+out) per
/// adapted layer, and the merged model gives the adapted model's logits.
#[test]
fn lora_trains_adapters_only_and_merges() {
    let _rng = rng_lock();
    dapt_trainer::tch::manual_seed(7);
    let mut vs = nn::VarStore::new(Device::Cpu);
    let mut model = CausalLm::new(&vs.root(), &tiny("llama", false)).unwrap();
    let before: BTreeMap<String, Tensor> = vs
        .variables()
        .into_iter()
        .map(|(n, t)| (n, t.copy()))
        .collect();
    vs.freeze();
    let adapters = nn::VarStore::new(Device::Cpu);
    let options = LoraOptions {
        r: 4,
        target_modules: vec!["q_proj".into(), "v_proj".into()],
        dropout: 0.0,
        ..Default::default()
    };
    assert_eq!(model.attach_lora(&adapters.root(), &options).unwrap(), 4);
    let train_options = TrainOptions {
        steps: 20,
        batch_size: 4,
        learning_rate: 1e-2,
        warmup_steps: 2,
        ..Default::default()
    };
    let train_options = TrainSettings::try_from(train_options).unwrap();
    let trainer = Trainer::new(&model, &adapters, &train_options, 3);
    let mut data = InMemoryRows::new(pattern_rows(8), 3).unwrap();
    let outcome = trainer.run(&mut data, false, |_| {}).unwrap();
    // q: 32→32, v: 32→16 (2 kv heads of 8), two layers.
    assert_eq!(
        outcome.trainable_parameters,
        2 * 4 * ((32 + 32) + (32 + 16))
    );
    assert!(outcome.history.last().unwrap().loss < outcome.history[0].loss);
    for (name, tensor) in vs.variables() {
        assert!(tensor.equal(&before[&name]), "{name} changed");
    }
    let rows = vec![
        single(&[5, 6, 7, 8, 9, 10, 11]),
        single(&[12, 13, 14, 5, 6, 7, 8]),
    ];
    let adapted = logits_of(&model, &rows);
    let mut base_only = Tensor::zeros([1], (Kind::Float, Device::Cpu));
    for (name, tensor) in &before {
        if name.ends_with("q_proj.weight") {
            base_only = tensor.shallow_clone();
        }
    }
    model.merge_lora();
    let merged = logits_of(&model, &rows);
    assert!(max_difference(&merged, &adapted) < 1e-4);
    assert!(
        !vs.variables()
            .iter()
            .find(|(n, _)| n.ends_with("layers.1.self_attn.q_proj.weight"))
            .unwrap()
            .1
            .equal(&base_only),
        "merging changed the base weights"
    );
}

/// LoRA with the embedding rows from 40 on trainable (PEFT's trainable tokens): the frozen base does
/// not move, the rows from 40 on do and rows below do not after merging; the adapter saved in PEFT's
/// layout lists the rows and loads back to the same logits, for tied and untied embeddings.
#[test]
fn lora_with_trainable_token_rows_trains_only_the_new_rows() {
    let _rng = rng_lock();
    for tied in [true, false] {
        dapt_trainer::tch::manual_seed(11);
        let mut vs = nn::VarStore::new(Device::Cpu);
        let mut model = CausalLm::new(&vs.root(), &tiny("llama", tied)).unwrap();
        let before: BTreeMap<String, Tensor> = vs
            .variables()
            .into_iter()
            .map(|(n, t)| (n, t.copy()))
            .collect();
        vs.freeze();
        let adapters = nn::VarStore::new(Device::Cpu);
        let options = LoraOptions {
            r: 4,
            dropout: 0.0,
            ..Default::default()
        };
        model.attach_lora(&adapters.root(), &options).unwrap();
        assert_eq!(model.attach_token_rows(&adapters.root(), 40).unwrap(), 21);
        assert!(model.attach_token_rows(&adapters.root(), 61).is_err());
        // Rows that use the new ids (40..61) and old ones.
        let rows: Vec<PackedRow> = (0..8)
            .map(|r| {
                let ids: Vec<i32> = (0..32).map(|i| (i * 3 + r) % 26 + 35).collect();
                PackedRow {
                    input_ids: ids,
                    segment_lengths: vec![32],
                    loss_mask: vec![true; 32],
                    ..Default::default()
                }
            })
            .collect();
        let train_options = TrainOptions {
            steps: 15,
            batch_size: 4,
            learning_rate: 1e-2,
            warmup_steps: 1,
            ..Default::default()
        };
        let train_options = TrainSettings::try_from(train_options).unwrap();
        let trainer = Trainer::new(&model, &adapters, &train_options, 5);
        let mut data = InMemoryRows::new(rows.clone(), 5).unwrap();
        let outcome = trainer.run(&mut data, false, |_| {}).unwrap();
        let tables = if tied { 1 } else { 2 };
        let lora = 2 * 4 * ((32 + 32) + (32 + 16) + (32 + 16) + (32 + 32) + 3 * (32 + 48));
        assert_eq!(
            outcome.trainable_parameters,
            lora + tables * 21 * 32,
            "tied {tied}"
        );
        assert!(outcome.history.last().unwrap().loss < outcome.history[0].loss);
        for (name, tensor) in vs.variables() {
            assert!(
                tensor.equal(&before[&name]),
                "{name} changed before merging"
            );
        }
        let adapted = logits_of(&model, &rows[..2]);
        let dir = tempfile::tempdir().unwrap();
        let tokens = dapt_trainer::TrainableTokens {
            rows: 40..61,
            output_table: !tied,
        };
        dapt_trainer::save_adapter(dir.path(), &adapters, &options, None, Some(&tokens)).unwrap();
        let config: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(dir.path().join("adapter_config.json")).unwrap(),
        )
        .unwrap();
        let listed = config["trainable_token_indices"]["embed_tokens"]
            .as_array()
            .unwrap();
        assert_eq!((listed.len(), listed[0].as_i64()), (21, Some(40)));
        assert_eq!(
            config["trainable_token_indices"]["lm_head"].is_array(),
            !tied
        );
        let saved = read_safetensors(&dir.path().join("adapter_model.safetensors")).unwrap();
        assert!(saved.iter().any(|(n, t)| n
            == "base_model.model.model.embed_tokens.token_adapter.trainable_tokens_delta"
            && t.size() == [21, 32]));
        model.merge_lora();
        assert!(max_difference(&logits_of(&model, &rows[..2]), &adapted) < 1e-4);
        for (name, tensor) in vs.variables() {
            if name.contains("embed_tokens") || name.contains("lm_head") {
                assert!(
                    tensor
                        .narrow(0, 0, 40)
                        .equal(&before[&name].narrow(0, 0, 40)),
                    "{name}: old rows moved"
                );
                assert!(
                    !tensor
                        .narrow(0, 40, 21)
                        .equal(&before[&name].narrow(0, 40, 21)),
                    "{name}: new rows did not train"
                );
            }
        }
        // The saved adapter on the untouched base gives the adapted logits.
        let fresh_vs = nn::VarStore::new(Device::Cpu);
        let mut fresh = CausalLm::new(&fresh_vs.root(), &tiny("llama", tied)).unwrap();
        dapt_trainer::tch::no_grad(|| {
            for (name, mut tensor) in fresh_vs.variables() {
                tensor.copy_(&before[&name]);
            }
        });
        let (_store, _, layers) = fresh.load_adapter(dir.path(), Device::Cpu).unwrap();
        assert_eq!(layers, 14);
        assert_eq!(fresh.token_rows_from(), Some(40));
        assert!(
            max_difference(&logits_of(&fresh, &rows[..2]), &adapted) < 1e-4,
            "tied {tied}"
        );
    }
}

/// A tiny Llama (`tied` embeddings or not) made with `seed`, saved in a fresh directory.
fn saved_tiny(seed: i64, tied: bool) -> (CausalLm, tempfile::TempDir) {
    dapt_trainer::tch::manual_seed(seed);
    let vs = nn::VarStore::new(Device::Cpu);
    let model = CausalLm::new(&vs.root(), &tiny("llama", tied)).unwrap();
    let base = tempfile::tempdir().unwrap();
    model.save(&vs, base.path()).unwrap();
    (model, base)
}

/// New-token specs `(id, decomposition)`.
fn new_tokens(specs: &[(i64, &[i64])]) -> Vec<NewTokenSpec> {
    specs
        .iter()
        .map(|&(id, pieces)| NewTokenSpec {
            id,
            text: format!("t{id}"),
            decomposition: pieces.to_vec(),
        })
        .collect()
}

/// Resizing grows both tables, new rows are the mean of their sub-token rows, the model loads, and
/// training with old rows frozen changes only new rows.
#[test]
fn resize_initialises_new_rows_as_subtoken_means_and_freezing_keeps_old_rows() {
    let _rng = rng_lock();
    let (model, base) = saved_tiny(8, false);
    let tokens = new_tokens(&[(61, &[3, 4]), (62, &[3, 4, 10]), (64, &[])]);
    let out = tempfile::tempdir().unwrap();
    let report = dapt_trainer::resize_embeddings(
        base.path(),
        &tokens,
        64,
        ResizeInit::Mean,
        1,
        None,
        out.path(),
    )
    .unwrap();
    assert_eq!((report.old_rows, report.new_rows), (61, 65));
    assert_eq!(report.from_subtokens, 2);
    assert_eq!(
        report.random, 2,
        "id 63 (padding) and id 64 (no decomposition)"
    );
    let (vs2, resized) = CausalLm::load(out.path(), Device::Cpu, Kind::Float).unwrap();
    assert_eq!(resized.config().vocab_size, 65);
    for (table_old, table_new) in [
        (model.input_embeddings(), resized.input_embeddings()),
        (
            model.output_embeddings().unwrap(),
            resized.output_embeddings().unwrap(),
        ),
    ] {
        assert!(table_new.narrow(0, 0, 61).equal(table_old));
        let expected = (table_old.get(3) + table_old.get(4)) / 2.0;
        assert!(max_difference(&table_new.get(61), &expected) < 1e-7);
        let expected = (table_old.get(3) + table_old.get(4) + table_old.get(10)) / 3.0;
        assert!(max_difference(&table_new.get(62), &expected) < 1e-7);
    }
    // Train with the old rows frozen.
    let before_in = resized.input_embeddings().copy();
    let options = TrainOptions {
        steps: 5,
        batch_size: 2,
        learning_rate: 1e-2,
        warmup_steps: 1,
        ..Default::default()
    };
    let options = TrainSettings::try_from(options).unwrap();
    let trainer = Trainer {
        freeze_embeddings_below: Some(61),
        ..Trainer::new(&resized, &vs2, &options, 2)
    };
    let rows: Vec<PackedRow> = (0..4)
        .map(|r| single(&[61, 3 + r, 62, 64, 5, 61, 62, 7]))
        .collect();
    let mut data = InMemoryRows::new(rows, 2).unwrap();
    trainer.run(&mut data, false, |_| {}).unwrap();
    let after_in = resized.input_embeddings();
    assert!(
        after_in.narrow(0, 0, 61).equal(&before_in.narrow(0, 0, 61)),
        "old rows frozen"
    );
    assert!(
        !after_in.get(61).equal(&before_in.get(61)),
        "new rows train"
    );
}

/// Feeding a prompt and then one token at a time through the KV cache gives the logits of one full
/// forward pass (Qwen3 fixture, GQA and q/k norms included).
#[test]
fn kv_cache_matches_the_full_forward() {
    let (_vs, model) = CausalLm::load(&fixture("qwen3"), Device::Cpu, Kind::Float).unwrap();
    let (rows, expected) = reference(&fixture("qwen3"));
    let ids: Vec<i64> = rows[0].input_ids.iter().map(|&i| i64::from(i)).collect();
    let mut cache = dapt_trainer::KvCache::default();
    let prompt = Tensor::from_slice(&ids[..5]).unsqueeze(0);
    let mut pieces = vec![dapt_trainer::tch::no_grad(|| {
        model.forward_cached(&prompt, &mut cache)
    })];
    for &id in &ids[5..] {
        let next = Tensor::from_slice(&[id]).unsqueeze(0);
        pieces.push(dapt_trainer::tch::no_grad(|| {
            model.forward_cached(&next, &mut cache)
        }));
    }
    assert_eq!(cache.len(), ids.len() as i64);
    let incremental = Tensor::cat(&pieces, 1).squeeze_dim(0);
    let difference = max_difference(&incremental, &expected.get(0));
    assert!(difference < 1e-4, "cached vs transformers: {difference}");
}

/// A checkpoint sharded HF-style (`model.safetensors.index.json` + shards) and one stored in bfloat16
/// load into the same model: the shards give identical logits, bf16 weights give logits within bf16
/// rounding of the float32 ones.
#[test]
fn sharded_and_bf16_checkpoints_load() {
    let source = fixture("qwen2");
    let tensors = read_safetensors(&source.join("model.safetensors")).unwrap();
    let (rows, expected) = reference(&source);

    let sharded = tempfile::tempdir().unwrap();
    std::fs::copy(
        source.join("config.json"),
        sharded.path().join("config.json"),
    )
    .unwrap();
    let (first, second): (Vec<_>, Vec<_>) = tensors
        .iter()
        .map(|(n, t)| (n.clone(), t.shallow_clone()))
        .partition(|(n, _)| n.contains("layers.0") || n.contains("embed"));
    let mut weight_map = serde_json::Map::new();
    for (file, part) in [
        ("model-00001-of-00002.safetensors", &first),
        ("model-00002-of-00002.safetensors", &second),
    ] {
        dapt_trainer::weights::save_safetensors(&sharded.path().join(file), part).unwrap();
        for (name, _) in part {
            weight_map.insert(name.clone(), file.into());
        }
    }
    std::fs::write(
        sharded.path().join("model.safetensors.index.json"),
        serde_json::json!({ "metadata": {}, "weight_map": weight_map }).to_string(),
    )
    .unwrap();
    let (_vs, model) = CausalLm::load(sharded.path(), Device::Cpu, Kind::Float).unwrap();
    assert!(max_difference(&logits_of(&model, &rows), &expected) < 1e-4);

    let bf16 = tempfile::tempdir().unwrap();
    std::fs::copy(source.join("config.json"), bf16.path().join("config.json")).unwrap();
    let halved: Vec<(String, Tensor)> = tensors
        .iter()
        .map(|(n, t)| (n.clone(), t.to_kind(Kind::BFloat16)))
        .collect();
    dapt_trainer::weights::save_safetensors(&bf16.path().join("model.safetensors"), &halved)
        .unwrap();
    let (vs, model) = CausalLm::load(bf16.path(), Device::Cpu, Kind::Float).unwrap();
    assert!(vs.variables().values().all(|t| t.kind() == Kind::Float));
    let difference = max_difference(&logits_of(&model, &rows), &expected);
    assert!(
        difference > 0.0 && difference < 0.5,
        "bf16 weights: {difference}"
    );
}

/// Two micro-batches of two rows accumulate to the gradient of one batch of four: the loss is averaged
/// over all target tokens of the window, not per micro-batch.
#[test]
fn gradient_accumulation_equals_one_large_batch() {
    let _rng = rng_lock();
    let run = |batch_size: usize, grad_accumulation: usize| -> Vec<StepMetrics> {
        dapt_trainer::tch::manual_seed(13);
        let vs = nn::VarStore::new(Device::Cpu);
        let model = CausalLm::new(&vs.root(), &tiny("llama", false)).unwrap();
        let options = TrainOptions {
            steps: 3,
            batch_size,
            grad_accumulation,
            learning_rate: 1e-2,
            warmup_steps: 1,
            ..Default::default()
        };
        let options = TrainSettings::try_from(options).unwrap();
        let trainer = Trainer::new(&model, &vs, &options, 4);
        // Rows of different lengths of targets, so that per-micro-batch averaging would differ.
        let rows: Vec<PackedRow> = (0..12)
            .map(|r| {
                let used = 6 + 2 * (r % 5);
                let mut ids: Vec<i32> = (0..used).map(|i| (i * 3 + r) % 50 + 2).collect();
                ids.resize(16, 0);
                PackedRow {
                    input_ids: ids,
                    segment_lengths: vec![used],
                    loss_mask: (0..16).map(|i| i < used).collect(),
                    ..Default::default()
                }
            })
            .collect();
        let mut data = InMemoryRows::new(rows, 4).unwrap();
        trainer.run(&mut data, false, |_| {}).unwrap().history
    };
    let large = run(4, 1);
    let accumulated = run(2, 2);
    for (a, b) in large.iter().zip(&accumulated) {
        assert_eq!(a.tokens, b.tokens);
        assert!(
            (a.loss - b.loss).abs() < 1e-6,
            "loss {} vs {}",
            a.loss,
            b.loss
        );
        assert!(
            (a.grad_norm - b.grad_norm).abs() < 1e-5,
            "grad norm {} vs {}",
            a.grad_norm,
            b.grad_norm
        );
    }
}

/// dapt's AdamW takes the steps `torch.optim.AdamW` takes (decoupled decay on weights, none on norms;
/// fixture from the generating script).
#[test]
fn adamw_matches_torch() {
    let fixture: BTreeMap<String, Tensor> = read_safetensors(&fixture("adamw.safetensors"))
        .unwrap()
        .into_iter()
        .collect();
    let vs = nn::VarStore::new(Device::Cpu);
    let w = (vs.root() / "layer").var_copy("weight", &fixture["w0"]);
    let n = (vs.root() / "norm").var_copy("weight", &fixture["n0"]);
    let mut optimizer = dapt_trainer::AdamW::new(&vs, 0.9, 0.95, 1e-8, 0.1);
    for (step, lr) in [1e-2, 5e-3, 2e-3].into_iter().enumerate() {
        optimizer.zero_grad();
        let loss = (&w * &fixture[&format!("gw{step}")]).sum(Kind::Float)
            + (&n * &fixture[&format!("gn{step}")]).sum(Kind::Float);
        loss.backward();
        optimizer.step(lr);
        let dw = max_difference(&w, &fixture[&format!("w{}", step + 1)]);
        let dn = max_difference(&n, &fixture[&format!("n{}", step + 1)]);
        assert!(dw < 1e-6 && dn < 1e-6, "step {step}: {dw} {dn}");
    }
}

/// The `cuda` feature's flash varlen path. `cargo test -p dapt-trainer --features cuda` on a machine
/// with a CUDA device and a CUDA LibTorch; CI (no GPU) never builds it.
#[cfg(feature = "cuda")]
mod cuda {
    use super::*;

    /// Rows of several documents each, with pads at the end of one.
    fn packed_rows(seq_len: usize) -> Vec<PackedRow> {
        let lengths: [&[i32]; 3] = [&[5, 11, 16], &[32], &[3, 9, 7]];
        lengths
            .iter()
            .enumerate()
            .map(|(r, lengths)| {
                let used: i32 = lengths.iter().sum();
                let mut ids: Vec<i32> = (0..used).map(|i| 1 + (i * 7 + r as i32) % 59).collect();
                ids.resize(seq_len, 0);
                PackedRow {
                    input_ids: ids,
                    segment_lengths: lengths.to_vec(),
                    loss_mask: (0..seq_len).map(|i| i < used as usize).collect(),
                    ..Default::default()
                }
            })
            .collect()
    }

    /// Per-token losses and the gradient of `q_proj` of the first layer, under bf16 autocast.
    fn losses_and_gradient(model: &CausalLm, vs: &nn::VarStore, batch: &Batch) -> (Tensor, Tensor) {
        let mut optimizer_free = vs.trainable_variables();
        for v in &mut optimizer_free {
            v.zero_grad();
        }
        let losses = dapt_trainer::tch::autocast(true, || model.token_losses(batch));
        losses.sum(Kind::Float).backward();
        let grad = vs.variables()["model.layers.0.self_attn.q_proj.weight"]
            .grad()
            .copy();
        (
            losses.to_kind(Kind::Float).to_device(Device::Cpu),
            grad.to_device(Device::Cpu),
        )
    }

    /// The flash kernel keeps to segments exactly as the mask does: per-token losses and
    /// gradients agree with SDPA + block-diagonal mask within bf16 rounding, and each packed
    /// document's losses do not depend on its neighbours.
    #[test]
    fn flash_varlen_attention_equals_the_masked_path() {
        assert!(
            dapt_trainer::tch::Cuda::is_available(),
            "the cuda feature's tests need a CUDA device"
        );
        let _rng = rng_lock();
        dapt_trainer::tch::manual_seed(5);
        let device = Device::Cuda(0);
        let vs = nn::VarStore::new(device);
        let mut config = tiny("qwen3", false);
        config.head_dim = Some(16);
        config.hidden_size = 64;
        config.num_attention_heads = 4;
        config.num_key_value_heads = 2;
        let model = CausalLm::new(&vs.root(), &config).unwrap();
        let rows = packed_rows(32);
        let refs: Vec<&PackedRow> = rows.iter().collect();
        let batch = Batch::from_rows(&refs, device);
        model.set_flash_attention(false);
        let (masked, masked_grad) = losses_and_gradient(&model, &vs, &batch);
        model.set_flash_attention(true);
        let (flash, flash_grad) = losses_and_gradient(&model, &vs, &batch);
        let difference = max_difference(&masked, &flash);
        assert!(difference < 2e-2, "losses differ by {difference}");
        let scale = masked_grad.abs().max().double_value(&[]);
        let difference = max_difference(&masked_grad, &flash_grad) / scale;
        assert!(
            difference < 5e-2,
            "gradients differ by {difference} (relative)"
        );
        // A document alone gives the losses it has inside the packed row.
        let alone = single(&rows[0].input_ids[5..16]);
        let alone_batch = Batch::from_rows(&[&alone], device);
        let (alone_losses, _) = losses_and_gradient(&model, &vs, &alone_batch);
        let difference = max_difference(&flash.get(0).narrow(0, 5, 11), &alone_losses.get(0));
        assert!(
            difference < 2e-2,
            "document in the row vs alone: {difference}"
        );
    }
}

/// The shim reaches ATen's flash kernel and brings its errors back as messages: on CPU tensors
/// (where PyTorch has no flash kernel) the call fails with ATen's own words instead of crashing.
#[cfg(feature = "cuda")]
#[test]
fn flash_shim_reports_atens_errors() {
    let q = Tensor::zeros([8, 2, 16], (Kind::BFloat16, Device::Cpu));
    let cu = Tensor::from_slice(&[0i32, 8]);
    let error = dapt_trainer::flash_varlen_attention(&q, &q, &q, &cu, 8).unwrap_err();
    assert!(error.contains("flash_attention"), "{error}");
    println!("{}", error.lines().next().unwrap_or(""));
}

/// Losses and target scores are computed over chunks of positions (a bounded working set of logits):
/// with a vocabulary of 2²⁰ tokens a chunk holds 32 positions, so two rows of 100 tokens take seven
/// chunks — and the results equal those of one whole `[b, t, vocab]` computation (up to the rounding
/// of matrix products of another shape).
#[test]
fn chunked_losses_and_scores_equal_the_whole_computation() {
    let _guard = rng_lock();
    dapt_trainer::tch::manual_seed(7);
    let config = ModelConfig {
        vocab_size: 1 << 20,
        hidden_size: 8,
        intermediate_size: 16,
        num_hidden_layers: 1,
        num_attention_heads: 2,
        num_key_value_heads: 1,
        max_position_embeddings: 128,
        tie_word_embeddings: true,
        ..ModelConfig::default()
    };
    let vs = nn::VarStore::new(Device::Cpu);
    let model = CausalLm::new(&vs.root(), &config).unwrap();
    assert_eq!(dapt_trainer::LOGIT_CHUNK_ELEMENTS / config.vocab_size, 32);
    let rows: Vec<PackedRow> = (0..2)
        .map(|r| PackedRow {
            input_ids: (0..100)
                .map(|i| (i * 7919 + r * 104_729) % (1 << 20))
                .collect(),
            segment_lengths: vec![60, 40],
            loss_mask: vec![true; 100],
            ..Default::default()
        })
        .collect();
    let refs: Vec<&PackedRow> = rows.iter().collect();
    let batch = Batch::from_rows(&refs, Device::Cpu);
    dapt_trainer::tch::no_grad(|| {
        let whole = model
            .forward(&batch.input_ids, &batch.positions, &batch.mask)
            .log_softmax(-1, Kind::Float);
        // Token losses and their sum.
        let nll = -whole
            .gather(2, &batch.targets.clamp_min(0).unsqueeze(2), false)
            .squeeze_dim(2)
            * batch.targets.ne(-100).to_kind(Kind::Float);
        let losses = model.token_losses(&batch);
        assert!(max_difference(&losses, &nll) < 1e-5);
        let sum = model.loss_sum(&batch).double_value(&[]);
        let expected = nll.sum(Kind::Double).double_value(&[]);
        assert!(
            (sum - expected).abs() < 1e-3 * expected.abs(),
            "{sum} vs {expected}"
        );
        // Scores of chosen targets at every third position, with the top 3.
        let mut targets = vec![-100i64; 200];
        for (p, target) in targets.iter_mut().enumerate().step_by(3) {
            *target = (p * 31) as i64;
        }
        let targets = Tensor::from_slice(&targets).view([2, 100]);
        let scores = model.score_targets(&batch, &targets, 3);
        let index = Vec::<i64>::try_from(&scores.index).unwrap();
        assert_eq!(index, (0..200).step_by(3).collect::<Vec<i64>>());
        let flat = whole.view([200, -1]);
        let chosen = targets.view([-1]).index_select(0, &scores.index);
        let want = flat
            .index_select(0, &scores.index)
            .gather(1, &chosen.unsqueeze(1), false)
            .squeeze_dim(1);
        // Equal up to the rounding of matrix products of another shape.
        assert!(
            max_difference(&scores.logprob, &want) < 1e-5,
            "target log-probabilities"
        );
        let (values, ids) = scores.top.unwrap();
        let (want_values, want_ids) = flat.index_select(0, &scores.index).topk(3, -1, true, true);
        assert!(
            max_difference(&values, &want_values) < 1e-5 && ids.equal(&want_ids),
            "top tokens"
        );
        let greedy = flat
            .index_select(0, &scores.index)
            .argmax(1, false)
            .eq_tensor(&chosen);
        assert!(scores.greedy.equal(&greedy));
    });
}

/// The `frequency` init unties a tied model; new input rows are sub-token means; each new token's
/// output row is its first piece's plus `log P(t | piece)` along `u/|u|²`, so at the mean hidden
/// state `u` the group of a piece (the piece alone and the new tokens starting with it) gets exactly
/// the base's logit of the piece, split by the counts.
#[test]
fn frequency_init_splits_the_first_pieces_probability_by_counts() {
    let _rng = rng_lock();
    let (model, base) = saved_tiny(9, true);
    let tokens = new_tokens(&[(61, &[3, 4]), (62, &[3, 4, 10]), (63, &[7, 8])]);
    let sequences = vec![vec![1i64, 2, 3, 4, 5], vec![9, 8, 7]];
    let hidden_mean = dapt_trainer::mean_final_hidden(base.path(), &sequences).unwrap();
    let expected_mean = dapt_trainer::tch::no_grad(|| {
        let a = model.final_hidden(&Tensor::from_slice(&sequences[0]).unsqueeze(0));
        let b = model.final_hidden(&Tensor::from_slice(&sequences[1]).unsqueeze(0));
        Tensor::cat(&[a.squeeze_dim(0), b.squeeze_dim(0)], 0).mean_dim(0, false, Kind::Float)
    });
    assert!(max_difference(&Tensor::from_slice(&hidden_mean), &expected_mean) < 1e-5);
    let mut counts = vec![0u64; 64];
    (counts[3], counts[61], counts[62], counts[7], counts[63]) = (5, 10, 3, 0, 20);
    let statistics = dapt_trainer::FrequencyStatistics {
        counts,
        hidden_mean: hidden_mean.clone(),
    };
    let out = tempfile::tempdir().unwrap();
    let missing = dapt_trainer::resize_embeddings(
        base.path(),
        &tokens,
        64,
        ResizeInit::Frequency,
        1,
        None,
        out.path(),
    )
    .unwrap_err()
    .to_string();
    assert!(missing.contains("frequency"), "{missing}");
    let report = dapt_trainer::resize_embeddings(
        base.path(),
        &tokens,
        64,
        ResizeInit::Frequency,
        1,
        Some(&statistics),
        out.path(),
    )
    .unwrap();
    assert!(!report.tied);
    assert_eq!(report.frequency_biased, 3);
    let (_vs2, resized) = CausalLm::load(out.path(), Device::Cpu, Kind::Float).unwrap();
    assert!(!resized.config().tie_word_embeddings);
    let old = model.input_embeddings();
    let input = resized.input_embeddings();
    assert!(input.narrow(0, 0, 61).equal(old));
    let mean = (old.get(3) + old.get(4)) / 2.0;
    assert!(max_difference(&input.get(61), &mean) < 1e-7);
    let head = resized.output_embeddings().unwrap();
    let u = Tensor::from_slice(&hidden_mean);
    let logit = |table: &Tensor, id: i64| table.get(id).dot(&u).double_value(&[]);
    // Group of piece 3: alone 5, 61: 10, 62: 3 → add-one over 3 members: 6, 11, 4 of 21.
    for (id, share) in [(3, 6.0 / 21.0), (61, 11.0 / 21.0), (62, 4.0 / 21.0)] {
        let got = logit(head, id) - logit(old, 3);
        assert!((got - f64::ln(share)).abs() < 1e-4, "{id}: {got}");
    }
    let group: f64 = [3, 61, 62].iter().map(|&id| logit(head, id).exp()).sum();
    assert!((group.ln() - logit(old, 3)).abs() < 1e-4);
    // Piece 7 alone never occurs: most of its probability goes to 63.
    let got = logit(head, 63) - logit(old, 7);
    assert!((got - f64::ln(21.0 / 22.0)).abs() < 1e-4, "{got}");
    // Rows of pieces that start no new token are unchanged.
    assert!(head.get(5).equal(&old.get(5)));
}
