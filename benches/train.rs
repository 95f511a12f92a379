//! Training throughput on CPU: one full optimiser step (forward, backward, clipping, AdamW) of a small
//! Qwen3-shaped model on packed rows, in dapt (tch) and — when a Python with torch and transformers is
//! at hand — the same step in PyTorch-Python (HF transformers' Qwen3 + `torch.optim.AdamW`). Then the
//! real model: SmolLM2-135M-Instruct (the test data's GGUF, imported by `dapt model import-gguf`) with
//! LoRA r = 8 on every linear layer, 4×256 tokens per step, in dapt and in HF transformers + PEFT
//! (`DAPT_BENCH_MODEL=0` skips it), and on a processor with AMX or AVX512-BF16 dapt's step under
//! bf16 autocast (`bf16_cpu`) too. Prints target tokens/s for each (the median over steps, after
//! one warm-up step), the ratios and peak RSS.
//!
//! Run: `cargo bench --profile dev --bench train`. `DAPT_BENCH_PYTHON` names the Python to compare
//! with (default `python3`; skipped when it has no torch/transformers). `DAPT_BENCH_STEPS` (default 8).
//!
//! On a GPU machine: `DAPT_BENCH_DEVICE=cuda cargo bench --profile dev --features cuda --bench train`
//! trains a Qwen2.5-0.5B-shaped model (random weights) in bf16 autocast with the flash varlen kernel
//! on packed rows of several documents each and prints tokens/s and MFU against
//! `DAPT_BENCH_PEAK_TFLOPS` (default 989, H100 SXM dense bf16).
use std::process::Command;

use dapt_core::PackedRow;
use dapt_trainer::tch::{nn, Device, Kind};
use dapt_trainer::{
    CausalLm, InMemoryRows, LoraOptions, ModelConfig, TrainOptions, TrainSettings, Trainer,
};

const HIDDEN: i64 = 256;
const LAYERS: i64 = 4;
const HEADS: i64 = 4;
const KV_HEADS: i64 = 2;
const HEAD_DIM: i64 = 64;
const INTERMEDIATE: i64 = 768;
const VOCAB: i64 = 8192;
const SEQ: usize = 256;
const BATCH: usize = 8;

const PYTHON: &str = r#"
import sys, time, torch
from transformers import Qwen3Config, AutoModelForCausalLM
H, L, NH, KV, HD, I, V, SEQ, B, STEPS = map(int, sys.argv[1:])
torch.manual_seed(0)
config = Qwen3Config(vocab_size=V, hidden_size=H, intermediate_size=I, num_hidden_layers=L,
                     num_attention_heads=NH, num_key_value_heads=KV, head_dim=HD, tie_word_embeddings=True)
model = AutoModelForCausalLM.from_config(config, dtype=torch.float32, attn_implementation="sdpa")
model.train()
opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.1)
ids = torch.randint(0, V, (B, SEQ))
def step():
    opt.zero_grad()
    out = model(input_ids=ids, labels=ids)
    out.loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
step()
rates = []
for _ in range(STEPS):
    start = time.perf_counter()
    step()
    rates.append(B * (SEQ - 1) / (time.perf_counter() - start))
print(sorted(rates)[len(rates) // 2])
"#;

/// The same LoRA step in HF transformers + PEFT on the imported model directory; prints tokens/s and the
/// process's peak RSS in MB.
const PYTHON_LORA: &str = r#"
import resource, sys, time, torch
from transformers import AutoModelForCausalLM
from peft import LoraConfig, get_peft_model
path = sys.argv[1]
SEQ, B, STEPS, R = map(int, sys.argv[2:])
torch.manual_seed(0)
model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation="sdpa")
model = get_peft_model(model, LoraConfig(r=R, lora_alpha=2 * R, lora_dropout=0.0, target_modules=[
    "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]))
model.train()
opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4, betas=(0.9, 0.95),
                        weight_decay=0.0)
V = model.config.vocab_size
rows = [[(i * 7919 + r * 104729) % V for i in range(SEQ)] for r in range(B * (STEPS + 1))]
def step(s):
    ids = torch.tensor(rows[s * B:(s + 1) * B])
    opt.zero_grad()
    out = model(input_ids=ids, labels=ids)
    out.loss.backward()
    torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], 1.0)
    opt.step()
step(0)
rates = []
for s in range(1, STEPS + 1):
    start = time.perf_counter()
    step(s)
    rates.append(B * (SEQ - 1) / (time.perf_counter() - start))
print(sorted(rates)[len(rates) // 2], resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024)
"#;

/// Runs `script` with `args` in `python`; its last stdout line, split on whitespace, or why there is none.
fn python_figures(python: &str, script: &str, args: &[String]) -> Result<Vec<f64>, String> {
    match Command::new(python)
        .arg("-c")
        .arg(script)
        .args(args)
        .output()
    {
        Ok(out) if out.status.success() => {
            let text = String::from_utf8_lossy(&out.stdout);
            let figures: Option<Vec<f64>> = text.trim().lines().last().map(|l| {
                l.split_whitespace()
                    .filter_map(|v| v.parse().ok())
                    .collect()
            });
            figures
                .filter(|f| !f.is_empty())
                .ok_or_else(|| format!("no figure ({text})"))
        }
        Ok(out) => Err(format!(
            "not available with {python} ({})",
            String::from_utf8_lossy(&out.stderr)
                .lines()
                .last()
                .unwrap_or("")
        )),
        Err(e) => Err(format!("{python} cannot run ({e})")),
    }
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let steps: usize = std::env::var("DAPT_BENCH_STEPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(8);
    if std::env::var("DAPT_BENCH_DEVICE").is_ok_and(|d| d == "cuda") {
        gpu(steps);
        return;
    }
    let config = ModelConfig {
        model_type: "qwen3".into(),
        vocab_size: VOCAB,
        hidden_size: HIDDEN,
        intermediate_size: INTERMEDIATE,
        num_hidden_layers: LAYERS,
        num_attention_heads: HEADS,
        num_key_value_heads: KV_HEADS,
        head_dim: Some(HEAD_DIM),
        tie_word_embeddings: true,
        ..ModelConfig::default()
    };
    dapt_trainer::tch::manual_seed(0);
    let vs = nn::VarStore::new(Device::Cpu);
    let model = CausalLm::new(&vs.root(), &config).unwrap();
    let parameters: i64 = vs.variables().values().map(|t| t.numel() as i64).sum();
    // One document per row, as many rows as the steps use (no row is repeated).
    let rows = rows(BATCH * (steps + 1), SEQ, VOCAB as usize, &[SEQ as i32]);
    let options = TrainOptions {
        steps: steps + 1,
        batch_size: BATCH,
        warmup_steps: 1,
        ..Default::default()
    };
    let options = TrainSettings::try_from(options).expect("valid training options");
    let trainer = Trainer::new(&model, &vs, &options, 0);
    let mut data = InMemoryRows::new(rows, 0).unwrap();
    let mut rates = Vec::new();
    trainer
        .run(&mut data, false, |m| {
            // The first step warms up allocators; the median of the rest is the figure.
            if m.step > 0 {
                rates.push(m.tokens_per_second);
            }
        })
        .unwrap();
    let dapt = median(rates);
    println!(
        "train step (CPU, {} threads): Qwen3-shaped {:.1}M parameters, {BATCH}×{SEQ} tokens per step, {steps} steps",
        dapt_trainer::tch::get_num_threads(),
        parameters as f64 / 1e6
    );
    println!("  dapt (tch):       {dapt:>10.0} tokens/s");
    let python = std::env::var("DAPT_BENCH_PYTHON").unwrap_or_else(|_| "python3".into());
    let args: Vec<String> = [
        HIDDEN,
        LAYERS,
        HEADS,
        KV_HEADS,
        HEAD_DIM,
        INTERMEDIATE,
        VOCAB,
        SEQ as i64,
        BATCH as i64,
        steps as i64,
    ]
    .iter()
    .map(|v| v.to_string())
    .collect();
    match python_figures(&python, PYTHON, &args) {
        Ok(figures) => {
            let torch = figures[0];
            println!("  PyTorch-Python:   {torch:>10.0} tokens/s  ({python})");
            println!("  dapt / PyTorch:   {:>10.2}×", dapt / torch);
        }
        Err(why) => println!("  PyTorch-Python: {why}"),
    }
    if std::env::var("DAPT_BENCH_MODEL").is_ok_and(|v| v == "0") {
        return;
    }
    smollm2_lora(steps, &python);
}

/// SmolLM2-135M-Instruct with LoRA (r = 8, every linear layer, no dropout), 4×256 tokens per step.
fn smollm2_lora(steps: usize, python: &str) {
    const SEQ: usize = 256;
    const BATCH: usize = 4;
    const R: i64 = 8;
    let dir = tempfile::tempdir().unwrap();
    let model_dir = dir.path().join("smollm2");
    dapt_recipes::import::import_gguf(
        &dapt_recipes::import::ImportSettings {
            gguf: dapt_test_data::path("models/SmolLM2-135M-Instruct.Q4_1.gguf"),
            out: model_dir.clone(),
            weights: dapt_trainer::WeightType::F32,
        },
        |_, _| {},
    )
    .unwrap();
    let (mut vs, mut model) = CausalLm::load(&model_dir, Device::Cpu, Kind::Float).unwrap();
    vs.freeze();
    let adapters = nn::VarStore::new(Device::Cpu);
    dapt_trainer::tch::manual_seed(0);
    model
        .attach_lora(
            &adapters.root(),
            &LoraOptions {
                r: R,
                alpha: 2.0 * R as f64,
                dropout: 0.0,
                ..Default::default()
            },
        )
        .unwrap();
    let vocab = model.config().vocab_size as usize;
    // The median tokens/s of the steps after the first, in float32 or under bf16 autocast.
    let run = |bf16_cpu: bool| {
        let rows = rows(BATCH * (steps + 1), SEQ, vocab, &[SEQ as i32]);
        let options = TrainOptions {
            steps: steps + 1,
            batch_size: BATCH,
            warmup_steps: 1,
            weight_decay: 0.0,
            bf16_cpu,
            ..Default::default()
        };
        let options = TrainSettings::try_from(options).expect("valid training options");
        let trainer = Trainer {
            trainable: &adapters,
            ..Trainer::new(&model, &vs, &options, 0)
        };
        let mut data = InMemoryRows::new(rows, 0).unwrap();
        let mut rates = Vec::new();
        let outcome = trainer
            .run(&mut data, false, |m| {
                if m.step > 0 {
                    rates.push(m.tokens_per_second);
                }
            })
            .unwrap();
        (median(rates), outcome.trainable_parameters)
    };
    let (dapt, trainable) = run(false);
    let rss = dapt_pipeline::peak_rss_mb().unwrap_or(0);
    println!(
        "train step (CPU, {} threads): SmolLM2-135M-Instruct, LoRA r = {R} on every linear layer ({trainable} trainable parameters), {BATCH}×{SEQ} tokens per step, {steps} steps",
        dapt_trainer::tch::get_num_threads(),
    );
    println!("  dapt (tch):             {dapt:>10.0} tokens/s, peak RSS {rss} MB (this process)");
    if dapt_trainer::autocast::cpu_bf16_native() {
        let (bf16, _) = run(true);
        println!("  dapt, bf16 autocast:    {bf16:>10.0} tokens/s ({:.2}× float32; `bf16_cpu`, AMX / AVX512-BF16)", bf16 / dapt);
    } else {
        println!("  dapt, bf16 autocast:    skipped (no AMX or AVX512-BF16 on this processor)");
    }
    let args = vec![
        model_dir.display().to_string(),
        SEQ.to_string(),
        BATCH.to_string(),
        steps.to_string(),
        R.to_string(),
    ];
    match python_figures(python, PYTHON_LORA, &args) {
        Ok(figures) => {
            let torch = figures[0];
            let rss = figures.get(1).copied().unwrap_or(0.0);
            println!("  transformers + PEFT:    {torch:>10.0} tokens/s, peak RSS {rss:.0} MB  ({python})");
            println!("  dapt / transformers:    {:>10.2}×", dapt / torch);
        }
        Err(why) => println!("  transformers + PEFT: {why}"),
    }
}

/// The GPU figure: a Qwen2.5-0.5B-shaped model, bf16 autocast, flash varlen attention, 4×2048
/// tokens per step in rows of three documents each.
fn gpu(steps: usize) {
    const SEQ: usize = 2048;
    const BATCH: usize = 4;
    assert!(
        dapt_trainer::tch::Cuda::is_available(),
        "DAPT_BENCH_DEVICE=cuda needs a CUDA device"
    );
    let peak_tflops: f64 = std::env::var("DAPT_BENCH_PEAK_TFLOPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(989.0);
    let config = ModelConfig {
        model_type: "qwen2".into(),
        vocab_size: 151_936,
        hidden_size: 896,
        intermediate_size: 4864,
        num_hidden_layers: 24,
        num_attention_heads: 14,
        num_key_value_heads: 2,
        tie_word_embeddings: true,
        ..ModelConfig::default()
    };
    dapt_trainer::tch::manual_seed(0);
    let vs = nn::VarStore::new(Device::Cuda(0));
    let model = CausalLm::new(&vs.root(), &config).unwrap();
    let parameters: i64 = vs.variables().values().map(|t| t.numel() as i64).sum();
    let rows = rows(BATCH * (steps + 1), SEQ, 151_000, &[512, 1024, 512]);
    let options = TrainOptions {
        steps: steps + 1,
        batch_size: BATCH,
        warmup_steps: 1,
        bf16: true,
        peak_tflops,
        ..Default::default()
    };
    let options = TrainSettings::try_from(options).expect("valid training options");
    let trainer = Trainer::new(&model, &vs, &options, 0);
    let mut data = InMemoryRows::new(rows, 0).unwrap();
    let mut timed = Vec::new();
    trainer
        .run(&mut data, false, |m| {
            if m.step > 0 {
                timed.push((m.tokens_per_second, m.mfu.unwrap_or(0.0)));
            }
        })
        .unwrap();
    let n = timed.len().max(1) as f64;
    let tokens_per_second = timed.iter().map(|t| t.0).sum::<f64>() / n;
    let mfu = timed.iter().map(|t| t.1).sum::<f64>() / n;
    println!(
        "train step (CUDA, bf16 autocast, flash varlen): Qwen2.5-0.5B-shaped {:.0}M parameters, {BATCH}×{SEQ} tokens per step in 3 documents per row, {steps} steps",
        parameters as f64 / 1e6
    );
    println!(
        "  dapt (tch):       {tokens_per_second:>10.0} tokens/s, MFU {:.1}% of {peak_tflops} TFLOPS",
        100.0 * mfu
    );
}

/// The median of per-step figures (the machines are noisy; one slow step does not move it).
fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(0.0)
}

/// `count` distinct rows of `seq` token ids below `vocab`, cut into documents of `segments` lengths.
fn rows(count: usize, seq: usize, vocab: usize, segments: &[i32]) -> Vec<PackedRow> {
    (0..count)
        .map(|r| PackedRow {
            input_ids: (0..seq)
                .map(|i| ((i * 7919 + r * 104729) % vocab) as i32)
                .collect(),
            segment_lengths: segments.to_vec(),
            loss_mask: vec![true; seq],
            ..Default::default()
        })
        .collect()
}
