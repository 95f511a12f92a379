//! Integration tests of dapt-packer with real tokenizers and real text from the test data.
use std::path::PathBuf;

use dapt_packer::{extend, measure, TokenizerFile};

/// The test data (built by `scripts/test-data`; a missing folder fails naming that command).
fn test_data() -> PathBuf {
    dapt_test_data::dir()
}

fn texts(file: &str, bytes: usize) -> Vec<String> {
    let mut out = Vec::new();
    let mut total = 0;
    for line in std::fs::read_to_string(test_data().join("corpus").join(file))
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
    let qwen = TokenizerFile::load(&test_data().join("tokenizers/qwen3/tokenizer.json")).unwrap();
    let gpt2 = TokenizerFile::load(&test_data().join("tokenizers/gpt2/tokenizer.json")).unwrap();
    let mistral =
        TokenizerFile::load(&test_data().join("tokenizers/mistral7b_v01_hf/tokenizer.json"))
            .unwrap();
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
    let base = TokenizerFile::load(&test_data().join("tokenizers/qwen3/tokenizer.json")).unwrap();
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

    // The fast encoder takes the extended tokenizer and gives HF's ids on the domain text it was
    // learned on, other Russian, English and code (appended merges reach tokens by listed merges
    // only; a tiktoken-style core merges unlisted pairs there and differs).
    let fast = reloaded
        .with_encoder(dapt_packer::EncoderChoice::Fast)
        .unwrap();
    assert_eq!(fast.encoder_name(), "fast");
    let mut documents = domain;
    documents.extend(heldout_ru);
    documents.extend(heldout_en);
    documents.extend(texts("code/rust-src.jsonl", 300_000));
    let ids: Vec<String> = (0..documents.len()).map(|i| i.to_string()).collect();
    let by_fast = fast.encode_all(&ids, &documents).unwrap();
    for (i, (text, ids)) in documents.iter().zip(&by_fast).enumerate() {
        let expected = extended
            .tokenizer()
            .unwrap()
            .encode_fast(text.as_str(), false)
            .unwrap();
        assert_eq!(
            ids,
            expected.get_ids(),
            "document {i} differs: {:?}",
            &text[..text.len().min(200)]
        );
    }
    let new_ids = by_fast.iter().flatten().filter(|&&id| id >= first).count();
    assert!(new_ids > 10_000, "{new_ids} new tokens used");
}

/// Single-turn chats from the test data's BIG-bench tasks: `(question, answer)`.
fn sft_examples() -> Vec<(String, String)> {
    let mut out = Vec::new();
    for task in [
        "qa_wikidata",
        "general_knowledge",
        "english_russian_proverbs",
        "auto_debugging",
        "code_line_description",
        "identify_math_theorems",
    ] {
        let path = test_data()
            .join("tasks/bigbench")
            .join(task)
            .join("task.json");
        let json: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        for example in json["examples"].as_array().unwrap() {
            let question = example["input"].as_str().unwrap_or_default().to_string();
            let answer = match (&example["target"], &example["target_scores"]) {
                (serde_json::Value::String(s), _) => s.clone(),
                (serde_json::Value::Array(a), _) if !a.is_empty() => {
                    a[0].as_str().unwrap_or_default().to_string()
                }
                (_, serde_json::Value::Object(scores)) => scores
                    .iter()
                    .find(|(_, v)| v.as_f64() == Some(1.0))
                    .map(|(k, _)| k.clone())
                    .unwrap_or_default(),
                _ => String::new(),
            };
            if !question.is_empty() && !answer.is_empty() {
                out.push((question, answer));
            }
        }
    }
    out
}

#[test]
fn sft_masks_exactly_the_assistant_turns_and_packs_densely() {
    use dapt_packer::{pack_sft, ChatTemplate, Message, Overlong};
    let tokenizer =
        TokenizerFile::load(&test_data().join("tokenizers/qwen3/tokenizer.json")).unwrap();
    let template = ChatTemplate::from_tokenizer_config(
        &test_data().join("tokenizers/qwen3/tokenizer_config.json"),
    )
    .unwrap();
    let chat = |q: &str, a: &str| {
        vec![
            Message {
                role: "user".into(),
                content: q.into(),
            },
            Message {
                role: "assistant".into(),
                content: a.into(),
            },
        ]
    };
    // Qwen3's own template, rendered by minijinja.
    assert_eq!(
        template.render(&chat("Сколько будет 2+2?", "4"), false).unwrap(),
        "<|im_start|>user\nСколько будет 2+2?<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n4<|im_end|>\n"
    );
    let examples = sft_examples();
    assert!(examples.len() > 1000, "{}", examples.len());
    let tokenized: Vec<(Vec<u32>, Vec<bool>)> = examples
        .iter()
        .map(|(q, a)| template.tokenize(&tokenizer, &chat(q, a)).unwrap())
        .collect();
    let sources: Vec<String> = (0..tokenized.len())
        .map(|i| format!("task-{}", i % 3))
        .collect();
    let (rows, stats) = pack_sft(
        &tokenized,
        &sources,
        tokenizer.id_of("<|endoftext|>").unwrap(),
        1024,
        2000,
        Overlong::Drop,
    );
    println!("sft: {stats:?}");
    assert!(stats.fill >= 0.97, "fill {}", stats.fill);
    assert_eq!(
        stats.examples as usize + stats.dropped as usize,
        examples.len()
    );

    // Every segment is one whole example; its masked tokens decode to exactly the assistant turn.
    let expected: std::collections::HashMap<String, String> = examples
        .iter()
        .map(|(q, a)| {
            let full = template.render(&chat(q, a), false).unwrap();
            let before = template.render(&chat(q, a)[..1], true).unwrap();
            (full.clone(), full[before.len()..].to_string())
        })
        .collect();
    let mut seen = 0;
    for (r, row) in rows.iter().enumerate() {
        row.validate(r, 1024, tokenizer.id_of("<|endoftext|>").unwrap() as i32)
            .unwrap();
        let mut start = 0;
        for &length in &row.segment_lengths {
            let end = start + length as usize;
            let ids: Vec<u32> = row.input_ids[start..end]
                .iter()
                .map(|&i| i as u32)
                .collect();
            let text = tokenizer.decode(&ids).unwrap();
            let masked: Vec<u32> = (start..end)
                .filter(|&i| row.loss_mask[i])
                .map(|i| row.input_ids[i] as u32)
                .collect();
            let span = expected
                .get(&text)
                .unwrap_or_else(|| panic!("segment is not an example: {text:?}"));
            assert_eq!(&tokenizer.decode(&masked).unwrap(), span);
            // The mask is one contiguous run at the end of the example.
            let first = (start..end).position(|i| row.loss_mask[i]).unwrap();
            assert!((start + first..end).all(|i| row.loss_mask[i]));
            seen += 1;
            start = end;
        }
    }
    assert_eq!(seen as u64, stats.examples);
    assert!(rows
        .iter()
        .all(|r| r.segment_sources.len() == r.segment_lengths.len()));
}

/// Every document of every file of the test corpus (ru, en, code, math, bilingual).
fn whole_corpus() -> Vec<String> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(test_data().join("corpus"))
        .unwrap()
        .flat_map(|dir| std::fs::read_dir(dir.unwrap().path()).unwrap())
        .map(|f| f.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "jsonl"))
        .collect();
    files.sort();
    assert!(files.len() >= 20, "{files:?}");
    files
        .iter()
        .flat_map(|f| {
            let file = f.strip_prefix(test_data().join("corpus")).unwrap();
            texts(file.to_str().unwrap(), usize::MAX)
        })
        .collect()
}

/// Asserts that `fast` gives HF's ids (`encode_fast`, no special tokens) on every document, with
/// both cores busy.
fn assert_same_ids(
    name: &str,
    hf: &TokenizerFile,
    fast: &dapt_packer::FastEncoder,
    docs: &[String],
) {
    let threads = std::thread::available_parallelism().map_or(2, std::num::NonZero::get);
    let chunk = docs.len().div_ceil(threads);
    std::thread::scope(|scope| {
        for (c, part) in docs.chunks(chunk).enumerate() {
            scope.spawn(move || {
                for (i, text) in part.iter().enumerate() {
                    let expected = hf
                        .tokenizer()
                        .unwrap()
                        .encode_fast(text.as_str(), false)
                        .unwrap();
                    assert_eq!(
                        fast.encode(text).unwrap(),
                        expected.get_ids(),
                        "{name}: document {} differs: {:?}",
                        c * chunk + i,
                        text.chars().take(100).collect::<String>()
                    );
                }
            });
        }
    });
}

/// The fast encoder gives HF's ids on every document of the test corpus (82 MB of ru/en/code/math/bilingual text)
/// for qwen3, llama3_1, gpt2 and an extended llama3_1 and on the llama.cpp conformance vectors;
/// Mistral's (byte fallback) is refused.
#[test]
fn fast_encoder_reproduces_hf_ids() {
    use dapt_packer::FastEncoder;
    let documents = whole_corpus();
    let bytes: usize = documents.iter().map(String::len).sum();
    assert!(bytes > 80_000_000, "{bytes} bytes");
    for (name, conformance, end) in [
        ("qwen3", "qwen2", "<|endoftext|>"),
        ("llama3_1", "llama-bpe", "<|end_of_text|>"),
        ("gpt2", "gpt-2", "<|endoftext|>"),
    ] {
        let path = test_data().join(format!("tokenizers/{name}/tokenizer.json"));
        let hf = TokenizerFile::load(&path).unwrap();
        let fast = FastEncoder::from_json(hf.json()).unwrap_or_else(|e| panic!("{name}: {e}"));
        // Vocabulary look-ups without HF (what `dapt pack` asks: EOS, pad, the size) are HF's.
        assert_eq!(fast.vocab_size(), hf.vocab_size(), "{name}");
        for (token, id) in hf.tokenizer().unwrap().get_vocab(true) {
            assert_eq!(fast.token_to_id(&token), Some(id), "{name}: {token:?}");
        }
        assert_eq!(fast.token_to_id("not a token"), None, "{name}");
        // With the fast backend the HF tokenizer is parsed only when something needs it.
        let lazy = TokenizerFile::load_with(&path, dapt_packer::EncoderChoice::Auto).unwrap();
        let eos = lazy.id_of(end).unwrap();
        assert_eq!(Some(eos), hf.tokenizer().unwrap().token_to_id(end));
        assert_eq!(lazy.vocab_size(), hf.vocab_size());
        let ids = lazy.encode("0", &documents[0]).unwrap();
        assert!(
            !lazy.hf_parsed(),
            "{name}: encoding parsed the HF tokenizer"
        );
        assert_eq!(lazy.decode(&ids).unwrap(), hf.decode(&ids).unwrap());
        assert!(lazy.hf_parsed());
        assert_same_ids(name, &hf, &fast, &documents);
        let dir = test_data().join("tokenizers/conformance");
        let inputs =
            std::fs::read_to_string(dir.join(format!("ggml-vocab-{conformance}.gguf.inp")))
                .unwrap();
        let outputs =
            std::fs::read_to_string(dir.join(format!("ggml-vocab-{conformance}.gguf.out")))
                .unwrap();
        let inputs: Vec<&str> = inputs.split("\n__ggml_vocab_test__\n").collect();
        let outputs: Vec<&str> = outputs.lines().collect();
        assert_eq!(inputs.len() - 1, outputs.len(), "{name}: vector count");
        for (input, output) in inputs.iter().zip(&outputs) {
            let expected: Vec<u32> = output
                .split_whitespace()
                .map(|v| v.parse().unwrap())
                .collect();
            assert_eq!(
                fast.encode(input).unwrap(),
                expected,
                "{name}: conformance {input:?}"
            );
        }
        println!(
            "{name}: {} documents and {} conformance vectors identical",
            documents.len(),
            outputs.len()
        );
    }
    // Digits isolated before GPT-2's split (SmolLM's and StarCoder's pre-tokenizer; GGUF `smollm`):
    // GPT-2's vocabulary, whose digit merges then never apply, over the first 20 MB of the corpus.
    let mut json: serde_json::Value = serde_json::from_slice(
        &std::fs::read(test_data().join("tokenizers/gpt2/tokenizer.json")).unwrap(),
    )
    .unwrap();
    json["pre_tokenizer"] = serde_json::json!({
        "type": "Sequence",
        "pretokenizers": [
            { "type": "Digits", "individual_digits": true },
            { "type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true },
        ],
    });
    let digits =
        TokenizerFile::from_json(serde_json::to_vec(&json).unwrap(), "gpt2 digits").unwrap();
    let fast = FastEncoder::from_json(digits.json()).unwrap();
    let mut prefix = Vec::new();
    let mut size = 0;
    for text in &documents {
        if size > 20_000_000 {
            break;
        }
        size += text.len();
        prefix.push(text.clone());
    }
    prefix.push("a  1\n\n00 x٣y ½Ⅻ 2024-12-02\t 7".into());
    assert_same_ids("gpt2 with digits isolated", &digits, &fast, &prefix);
    // A tokenizer extended by `dapt tokenizer extend` (here llama3_1's, with Russian domain tokens
    // whose merges are appended after the base's) gives HF's ids too.
    let base =
        TokenizerFile::load(&test_data().join("tokenizers/llama3_1/tokenizer.json")).unwrap();
    let extension = extend(&base, &texts("ru/kicad-doc-ru.jsonl", 600_000), 300, 2).unwrap();
    let extended = &extension.tokenizer;
    let fast = FastEncoder::from_json(extended.json()).unwrap();
    assert_same_ids("llama3_1 extended", extended, &fast, &documents);
    let first_new = extension.new_tokens[0].id;
    // The first 10 MB of the corpus in file order (the English–Russian dictionary, then code).
    let mut taken = 0;
    let used = documents
        .iter()
        .take_while(|d| {
            taken += d.len();
            taken <= 10_000_000
        })
        .flat_map(|d| fast.encode(d).unwrap())
        .filter(|&id| id >= first_new)
        .count();
    assert!(used > 1000, "{used} new tokens used");
    println!("llama3_1 extended: {} documents identical", documents.len());

    // SentencePiece-style BPE with byte fallback is not reproduced: callers fall back to HF.
    let mistral =
        TokenizerFile::load(&test_data().join("tokenizers/mistral7b_v01_hf/tokenizer.json"))
            .unwrap();
    let reason = FastEncoder::from_json(mistral.json()).err().unwrap();
    assert!(
        reason.contains("byte fallback") || reason.contains("normalizer"),
        "{reason}"
    );
    let path = test_data().join("tokenizers/mistral7b_v01_hf/tokenizer.json");
    let auto = TokenizerFile::load_with(&path, dapt_packer::EncoderChoice::Auto).unwrap();
    assert_eq!(auto.encoder_name(), "hf");
    assert_eq!(
        auto.encode("x", "Привет, мир").unwrap(),
        mistral
            .tokenizer()
            .unwrap()
            .encode_fast("Привет, мир", false)
            .unwrap()
            .get_ids()
    );
    let refused = TokenizerFile::load_with(&path, dapt_packer::EncoderChoice::Fast).unwrap_err();
    assert!(
        refused.to_string().contains("cannot reproduce"),
        "{refused}"
    );
}
