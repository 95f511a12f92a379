//! Training throughput on CPU: one full optimiser step (forward, backward, clipping, AdamW) of a small
//! Qwen3-shaped model on packed rows, in dapt (tch) and — when a Python with torch and transformers is
//! at hand — the same step in PyTorch-Python (HF transformers' Qwen3 + `torch.optim.AdamW`). Prints
//! target tokens/s for both and the ratio.
//!
//! Run: `cargo bench --profile dev --bench train`. `DAPT_BENCH_PYTHON` names the Python to compare
//! with (default `python3`; skipped when it has no torch/transformers). `DAPT_BENCH_STEPS` (default 8).
//!
//! On a GPU machine: `DAPT_BENCH_DEVICE=cuda cargo bench --profile dev --features cuda --bench train`
//! trains a Qwen2.5-0.5B-shaped model (random weights) in bf16 autocast with the flash varlen kernel
//! on packed rows of several documents each and prints tokens/s and MFU against
//! `DAPT_BENCH_PEAK_TFLOPS` (default 989, H100 SXM dense bf16).
use std::process::Command;
use std::time::Instant;

use dapt_core::PackedRow;
use dapt_trainer::tch::{nn, Device};
use dapt_trainer::{CausalLm, InMemoryRows, ModelConfig, TrainOptions, Trainer};

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
start = time.perf_counter()
for _ in range(STEPS):
    step()
seconds = time.perf_counter() - start
print(B * (SEQ - 1) * STEPS / seconds)
"#;

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
    let trainer = Trainer::new(&model, &vs, &options, 0);
    let mut data = InMemoryRows::new(rows, 0).unwrap();
    let mut started = None;
    let mut tokens = 0;
    trainer
        .run(&mut data, false, |m| {
            // The first step warms up allocators; time the rest.
            if m.step == 0 {
                started = Some(Instant::now());
            } else {
                tokens += m.tokens;
            }
        })
        .unwrap();
    let seconds = started.map(|s| s.elapsed().as_secs_f64()).unwrap_or(1.0);
    let dapt = tokens as f64 / seconds;
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
    match Command::new(&python)
        .arg("-c")
        .arg(PYTHON)
        .args(&args)
        .output()
    {
        Ok(out) if out.status.success() => {
            let text = String::from_utf8_lossy(&out.stdout);
            match text
                .trim()
                .lines()
                .last()
                .and_then(|l| l.parse::<f64>().ok())
            {
                Some(torch) => {
                    println!("  PyTorch-Python:   {torch:>10.0} tokens/s  ({python})");
                    println!("  dapt / PyTorch:   {:>10.2}×", dapt / torch);
                }
                None => println!("  PyTorch-Python: no figure ({text})"),
            }
        }
        Ok(out) => println!(
            "  PyTorch-Python: not available with {python} ({})",
            String::from_utf8_lossy(&out.stderr)
                .lines()
                .last()
                .unwrap_or("")
        ),
        Err(e) => println!("  PyTorch-Python: {python} cannot run ({e})"),
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
