//! The example configs in `configs/` work: the demo mixes plan and run, the placeholder-bucket recipes
//! (the seed's Russian Stage 1/2, code + math) validate, and the demo sweep completes over three
//! mixtures with a data stage that tokenises each component once.
use std::path::PathBuf;

use crate::common::run_ok;
use anyhow::{ensure, Result};

fn configs() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("configs")
}

#[test]
fn recipe_mixes_validate() -> Result<()> {
    let pipeline = dapt_mixer::Pipeline::load(&configs().join("mixes/ru-pipeline.toml"))?;
    ensure!(pipeline.stages.len() == 2);
    let (_, stage1) = &pipeline.stages[0];
    let names: Vec<&str> = stage1.components.iter().map(|c| c.name.as_str()).collect();
    ensure!(
        names
            == [
                "common_crawl",
                "code",
                "books",
                "domains",
                "wiki",
                "instruct",
                "math"
            ]
    );
    let (_, stage2) = &pipeline.stages[1];
    let instruct_qa: f64 = stage2
        .components
        .iter()
        .filter(|c| c.name == "instruct" || c.name == "domain_qa")
        .map(|c| c.weight)
        .sum();
    ensure!(
        (instruct_qa - 0.45).abs() < 1e-9,
        "Stage 2 is about half instruct/QA: {instruct_qa}"
    );
    let code_math = dapt_mixer::Mix::load(&configs().join("mixes/code-math.toml"))?;
    ensure!(code_math.components.len() == 5 && code_math.total_tokens == Some(10_000_000_000));
    Ok(())
}

#[test]
fn demo_mix_pipeline_plans_and_runs() -> Result<()> {
    let file = configs().join("mixes/demo-pipeline.toml");
    let plan = run_ok(&["mix", "plan", file.to_str().unwrap()])?;
    for needle in ["stage1", "stage2", "ru_2002", "en_art", "qa"] {
        ensure!(
            plan.contains(needle),
            "{needle} missing from the plan:\n{plan}"
        );
    }
    let dir = tempfile::tempdir()?;
    run_ok(&[
        "mix",
        "run",
        file.to_str().unwrap(),
        "--out",
        dir.path().to_str().unwrap(),
    ])?;
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("stage2/mix_report.json"))?)?;
    ensure!(
        report["max_share_error_points"].as_f64().unwrap_or(100.0) < 2.0,
        "{report}"
    );
    Ok(())
}

#[cfg(feature = "torch")]
#[test]
fn demo_sweep_completes_over_three_mixtures() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let out = dir.path().join("sweep");
    let stdout = run_ok(&[
        "sweep",
        configs().join("sweep.toml").to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ])?;
    ensure!(
        stdout.contains("| ru-heavy |") && stdout.contains("| en-heavy |"),
        "{stdout}"
    );
    let results: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("sweep_results.json"))?)?;
    let variants = results["variants"].as_array().unwrap();
    ensure!(variants.len() == 3);
    let metric = |name: &str, m: &str| -> f64 {
        variants.iter().find(|v| v["name"] == name).unwrap()["metrics"][m]
            .as_f64()
            .unwrap()
    };
    ensure!(metric("ru-heavy", "bpb/ru") < metric("en-heavy", "bpb/ru"));
    ensure!(metric("en-heavy", "bpb/en") < metric("ru-heavy", "bpb/en"));
    // The data stage: each component's text through the tokenizer once for all three mixtures. One
    // mixture alone (`dapt mix run` + `dapt pack`) tokenises the components (token counts) and then the
    // mixture again.
    let data = &results["data"];
    let component_bytes = data["component_bytes"].as_f64().unwrap();
    ensure!(data["bytes_tokenised"].as_f64().unwrap() == component_bytes);
    let one_mixture = component_bytes + 60_000.0; // ≥ the mixture's own bytes (≥ 1 byte per token)
    ensure!(data["bytes_tokenised"].as_f64().unwrap() <= 1.5 * one_mixture);
    Ok(())
}
