//! HF `tokenizers` against the fast backend (`dapt_packer::FastEncoder`) on the same mixed corpus
//! (Russian, English, code, math) with the same tokenizer, one thread: MB/s and tokens/s, best of
//! `DAPT_BENCH_ROUNDS` alternating rounds. Each round starts from freshly loaded tokenizers, so
//! the first pass pays for every piece not seen before (70k distinct pieces in these 10 MB); the
//! fast backend's second pass over the same text ("steady") is the rate of a long job whose
//! frequent pieces are cached.
//!
//! Run: `cargo bench --bench encoders` (release) or `cargo bench --profile dev --bench encoders`.
use std::path::PathBuf;
use std::time::Instant;

/// The test data (built by `scripts/test-data`; a missing folder fails naming that command).
fn test_data() -> PathBuf {
    dapt_test_data::dir()
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let mut texts = Vec::new();
    for file in [
        "ru/gimp-help-ru.jsonl",
        "en/python3.11-doc.jsonl",
        "code/rust-src.jsonl",
        "math/pari-doc-tex.jsonl",
    ] {
        let mut taken = 0;
        for line in std::fs::read_to_string(test_data().join("corpus").join(file))
            .unwrap()
            .lines()
        {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            let t = v["text"].as_str().unwrap().to_string();
            taken += t.len();
            texts.push(t);
            if taken > 2_500_000 {
                break;
            }
        }
    }
    let bytes: usize = texts.iter().map(String::len).sum();
    println!(
        "corpus: {} documents, {:.1} MB, one thread",
        texts.len(),
        bytes as f64 / 1e6
    );
    // `DAPT_BENCH_TOKENIZERS=llama3_1,gpt2` picks tokenizers; `DAPT_BENCH_FAST_ONLY=1` skips HF
    // (for profiling the fast backend alone).
    let names = std::env::var("DAPT_BENCH_TOKENIZERS").unwrap_or("qwen3,llama3_1,gpt2".into());
    let fast_only = std::env::var_os("DAPT_BENCH_FAST_ONLY").is_some();
    // Shared machines are noisy: each backend runs `DAPT_BENCH_ROUNDS` times (default 3),
    // alternating, and the best round of each is compared.
    let rounds: usize = std::env::var("DAPT_BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    for name in names.split(',') {
        let path = test_data().join(format!("tokenizers/{name}/tokenizer.json"));
        let (mut hf_best, mut fast_best, mut steady_best) = (f64::MAX, f64::MAX, f64::MAX);
        let (mut hf_tokens, mut fast_tokens) = (0, 0);
        for round in 0..rounds {
            // Fresh tokenizers each round: no round starts with the words of an earlier one cached.
            let hf = dapt_packer::TokenizerFile::load(&path).unwrap();
            let started = Instant::now();
            let fast = dapt_packer::TokenizerFile::load(&path)
                .unwrap()
                .with_encoder(dapt_packer::EncoderChoice::Fast)
                .unwrap();
            if round == 0 {
                println!(
                    "{name}: loaded with the fast encoder in {:.2} s",
                    started.elapsed().as_secs_f64()
                );
            }
            let started = Instant::now();
            fast_tokens = texts
                .iter()
                .map(|t| fast.encode("bench", t).unwrap().len())
                .sum();
            fast_best = fast_best.min(started.elapsed().as_secs_f64());
            let started = Instant::now();
            let again: usize = texts
                .iter()
                .map(|t| fast.encode("bench", t).unwrap().len())
                .sum();
            steady_best = steady_best.min(started.elapsed().as_secs_f64());
            assert_eq!(again, fast_tokens);
            if fast_only {
                continue;
            }
            let started = Instant::now();
            hf_tokens = texts
                .iter()
                .map(|t| {
                    hf.tokenizer()
                        .unwrap()
                        .encode_fast(t.as_str(), false)
                        .unwrap()
                        .len()
                })
                .sum();
            hf_best = hf_best.min(started.elapsed().as_secs_f64());
        }
        let rate = |seconds: f64| bytes as f64 / 1e6 / seconds;
        if fast_only {
            println!(
                "{name:<9} fast {:>6.2} MB/s {:>9.0} tokens/s | steady {:>6.2} MB/s",
                rate(fast_best),
                fast_tokens as f64 / fast_best,
                rate(steady_best)
            );
            continue;
        }
        assert_eq!(hf_tokens, fast_tokens);
        println!(
            "{name:<9} HF {:>6.2} MB/s {:>9.0} tokens/s | fast {:>6.2} MB/s {:>9.0} tokens/s | {:.1}x | fast steady {:>6.2} MB/s (best of {rounds})",
            rate(hf_best),
            hf_tokens as f64 / hf_best,
            rate(fast_best),
            fast_tokens as f64 / fast_best,
            hf_best / fast_best,
            rate(steady_best)
        );
    }
}
