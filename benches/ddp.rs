//! Data-parallel training throughput on this machine: the same global batch (8 rows × 256 tokens of
//! a Qwen3-shaped 4-layer model, full fine-tuning) trained by one process and by 2 ranks over gloo on
//! 127.0.0.1 (this bench starts itself as the ranks, with an equal share of the cores each), plus
//! ZeRO-1 on 2 ranks. Prints global target tokens/s (median over steps after one warm-up step), the
//! speed-up over one process, and each run's optimiser state per rank.
//!
//! Run: `cargo bench --profile dev --bench ddp`. `DAPT_BENCH_STEPS` (default 8).
use std::process::Command;
use std::sync::Arc;

use dapt_core::PackedRow;
use dapt_trainer::tch::{nn, Device};
use dapt_trainer::{
    CausalLm, Dist, InMemoryRows, Launch, ModelConfig, TrainOptions, TrainSettings, Trainer,
};

const SEQ: usize = 256;
const BATCH: usize = 8;
const VOCAB: i64 = 8192;

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let steps: usize = std::env::var("DAPT_BENCH_STEPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(8);
    let zero1 = std::env::var("DAPT_BENCH_ZERO1").is_ok_and(|v| v == "1");
    if let Some(launch) = Launch::from_env().expect("launch variables") {
        rank(steps, Some(launch), zero1);
        return;
    }
    if std::env::var_os("DAPT_BENCH_SINGLE").is_some() {
        rank(steps, None, zero1);
        return;
    }
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    println!(
        "data-parallel train step (CPU, {cores} cores): Qwen3-shaped model, {BATCH}×{SEQ} tokens per global step, {steps} steps"
    );
    let one = spawn(steps, 1, false);
    println!(
        "  1 process  ({cores} threads):        {:>8.0} tokens/s  optimiser state {:.1} MB",
        one.0,
        one.1 as f64 / 1e6
    );
    for (zero1, label) in [(false, "DDP   "), (true, "ZeRO-1")] {
        let two = spawn(steps, 2, zero1);
        println!(
            "  2 ranks {label} ({} thread(s) each): {:>8.0} tokens/s  optimiser state {:.1} MB per rank  speed-up {:.2}×",
            (cores / 2).max(1),
            two.0,
            two.1 as f64 / 1e6,
            two.0 / one.0
        );
    }
}

/// Runs `world` ranks of this bench (one process when 1) and returns rank 0's tokens/s and optimiser
/// bytes.
fn spawn(steps: usize, world: usize, zero1: bool) -> (f64, i64) {
    let exe = std::env::current_exe().expect("bench executable");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    let children: Vec<_> = (0..world)
        .map(|rank| {
            let mut command = Command::new(&exe);
            command
                .env("DAPT_BENCH_STEPS", steps.to_string())
                .env("OMP_NUM_THREADS", (cores / world).max(1).to_string())
                .env("DAPT_BENCH_ZERO1", if zero1 { "1" } else { "0" });
            if world > 1 {
                command
                    .env("RANK", rank.to_string())
                    .env("WORLD_SIZE", world.to_string())
                    .env("MASTER_ADDR", "127.0.0.1")
                    .env("MASTER_PORT", port.to_string());
            } else {
                command.env("DAPT_BENCH_SINGLE", "1");
            }
            command.output_async()
        })
        .collect();
    let outputs: Vec<_> = children
        .into_iter()
        .map(|c| c.wait_with_output().expect("rank ran"))
        .collect();
    for output in &outputs {
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let line = String::from_utf8_lossy(&outputs[0].stdout).into_owned();
    let mut fields = line.split_whitespace();
    let rate = fields.next().and_then(|v| v.parse().ok()).unwrap_or(0.0);
    let bytes = fields.next().and_then(|v| v.parse().ok()).unwrap_or(0);
    (rate, bytes)
}

trait OutputAsync {
    fn output_async(&mut self) -> std::process::Child;
}

impl OutputAsync for Command {
    fn output_async(&mut self) -> std::process::Child {
        self.stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("start a rank")
    }
}

/// One rank (or the single process): trains and prints `tokens/s optimiser-bytes` on rank 0.
fn rank(steps: usize, launch: Option<Launch>, zero1: bool) {
    let dist = launch.map(|l| Arc::new(Dist::join(&l).expect("join the group")));
    let config = ModelConfig {
        model_type: "qwen3".into(),
        vocab_size: VOCAB,
        hidden_size: 256,
        intermediate_size: 768,
        num_hidden_layers: 4,
        num_attention_heads: 4,
        num_key_value_heads: 2,
        head_dim: Some(64),
        tie_word_embeddings: true,
        ..ModelConfig::default()
    };
    dapt_trainer::tch::manual_seed(0);
    let vs = nn::VarStore::new(Device::Cpu);
    let model = CausalLm::new(&vs.root(), &config).expect("model");
    let rows: Vec<PackedRow> = (0..BATCH * (steps + 1))
        .map(|r| PackedRow {
            input_ids: (0..SEQ)
                .map(|i| ((i * 7919 + r * 104_729) % VOCAB as usize) as i32)
                .collect(),
            segment_lengths: vec![SEQ as i32],
            loss_mask: vec![true; SEQ],
            ..Default::default()
        })
        .collect();
    let options = TrainSettings::try_from(TrainOptions {
        steps: steps + 1,
        batch_size: BATCH,
        warmup_steps: 1,
        ..Default::default()
    })
    .expect("valid options");
    let trainer = Trainer {
        dist: dist.as_deref(),
        zero1,
        ..Trainer::new(&model, &vs, &options, 0)
    };
    let mut data = InMemoryRows::new(rows, 0).expect("rows");
    let mut rates = Vec::new();
    let outcome = trainer
        .run(&mut data, false, |m| {
            if m.step > 0 {
                rates.push(m.tokens_per_second);
            }
        })
        .expect("training");
    rates.sort_by(f64::total_cmp);
    if dist.as_ref().is_none_or(|d| d.rank() == 0) {
        println!(
            "{} {}",
            rates.get(rates.len() / 2).copied().unwrap_or(0.0),
            outcome.optimizer_state_bytes
        );
    }
}
