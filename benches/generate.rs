//! Generation throughput on the real model: SmolLM2-135M-Instruct (the test data's GGUF, imported)
//! continues the first 8 HumanEval prompts greedily, 64 new tokens at most each, one prompt at a time
//! (`dapt_eval::generate`) and as left-padded batches of 4 and 8 (`dapt_eval::generate_batch`, what
//! `dapt eval` does for generative tasks). Prints generated tokens/s (best of `DAPT_BENCH_RUNS`,
//! default 2), the ratio against one at a time, and checks that the batches generated the same text.
//!
//! Run: `cargo bench --profile dev --bench generate`.
use std::io::Read;
use std::time::Instant;

use dapt_eval::{generate, generate_batch, GenerateOptions, Generation};
use dapt_packer::TokenizerFile;
use dapt_trainer::tch::{Device, Kind};
use dapt_trainer::CausalLm;

fn main() {
    let runs: usize = std::env::var("DAPT_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2);
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
    let (_vs, model) = CausalLm::load(&model_dir, Device::Cpu, Kind::Float).unwrap();
    let tokenizer = TokenizerFile::load(&model_dir.join("tokenizer.json")).unwrap();
    let mut text = String::new();
    flate2::read::GzDecoder::new(
        std::fs::File::open(dapt_test_data::path("tasks/human-eval/HumanEval.jsonl.gz")).unwrap(),
    )
    .read_to_string(&mut text)
    .unwrap();
    let prompts: Vec<Vec<u32>> = text
        .lines()
        .take(8)
        .map(|l| {
            let row: serde_json::Value = serde_json::from_str(l).unwrap();
            tokenizer
                .encode("prompt", row["prompt"].as_str().unwrap())
                .unwrap()
        })
        .collect();
    let options = GenerateOptions {
        max_tokens: 64,
        ..GenerateOptions::default()
    };
    let tokens = |gens: &[Generation]| gens.iter().map(|g| g.tokens.len()).sum::<usize>();
    let mut reference: Vec<Generation> = Vec::new();
    let mut single = 0f64;
    for _ in 0..runs {
        let started = Instant::now();
        let gens: Vec<Generation> = prompts
            .iter()
            .map(|p| generate(&model, &tokenizer, p, &options, Device::Cpu).unwrap())
            .collect();
        single = single.max(tokens(&gens) as f64 / started.elapsed().as_secs_f64());
        reference = gens;
    }
    println!(
        "generate (CPU, {} threads): SmolLM2-135M-Instruct, 8 HumanEval prompts ({}–{} tokens), greedy, ≤64 new tokens",
        dapt_trainer::tch::get_num_threads(),
        prompts.iter().map(Vec::len).min().unwrap_or(0),
        prompts.iter().map(Vec::len).max().unwrap_or(0)
    );
    println!(
        "  one at a time : {single:8.1} tokens/s ({} tokens)",
        tokens(&reference)
    );
    for batch in [4usize, 8] {
        let mut best = 0f64;
        let mut same = true;
        for _ in 0..runs {
            let started = Instant::now();
            let mut gens = Vec::new();
            for chunk in prompts.chunks(batch) {
                let seeds = vec![0; chunk.len()];
                gens.extend(
                    generate_batch(&model, &tokenizer, chunk, &options, &seeds, Device::Cpu)
                        .unwrap(),
                );
            }
            best = best.max(tokens(&gens) as f64 / started.elapsed().as_secs_f64());
            same &= gens.iter().zip(&reference).all(|(a, b)| a.text == b.text);
        }
        println!(
            "  batches of {batch} : {best:8.1} tokens/s ({:.2}× one at a time; same text: {same})",
            best / single
        );
    }
}
