//! The adaptation recipe on the real model, run as a user runs it: `dapt run
//! configs/ru-adapt-small.toml` imports SmolLM2-135M-Instruct from the test data's GGUF, extends its
//! tokenizer for Russian, trains two CPT stages and SFT with LoRA and the new embedding rows, evaluates
//! the five checkpoints and writes the report; a rerun reuses every step, and a changed stage-2 weight
//! redoes only stage 2 and what follows it.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{ensure, Context, Result};
use serde_json::Value;

use crate::common::run_ok;

fn configs() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("configs")
}

fn read_json(path: &Path) -> Result<Value> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(serde_json::from_str(&text)?)
}

/// Step name → reused, from `run.json`.
fn steps(out: &Path) -> Result<BTreeMap<String, bool>> {
    let run = read_json(&out.join("run.json"))?;
    let mut steps = BTreeMap::new();
    for step in run["steps"].as_array().context("run.json has steps")? {
        steps.insert(
            step["name"].as_str().unwrap_or_default().to_string(),
            step["reused"].as_bool().context("reused")?,
        );
    }
    Ok(steps)
}

fn bpb(report: &Value, text: &str) -> Vec<f64> {
    report["bits_per_byte"][text]
        .as_array()
        .map(|values| values.iter().filter_map(Value::as_f64).collect())
        .unwrap_or_default()
}

#[test]
fn the_small_russian_recipe_adapts_smollm2_and_reruns_what_changed() -> Result<()> {
    let config = configs().join("ru-adapt-small.toml");
    let data = configs().join("../.cache/test-data");
    ensure!(
        data.join("models/SmolLM2-135M-Instruct.Q4_1.gguf")
            .is_file(),
        "{} has no model: run scripts/setup (it links .cache/test-data to $DAPT_TEST_DATA)",
        data.display()
    );
    let dir = tempfile::tempdir()?;
    let out = dir.path().join("run");
    let stdout = run_ok(&[
        "run",
        config.to_str().unwrap_or_default(),
        "--out",
        out.to_str().unwrap_or_default(),
    ])?;
    ensure!(stdout.contains("bits-per-byte ru: base"), "{stdout}");
    let report = read_json(&out.join("report.json"))?;

    // The tokenizer was measured, found wanting and extended; Russian words take fewer tokens.
    let measured = &report["measurement"];
    ensure!(measured["extend"] == true, "{measured}");
    let (base_tpw, extended_tpw) = (
        measured["target"]["tokens_per_word"]
            .as_f64()
            .unwrap_or(0.0),
        report["extension"]["target"]["tokens_per_word"]
            .as_f64()
            .unwrap_or(f64::MAX),
    );
    ensure!(
        base_tpw > 3.0 && extended_tpw < 0.8 * base_tpw,
        "Russian tokens/word {base_tpw} -> {extended_tpw}"
    );
    ensure!(report["extension"]["new_tokens"] == 2000);

    // Five checkpoints, each evaluated; training lowered Russian bits-per-byte of the extended model
    // and English stayed within the bound.
    let checkpoints: Vec<&str> = report["checkpoints"]
        .as_array()
        .context("checkpoints")?
        .iter()
        .filter_map(Value::as_str)
        .collect();
    ensure!(
        checkpoints == ["base", "extended", "stage1", "stage2", "sft", "align"],
        "{checkpoints:?}"
    );
    let ru = bpb(&report, "ru");
    let en = bpb(&report, "en");
    ensure!(ru.len() == 6 && en.len() == 6, "{ru:?} {en:?}");
    ensure!(
        ru[3] < ru[1],
        "Russian bits-per-byte did not go down with training: {ru:?}"
    );
    ensure!(
        en[3] <= en[0] * 1.03,
        "English bits-per-byte grew more than 3%: {en:?}"
    );
    for label in &checkpoints {
        let eval = read_json(&out.join("eval").join(format!("{label}.json")))?;
        ensure!(eval["tasks"]["ru_proverbs"]["examples"] == 8, "{label}");
        // Generative tasks after every stage: HumanEval programs ran in the sandbox, sums were
        // generated and checked.
        let code = &eval["generative"]["code_humaneval"];
        ensure!(
            code["examples"] == 2 && code["scores"]["pass@1"].is_number(),
            "{label}: {code}"
        );
        ensure!(
            code["details"][0]["samples"][0]["run"]["status"]["kind"].is_string(),
            "{label}: {code}"
        );
        let sums = &eval["generative"]["en_arithmetic"];
        ensure!(
            sums["examples"] == 4 && sums["scores"]["exact_match"].is_number(),
            "{label}: {sums}"
        );
        ensure!(
            eval["generation"]["outputs"].as_array().map(Vec::len) == Some(2),
            "{label}"
        );
    }

    // DPO after SFT on dictionary pairs: the reference computed once (adapters off), every step
    // logged its rewards, and the held-out pairs' reward accuracy went from 0 (the policy is its
    // reference) past chance.
    let align = report["stages"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["name"] == "align"))
        .context("an align stage")?;
    let (before, after) = (
        &align["heldout_preference_before"],
        &align["heldout_preference_after"],
    );
    ensure!(
        before["reward_accuracy"] == 0.0 && after["pairs"].as_i64().unwrap_or(0) >= 10,
        "{align}"
    );
    ensure!(
        after["reward_accuracy"].as_f64().unwrap_or(0.0) > 0.5,
        "{align}"
    );
    ensure!(out.join("train/align/reference_logps.json").is_file());
    let log = std::fs::read_to_string(out.join("train/align/train_log.jsonl"))?;
    ensure!(
        log.lines().count() == 3 && log.lines().all(|l| l.contains("\"reward_margin\"")),
        "{log}"
    );
    let markdown = std::fs::read_to_string(out.join("report.md"))?;
    ensure!(
        markdown.contains("Preference training `align` on"),
        "{markdown}"
    );

    // Stage 2's QA is grounded in stage 1's text; the LoRA stages trained the new rows.
    let qa = report["mix"][1]["components"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["name"] == "dictionary_qa"))
        .context("stage 2 has the QA component")?;
    ensure!(
        qa["grounding"]["grounded_share"].as_f64().unwrap_or(0.0) > 0.8,
        "{qa}"
    );
    // The config's `init = "frequency"`: an untied head whose new rows got their frequency bias, from
    // the counts the extension wrote; the adapter trains the new rows of both tables.
    let resize = read_json(&out.join("extended/resize_report.json"))?;
    ensure!(
        resize["tied"] == false && resize["frequency_biased"].as_u64().unwrap_or(0) > 1500,
        "{resize}"
    );
    let counts = read_json(&out.join("tokenizer/token_counts.json"))?;
    ensure!(
        counts["tokens"].as_u64().unwrap_or(0) > 100_000,
        "token counts"
    );
    let adapter = read_json(&out.join("train/stage1/adapter/adapter_config.json"))?;
    let rows = adapter["trainable_token_indices"]["embed_tokens"]
        .as_array()
        .context("the adapter lists its trainable rows")?;
    ensure!(rows.len() == 2000 && rows[0] == 49152, "{}", rows.len());
    ensure!(
        adapter["trainable_token_indices"]["lm_head"].as_array() == Some(rows),
        "{adapter}"
    );
    let stage1 = &report["stages"][0];
    ensure!(
        stage1["trainable_parameters"].as_i64().unwrap_or(0) > 2000 * 576,
        "{stage1}"
    );

    // The report shows the decision, the outcome, the mixes, generations and the comparison.
    let markdown = std::fs::read_to_string(out.join("report.md"))?;
    for needle in [
        "**extended**",
        "## Outcome",
        "bits-per-byte `ru`",
        "dictionary_qa",
        "## Sample generations",
        "| bpb/en ↓ |",
        "acc/ru_proverbs",
        "pass@1/code_humaneval",
        "exact_match/en_arithmetic",
    ] {
        ensure!(markdown.contains(needle), "{needle} missing:\n{markdown}");
    }
    // `bf16_cpu = "auto"`: training and evaluation ran under bf16 autocast where the processor has
    // AMX or AVX512-BF16, in float32 elsewhere, and the run, every stage and every evaluation say which.
    let native = dapt_trainer::autocast::cpu_bf16_native();
    let manifest = read_json(&out.join("run.json"))?;
    ensure!(
        manifest["bf16_cpu"] == native,
        "native bf16 {native}: {manifest}"
    );
    let precision = if native { "bf16 autocast" } else { "float32" };
    for stage in report["stages"].as_array().context("stages")? {
        ensure!(stage["precision"] == precision, "{stage}");
    }
    for label in &checkpoints {
        let eval = read_json(&out.join("eval").join(format!("{label}.json")))?;
        ensure!(eval["bf16"].as_bool().unwrap_or(false) == native, "{label}");
    }
    let html = std::fs::read_to_string(out.join("report.html"))?;
    ensure!(
        html.contains("<table>") && html.contains("<svg"),
        "report.html"
    );
    ensure!(
        steps(&out)?.values().all(|reused| !reused),
        "{:?}",
        steps(&out)?
    );

    // A rerun reuses every step and reports the same numbers.
    let again = run_ok(&[
        "run",
        config.to_str().unwrap_or_default(),
        "--out",
        out.to_str().unwrap_or_default(),
    ])?;
    ensure!(again == stdout, "{again}\nvs\n{stdout}");
    let reused = steps(&out)?;
    ensure!(reused.values().all(|r| *r), "{reused:?}");

    // A stage-2 weight changed (the config copied with absolute data paths): stage 1 is reused,
    // stage 2 and SFT are redone.
    let text = std::fs::read_to_string(&config)?
        .replace("\"../.cache/test-data", &format!("\"{}", data.display()))
        .replacen(
            "weight = 0.50\nkind = \"qa\"",
            "weight = 0.40\nkind = \"qa\"",
            1,
        );
    ensure!(
        text.contains("weight = 0.40"),
        "the QA weight is in the config"
    );
    let changed = dir.path().join("changed.toml");
    std::fs::write(&changed, text)?;
    run_ok(&[
        "run",
        changed.to_str().unwrap_or_default(),
        "--out",
        out.to_str().unwrap_or_default(),
    ])?;
    let reused = steps(&out)?;
    for step in [
        "import",
        "measure",
        "extend",
        "resize",
        "mix-stage1",
        "pack-stage1",
        "pack-sft",
        "pack-align",
        "pack-align-heldout",
        "eval-base",
        "eval-extended",
        "eval-stage1",
    ] {
        ensure!(reused[step], "{step} was redone: {reused:?}");
    }
    for step in [
        "mix-stage2",
        "pack-stage2",
        "eval-stage2",
        "eval-sft",
        "eval-align",
    ] {
        ensure!(!reused[step], "{step} was reused: {reused:?}");
    }
    let stage1 = read_json(&out.join("train/stage1/stage.json"))?;
    ensure!(stage1["hash"] == report["stages"][0]["hash"]);
    let stage2 = read_json(&out.join("train/stage2/stage.json"))?;
    ensure!(stage2["hash"] != report["stages"][1]["hash"]);
    Ok(())
}
