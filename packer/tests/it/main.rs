//! Integration tests of dapt-packer with real tokenizers and real text from the shared data.
use std::path::PathBuf;

use dapt_packer::{extend, measure, TokenizerFile};

fn shared() -> PathBuf {
    std::env::var("DAPT_SHARED_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/data"))
}

fn texts(file: &str, bytes: usize) -> Vec<String> {
    let mut out = Vec::new();
    let mut total = 0;
    for line in std::fs::read_to_string(shared().join("corpus").join(file))
        .unwrap()
        .lines()
    {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let t = v["text"].as_str().unwrap().to_string();
        total += t.len();
        out.push(t);
        if total >= bytes {
            break;
        }
    }
    out
}

#[test]
fn measure_compares_languages_and_tokenizers() {
    let qwen = TokenizerFile::load(&shared().join("tokenizers/qwen3/tokenizer.json")).unwrap();
    let gpt2 = TokenizerFile::load(&shared().join("tokenizers/gpt2/tokenizer.json")).unwrap();
    let mistral =
        TokenizerFile::load(&shared().join("tokenizers/mistral7b_v01_hf/tokenizer.json")).unwrap();
    let ru = texts("ru/fortunes-ru.jsonl", 300_000);
    let en = texts("en/fortunes.jsonl", 300_000);
    let (qwen_ru, qwen_en) = (measure(&qwen, &ru).unwrap(), measure(&qwen, &en).unwrap());
    let gpt2_ru = measure(&gpt2, &ru).unwrap();
    let mistral_ru = measure(&mistral, &ru).unwrap();
    println!("qwen3 ru {qwen_ru:?}\nqwen3 en {qwen_en:?}\ngpt2 ru {gpt2_ru:?}\nmistral ru {mistral_ru:?}");
    assert_eq!(
        qwen_ru.bytes,
        ru.iter().map(|t| t.len() as u64).sum::<u64>()
    );
    assert_eq!(qwen_ru.documents, ru.len() as u64);
    // Russian costs more tokens per word than English with an English-centred vocabulary, and far
    // more with GPT-2's, which splits most Cyrillic letters into lone bytes; Mistral falls back to
    // <0xNN> byte tokens for some.
    assert!(qwen_ru.tokens_per_word > qwen_en.tokens_per_word * 1.3);
    assert!(gpt2_ru.tokens_per_word > qwen_ru.tokens_per_word * 1.5);
    assert!(gpt2_ru.fallback_share > 0.3, "{gpt2_ru:?}");
    assert!(qwen_en.fallback_share < 0.01 && qwen_ru.fallback_share < 0.05);
    assert!(mistral_ru.fallback_share > 0.0);
    assert!((qwen_en.bytes_per_token - qwen_en.bytes as f64 / qwen_en.tokens as f64).abs() < 1e-12);
}

#[test]
fn extension_appends_domain_tokens_and_keeps_old_ids() {
    let base = TokenizerFile::load(&shared().join("tokenizers/qwen3/tokenizer.json")).unwrap();
    let mut domain = texts("ru/debian-handbook-ru.jsonl", 1_500_000);
    domain.extend(texts("ru/gimp-help-ru.jsonl", 1_000_000));
    let heldout_ru = texts("ru/developers-reference-ru.jsonl", 400_000);
    let heldout_en = texts("en/gnu-standards.jsonl", 400_000);
    let extension = extend(&base, &domain, 1000, 2).unwrap();
    let extended = &extension.tokenizer;
    assert_eq!(extension.new_tokens.len(), 1000);
    assert_eq!(extended.vocab_size(), base.vocab_size() + 1000);

    // New ids come after every old id (Qwen's added tokens end at 151668), in order.
    let first = extension.new_tokens[0].id;
    assert_eq!(first, 151_669);
    for (i, token) in extension.new_tokens.iter().enumerate() {
        assert_eq!(token.id, first + i as u32);
        assert!(token.decomposition.len() >= 2 && token.decomposition.iter().all(|&id| id < first));
        assert_eq!(
            base.decode(&token.decomposition).unwrap(),
            token.text,
            "{token:?}"
        );
    }
    // Every old id decodes to the same string.
    for id in 0..first {
        assert_eq!(
            extended.decode(&[id]).unwrap(),
            base.decode(&[id]).unwrap(),
            "id {id}"
        );
    }
    // Held-out Russian (another document set) needs fewer tokens; English no more.
    let (ru_before, ru_after) = (
        measure(&base, &heldout_ru).unwrap(),
        measure(extended, &heldout_ru).unwrap(),
    );
    let (en_before, en_after) = (
        measure(&base, &heldout_en).unwrap(),
        measure(extended, &heldout_en).unwrap(),
    );
    println!(
        "held-out ru tokens/word {:.4} -> {:.4} ({:+.2}%), en {:.4} -> {:.4}",
        ru_before.tokens_per_word,
        ru_after.tokens_per_word,
        100.0 * (ru_after.tokens_per_word / ru_before.tokens_per_word - 1.0),
        en_before.tokens_per_word,
        en_after.tokens_per_word
    );
    assert!(ru_after.tokens_per_word < ru_before.tokens_per_word * 0.97);
    assert!(en_after.tokens <= en_before.tokens);
    // Text still round-trips exactly.
    let ids: Vec<String> = (0..heldout_ru.len()).map(|i| i.to_string()).collect();
    for (text, encoded) in heldout_ru
        .iter()
        .zip(extended.encode_all(&ids, &heldout_ru).unwrap())
    {
        assert_eq!(&extended.decode(&encoded).unwrap(), text);
    }
    // The file reloads as the same tokenizer.
    let reloaded = TokenizerFile::from_json(extended.json().to_vec(), "reloaded").unwrap();
    assert_eq!(reloaded.sha256(), extended.sha256());
}
