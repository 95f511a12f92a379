//! HF `tokenizers` against the fast backend (`dapt_packer::FastEncoder`) on the same mixed corpus
//! (Russian, English, code, math) with the same tokenizer, one thread: MB/s and tokens/s.
//!
//! Run: `cargo bench --bench encoders` (release) or `cargo bench --profile dev --bench encoders`.
use std::path::PathBuf;
use std::time::Instant;

fn shared() -> PathBuf {
    std::env::var("DAPT_SHARED_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/data"))
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
        for line in std::fs::read_to_string(shared().join("corpus").join(file))
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
    for name in ["qwen3", "llama3_1", "gpt2"] {
        let path = shared().join(format!("tokenizers/{name}/tokenizer.json"));
        let hf = dapt_packer::TokenizerFile::load(&path).unwrap();
        let started = Instant::now();
        let fast = dapt_packer::FastEncoder::from_json(hf.json()).unwrap();
        println!(
            "{name}: fast encoder built in {:.2} s",
            started.elapsed().as_secs_f64()
        );
        let started = Instant::now();
        let hf_tokens: usize = texts
            .iter()
            .map(|t| hf.tokenizer().encode_fast(t.as_str(), false).unwrap().len())
            .sum();
        let hf_seconds = started.elapsed().as_secs_f64();
        let started = Instant::now();
        let fast_tokens: usize = texts.iter().map(|t| fast.encode(t).unwrap().len()).sum();
        let fast_seconds = started.elapsed().as_secs_f64();
        assert_eq!(hf_tokens, fast_tokens);
        println!(
            "{name:<9} HF {:>6.2} MB/s {:>9.0} tokens/s | fast {:>6.2} MB/s {:>9.0} tokens/s | {:.1}x",
            bytes as f64 / 1e6 / hf_seconds,
            hf_tokens as f64 / hf_seconds,
            bytes as f64 / 1e6 / fast_seconds,
            fast_tokens as f64 / fast_seconds,
            hf_seconds / fast_seconds
        );
    }
}
