//! `dapt mix plan|run` on the test corpus: shares, epochs caps, determinism, stages, reports.
use std::path::Path;
use std::process::Command;

use crate::common::{dapt, test_data};
use anyhow::{ensure, Result};

fn mix_file(dir: &Path, name: &str, top: &str, body: &str) -> Result<std::path::PathBuf> {
    let corpus = test_data().canonicalize()?.join("corpus");
    let tokenizer = test_data().join("tokenizers/qwen3/tokenizer.json");
    let head = format!(
        "seed = 7\ntokenizer = {tokenizer:?}\ntarget_language = \"ru\"\nshuffle_window = 256\ndocuments_per_shard = 2000\n\
         [sources.ru]\nurl = {:?}\n[sources.handbook]\nurl = {:?}\n[sources.en]\nurl = {:?}\n\
         [sources.code]\nurl = {:?}\n[sources.math]\nurl = {:?}\n",
        corpus.join("ru/fortunes-ru.jsonl"),
        corpus.join("ru/debian-handbook-ru.jsonl"),
        corpus.join("en/fortunes.jsonl"),
        corpus.join("code/rust-src.jsonl"),
        corpus.join("math/maxima-doc.jsonl"),
    );
    let path = dir.join(name);
    std::fs::write(&path, format!("{top}{head}{body}"))?;
    Ok(path)
}

const ID: &str = "concat(path, '#', CAST(i AS VARCHAR)) AS id";

fn components(handbook_weight: f64) -> String {
    format!(
        "[[component]]\nname = \"ru_fortunes\"\nweight = 0.4\nsql = \"SELECT {ID}, text FROM ru\"\n\
         [[component]]\nname = \"handbook\"\nweight = {handbook_weight}\nmax_epochs = 1\nsql = \"SELECT {ID}, text FROM handbook\"\n\
         [[component]]\nname = \"en\"\nweight = 0.25\nsql = \"SELECT {ID}, text FROM en\"\n\
         [[component]]\nname = \"code\"\nweight = 0.1\nsql = \"SELECT {ID}, text FROM code\"\n\
         [[component]]\nname = \"math\"\nweight = 0.1\nsql = \"SELECT {ID}, text FROM math\"\n"
    )
}

/// `dapt mix run FILE --out OUT`, on `threads` rayon threads if given; fails with its stderr.
fn mix_run(file: &Path, out: &Path, threads: Option<usize>) -> Result<()> {
    let mut command = crate::common::dapt_command();
    command.args(["mix", "run"]).arg(file).arg("--out").arg(out);
    if let Some(threads) = threads {
        command.env("RAYON_NUM_THREADS", threads.to_string());
    }
    let run = command.output()?;
    ensure!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    Ok(())
}

/// The stdout of a `dapt` run with `args` that must have succeeded (else its stderr is the error).
fn succeeded(args: &[&str], output: std::process::Output) -> Result<String> {
    ensure!(
        output.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(String::from_utf8(output.stdout)?)
}

/// The stderr of a `dapt` run with `args` that must have failed.
fn failed(args: &[&str], output: std::process::Output) -> Result<String> {
    ensure!(!output.status.success(), "{args:?} succeeded");
    Ok(String::from_utf8_lossy(&output.stderr).into_owned())
}

fn report(dir: &Path) -> Result<serde_json::Value> {
    Ok(serde_json::from_slice(&std::fs::read(
        dir.join("mix_report.json"),
    )?)?)
}

fn same_files(a: &Path, b: &Path) -> Result<()> {
    let mut names: Vec<_> = std::fs::read_dir(a)?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<std::io::Result<_>>()?;
    names.sort();
    ensure!(names.len() > 2);
    for name in names {
        ensure!(
            std::fs::read(a.join(&name))? == std::fs::read(b.join(&name))?,
            "{name:?} differs"
        );
    }
    Ok(())
}

#[test]
fn mix_plan_and_run_hit_the_shares_deterministically() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let mix = mix_file(
        dir.path(),
        "mix.toml",
        "total_tokens = 2000000\n",
        &components(0.15),
    )?;
    let plan = dapt(&["mix", "plan", mix.to_str().unwrap()]);
    ensure!(
        plan.status.success(),
        "{}",
        String::from_utf8_lossy(&plan.stderr)
    );
    let printed = String::from_utf8(plan.stdout)?;
    ensure!(
        printed.lines().count() == 6 && printed.contains("ru_fortunes"),
        "{printed}"
    );

    let out = dir.path().join("out");
    mix_run(&mix, &out, None)?;
    let r = report(&out)?;
    ensure!(
        r["max_share_error_points"].as_f64().unwrap() <= 0.5,
        "{r:#}"
    );
    let tokens = r["tokens"].as_u64().unwrap() as f64;
    ensure!((tokens / 2e6 - 1.0).abs() < 0.01, "{tokens}");
    // ru_fortunes needs more than one epoch: some documents appear twice, with epoch 1.
    let ru = &r["components"][0];
    ensure!(ru["epochs_needed"].as_f64().unwrap() > 1.0 && !ru["capped"].as_bool().unwrap());
    // Lang-swap attribution: English and code are flagged, Russian fortunes mostly not.
    let share = |i: usize, key: &str| r["components"][i]["attribution"][key].as_f64().unwrap();
    ensure!(share(2, "other_language_documents") > 0.9, "{r:#}");
    ensure!(share(0, "other_language_documents") < 0.2, "{r:#}");
    ensure!(share(3, "code_documents") > 0.5, "{r:#}");
    ensure!(share(0, "code_documents") < 0.05, "{r:#}");

    // An independent reader sees the component column and the achieved token shares.
    let check = Command::new("python3")
        .args(["-c", "import sys, glob, pyarrow as pa, pyarrow.parquet as pq, pyarrow.compute as pc; \
                      t = pa.concat_tables([pq.read_table(f) for f in sorted(glob.glob(sys.argv[1] + '/part-*.parquet'))]); \
                      ids = t['id'].to_pylist(); assert len(ids) == len(set(ids)); \
                      e = pc.max(t['epoch']).as_py(); \
                      g = t.group_by('component').aggregate([('tokens', 'sum')]).to_pydict(); \
                      total = sum(g['tokens_sum']); \
                      want = dict(ru_fortunes=0.4, handbook=0.15, en=0.25, code=0.1, math=0.1); \
                      assert all(abs(s / total - want[c]) < 0.005 for c, s in zip(g['component'], g['tokens_sum'])), g; \
                      print(e, len(g['component']))"])
        .arg(&out)
        .output()?;
    let printed = String::from_utf8(check.stdout)?;
    ensure!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
    ensure!(printed.trim() == "1 5", "{printed}");

    // Same inputs and seed, one thread: identical bytes.
    let again = dir.path().join("again");
    mix_run(&mix, &again, Some(1))?;
    same_files(&out, &again)?;

    // Killed mid-run, then rerun: identical to the uninterrupted output.
    let killed = dir.path().join("killed");
    let mut child = crate::common::dapt_command()
        .args([
            "mix",
            "run",
            mix.to_str().unwrap(),
            "--out",
            killed.to_str().unwrap(),
        ])
        .stderr(std::process::Stdio::null())
        .spawn()?;
    std::thread::sleep(std::time::Duration::from_millis(4500));
    child.kill()?;
    child.wait()?;
    mix_run(&mix, &killed, None)?;
    same_files(&out, &killed)?;

    // A target beyond max_epochs is capped, warned about in the plan, and reported.
    let capped = mix_file(
        dir.path(),
        "capped.toml",
        "total_tokens = 2000000\n",
        &components(0.6),
    )?;
    let plan = dapt(&["mix", "plan", capped.to_str().unwrap()]);
    ensure!(String::from_utf8(plan.stdout)?.contains("WARNING: needs more epochs"));
    let out = dir.path().join("capped");
    mix_run(&capped, &out, None)?;
    let handbook = &report(&out)?["components"][1];
    ensure!(handbook["capped"] == true, "{handbook:#}");
    ensure!(handbook["tokens"].as_u64() <= handbook["available_tokens"].as_u64());

    // Another mix into a finished output is refused; with --overwrite it replaces it, to the bytes
    // of that mix run alone.
    let refused = dapt(&[
        "mix",
        "run",
        capped.to_str().unwrap(),
        "--out",
        again.to_str().unwrap(),
    ]);
    ensure!(!refused.status.success(), "another mix was let in");
    let replaced = dapt(&[
        "mix",
        "run",
        capped.to_str().unwrap(),
        "--out",
        again.to_str().unwrap(),
        "--overwrite",
    ]);
    ensure!(
        replaced.status.success(),
        "{}",
        String::from_utf8_lossy(&replaced.stderr)
    );
    same_files(&out, &again)?;
    Ok(())
}

/// Two stages: Stage 2 continues Stage 1's components (no document seen twice while one is not
/// exhausted), and its QA component is checked against Stage 1's text with planted answers.
#[test]
fn stages_continue_components_and_check_qa_grounding() -> Result<()> {
    let dir = tempfile::tempdir()?;
    // Stage-1 knowledge: Russian fortunes. QA: grounded answers copy a fortune's first sentence,
    // planted ungrounded answers are invented.
    let fortunes: Vec<String> =
        std::fs::read_to_string(test_data().join("corpus/ru/fortunes-ru.jsonl"))?
            .lines()
            .map(|l| {
                serde_json::from_str::<serde_json::Value>(l).unwrap()["text"]
                    .as_str()
                    .unwrap()
                    .to_string()
            })
            .collect();
    let mut qa = String::new();
    let mut facts = String::new();
    for (i, text) in fortunes
        .iter()
        .filter(|t| t.split_whitespace().count() > 8)
        .take(40)
        .enumerate()
    {
        let answer: String = text
            .split_whitespace()
            .take(8)
            .collect::<Vec<_>>()
            .join(" ");
        facts.push_str(
            &(serde_json::json!({"id": format!("f{i}"), "text": text}).to_string() + "\n"),
        );
        qa.push_str(&(serde_json::json!({"id": format!("g{i}"), "text": format!("Вопрос?\n{answer}"), "answer": answer}).to_string() + "\n"));
    }
    for i in 0..3 {
        let answer = format!(
            "квазарный пингвин {i} изобрёл синхрофазотрон из облепихового варенья на Юпитере"
        );
        qa.push_str(&(serde_json::json!({"id": format!("planted{i}"), "text": format!("Вопрос?\n{answer}"), "answer": answer}).to_string() + "\n"));
    }
    std::fs::write(dir.path().join("qa.jsonl"), qa)?;
    std::fs::write(dir.path().join("facts.jsonl"), facts)?;
    let stage1 = mix_file(
        dir.path(),
        "stage1.toml",
        "",
        &format!(
            "[sources.facts]\nurl = {:?}\n[[component]]\nname = \"ru\"\nweight = 0.9\nsql = \"SELECT {ID}, text FROM ru\"\n\
             [[component]]\nname = \"facts\"\nweight = 0.1\nmax_epochs = 1\nsql = \"SELECT id, text FROM facts\"\n",
            dir.path().join("facts.jsonl")
        ),
    )?;
    let stage2 = mix_file(
        dir.path(),
        "stage2.toml",
        "",
        &format!(
            "[sources.qa]\nurl = {:?}\n[[component]]\nname = \"ru\"\nweight = 0.5\nsql = \"SELECT {ID}, text FROM ru\"\n\
             [[component]]\nname = \"qa\"\nweight = 0.5\nkind = \"qa\"\nmax_epochs = 3\nsql = \"SELECT id, text, answer FROM qa\"\n",
            dir.path().join("qa.jsonl")
        ),
    )?;
    let pipeline = dir.path().join("pipeline.toml");
    std::fs::write(
        &pipeline,
        format!(
            "seed = 3\n[[stage]]\nname = \"stage1\"\nmix = {stage1:?}\ntokens = 700000\n\
             [[stage]]\nname = \"stage2\"\nmix = {stage2:?}\ntokens = 20000\n"
        ),
    )?;
    let out = dir.path().join("out");
    mix_run(&pipeline, &out, None)?;
    let (r1, r2) = (report(&out.join("stage1"))?, report(&out.join("stage2"))?);
    // 630k of ≈773k tokens in stage 1; stage 2 takes the next 10k: nothing seen twice.
    ensure!(r1["components"][0]["seen_in_earlier_stages"] == 0);
    let ru2 = &r2["components"][0];
    ensure!(ru2["start"] == r1["components"][0]["end"], "{ru2:#}");
    ensure!(
        ru2["seen_in_earlier_stages"] == 0 && ru2["documents"].as_u64() > Some(50),
        "{ru2:#}"
    );
    let grounding = &r2["components"][1]["grounding"];
    let least: Vec<&str> = grounding["least_grounded"]
        .as_array()
        .unwrap()
        .iter()
        .take(3)
        .map(|e| e["id"].as_str().unwrap())
        .collect();
    ensure!(
        least.iter().all(|id| id.starts_with("planted")),
        "{grounding:#}"
    );
    ensure!(grounding["least_grounded"][0]["grounding"].as_f64() == Some(0.0));
    // Most grounded answers come from fortunes Stage 1 used (≈90% of them).
    ensure!(
        grounding["grounded_share"].as_f64().unwrap() > 0.6,
        "{grounding:#}"
    );
    Ok(())
}

/// Counting as a job array (`dapt mix plan --shard i/n --work W`), then `mix plan|run --work W`: the
/// same plan and the same output bytes as one process, for a two-stage pipeline whose stages share
/// components; unfinished jobs named, a finished job not redone, other settings refused, and the
/// counts really taken from the work directory.
#[test]
fn counting_as_a_job_array_gives_the_same_mix() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let pipeline = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("configs/mixes/demo-pipeline.toml");
    let file = pipeline.to_str().unwrap_or_default();
    let ok = |args: &[&str]| succeeded(args, dapt(args));
    let fails = |args: &[&str]| failed(args, dapt(args));
    let one = dir.path().join("one");
    ok(&[
        "mix",
        "run",
        file,
        "--out",
        one.to_str().unwrap_or_default(),
    ])?;
    let plan = ok(&["mix", "plan", file])?;

    let work = dir.path().join("work");
    let work = work.to_str().unwrap_or_default();
    let first = ok(&["mix", "plan", file, "--shard", "2/3", "--work", work])?;
    ensure!(first.contains("count 2/3 done"), "{first}");
    ok(&["mix", "plan", file, "--shard", "0/3", "--work", work])?;
    let early = fails(&["mix", "plan", file, "--work", work])?;
    ensure!(
        early.contains("count jobs [1] of 3 are not done"),
        "{early}"
    );
    let status = ok(&["status", work])?;
    ensure!(
        status.contains("2 of 3 job(s) done")
            && status.contains("count 1/3  not done")
            && status.contains("count 2/3  done"),
        "{status}"
    );
    let other = fails(&["mix", "plan", file, "--shard", "0/2", "--work", work])?;
    ensure!(
        other.contains("another mix configuration or job count"),
        "{other}"
    );
    ok(&["mix", "plan", file, "--shard", "1/3", "--work", work])?;
    let again = ok(&["mix", "plan", file, "--shard", "0/3", "--work", work])?;
    ensure!(again.contains("count 0/3 up to date"), "{again}");

    ensure!(
        ok(&["mix", "plan", file, "--work", work])? == plan,
        "the plans differ"
    );
    let array = dir.path().join("array");
    ok(&[
        "mix",
        "run",
        file,
        "--work",
        work,
        "--out",
        array.to_str().unwrap_or_default(),
    ])?;
    for stage in ["stage1", "stage2"] {
        same_files(&one.join(stage), &array.join(stage))?;
    }

    // A job that fails records its error, which `dapt status` shows.
    let demo = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("configs/demo");
    let broken = dir.path().join("broken.toml");
    std::fs::write(
        &broken,
        String::from("total_tokens = 100000\n")
            + &std::fs::read_to_string(demo.join("../mixes/demo-stage1.toml"))?
                .replace("../demo/", &format!("{}/", demo.display()))
                .replace("FROM en WHERE path LIKE", "FROM nowhere WHERE path LIKE"),
    )?;
    let broken_work = dir.path().join("broken-work");
    let broken_work = broken_work.to_str().unwrap_or_default();
    let broken = broken.to_str().unwrap_or_default();
    let failure = fails(&[
        "mix",
        "plan",
        broken,
        "--shard",
        "0/1",
        "--work",
        broken_work,
    ])?;
    ensure!(failure.contains("nowhere"), "{failure}");
    let status = ok(&["status", broken_work])?;
    ensure!(
        status.contains("count 0/1  failed") && status.contains("nowhere"),
        "{status}"
    );

    // The counts come from the work directory: one changed count changes the plan.
    let inventory = std::path::Path::new(work).join("inventory");
    let key = std::fs::read_dir(&inventory)?
        .next()
        .ok_or_else(|| anyhow::anyhow!("no inventory in {}", inventory.display()))??
        .path();
    let part = key.join("00000-of-00003.parquet");
    let (batches, metadata) =
        dapt_core::parquet_io::decode(std::fs::read(&part)?.into(), "the part")?;
    ensure!(
        metadata.contains_key("dapt.attribution")
            && batches.iter().map(|b| b.num_rows()).sum::<usize>() > 10,
        "{metadata:?}"
    );
    let batch = &batches[0];
    let tokens =
        arrow::array::AsArray::as_primitive::<arrow::datatypes::UInt64Type>(batch.column(1));
    let mut changed: Vec<u64> = tokens.values().to_vec();
    changed[0] += 100_000;
    let batch = arrow::array::RecordBatch::try_new(
        batch.schema(),
        vec![
            batch.column(0).clone(),
            std::sync::Arc::new(arrow::array::UInt64Array::from(changed)),
        ],
    )?;
    let mut parts = vec![batch];
    parts.extend(batches[1..].iter().cloned());
    std::fs::write(
        &part,
        dapt_core::parquet_io::encode(parts[0].schema(), &parts, &metadata, "the part")?,
    )?;
    ensure!(ok(&["mix", "plan", file, "--work", work])? != plan);
    Ok(())
}

/// The demo's two-stage pipeline (its stage 2 has a QA component, checked against stage 1's text)
/// in `dir`, with shards of 700 documents and shuffle windows of 450, so that windows straddle
/// shards and stage 1 has seven shards.
fn small_shard_demo(dir: &Path) -> Result<std::path::PathBuf> {
    let root = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("configs");
    let demo = root.join("demo").canonicalize()?;
    for name in ["demo-pipeline", "demo-stage1", "demo-stage2"] {
        let text = std::fs::read_to_string(root.join(format!("mixes/{name}.toml")))?
            .replace("../demo/", &format!("{}/", demo.display()))
            .replace(
                "documents_per_shard = 5000",
                "documents_per_shard = 700\nshuffle_window = 450",
            );
        std::fs::write(dir.join(format!("{name}.toml")), text)?;
    }
    Ok(dir.join("demo-pipeline.toml"))
}

#[test]
fn materialising_as_job_arrays_on_s3_gives_the_same_bytes() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let pipeline = small_shard_demo(dir.path())?;
    let file = pipeline.to_str().unwrap_or_default();
    let one = dir.path().join("one");
    mix_run(&pipeline, &one, None)?;

    let server = crate::common::S3Server::start()?;
    let bucket = server.bucket("mix")?;
    let (work, out) = (format!("{bucket}/work"), format!("{bucket}/out"));
    let run = |args: &[&str]| -> Result<std::process::Output> {
        Ok(crate::common::dapt_command()
            .args(args)
            .envs(server.env())
            .output()?)
    };
    let ok = |args: &[&str]| succeeded(args, run(args)?);
    let fails = |args: &[&str]| failed(args, run(args)?);
    let write = |i: usize| -> Result<String> {
        ok(&[
            "mix",
            "run",
            file,
            "--out",
            &out,
            "--work",
            &work,
            "--shard",
            &format!("{i}/3"),
        ])
    };
    let route = |i: usize| -> Result<String> {
        ok(&[
            "mix",
            "route",
            file,
            "--work",
            &work,
            "--shard",
            &format!("{i}/3"),
        ])
    };

    let early = fails(&["mix", "route", file, "--work", &work, "--shard", "0/3"])?;
    ensure!(early.contains("holds no counts"), "{early}");
    for i in [1, 0, 2] {
        ok(&[
            "mix",
            "plan",
            file,
            "--shard",
            &format!("{i}/3"),
            "--work",
            &work,
        ])?;
    }
    let early = fails(&[
        "mix", "run", file, "--out", &out, "--work", &work, "--shard", "0/3",
    ])?;
    ensure!(
        early.contains("route jobs [0, 1, 2] of 3 are not done"),
        "{early}"
    );
    for i in [2, 0] {
        ensure!(route(i)?.contains(&format!("route {i}/3 done")));
    }
    let early = fails(&[
        "mix", "run", file, "--out", &out, "--work", &work, "--shard", "2/3",
    ])?;
    ensure!(
        early.contains("route jobs [1] of 3 are not done"),
        "{early}"
    );
    route(1)?;
    ensure!(route(0)?.contains("route 0/3 up to date"));

    let printed = write(2)?;
    ensure!(
        printed.contains("write 2/3 done: 2 shards") && !printed.contains("completed"),
        "{printed}"
    );
    write(0)?;
    let status = ok(&["status", &work])?;
    ensure!(
        status.contains("route 1/3  done")
            && status.contains("write 0/3  done")
            && status.contains("write 1/3  not done"),
        "{status}"
    );
    let printed = write(1)?;
    ensure!(printed.contains("completed stage1, stage2"), "{printed}");
    ensure!(write(1)?.contains("write 1/3 up to date"));

    // Every file of the one-process output, byte for byte, in the bucket.
    let runtime = tokio::runtime::Runtime::new()?;
    let storage = server.storage();
    let same_as_one = || -> Result<()> {
        for stage in ["stage1", "stage2"] {
            let location = dapt_core::Location::parse_with(&format!("{out}/{stage}/"), &storage)?;
            let mut names: Vec<_> = std::fs::read_dir(one.join(stage))?
                .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
                .collect::<std::io::Result<_>>()?;
            // Not the local writer's lock file.
            names.retain(|n| !n.starts_with('.'));
            names.sort();
            ensure!(names.len() > 3, "{names:?}");
            for name in names {
                let array = runtime.block_on(location.read(&name))?;
                ensure!(
                    std::fs::read(one.join(stage).join(&name))? == array.as_ref(),
                    "{stage}/{name} differs"
                );
            }
        }
        Ok(())
    };
    same_as_one()?;
    let report = report(&one.join("stage2"))?;
    ensure!(
        report["components"][3]["grounding"]["answers"].as_u64() > Some(0),
        "{report}"
    );

    // A lost shard of job 1: its rerun writes it (and the stage's manifest) again.
    let stage2 = dapt_core::Location::parse_with(&format!("{out}/stage2/"), &storage)?;
    let work_location = dapt_core::Location::parse_with(&work, &storage)?;
    runtime.block_on(async {
        for name in [
            "part-00001.parquet",
            "_manifest.json",
            "_manifest-00001-of-00003.json",
        ] {
            stage2.delete(name).await?;
        }
        work_location
            .delete("_done/write-00001-of-00003.json")
            .await
    })?;
    ensure!(write(1)?.contains("completed stage1, stage2"));
    same_as_one()?;

    // A stage that leaves out ungrounded answers depends on text: refused, naming the setting.
    let stage2_file = dir.path().join("demo-stage2.toml");
    let text = std::fs::read_to_string(&stage2_file)?;
    std::fs::write(
        &stage2_file,
        text.replace("kind = \"qa\"", "kind = \"qa\"\nmin_grounding = 0.2"),
    )?;
    let refused = fails(&["mix", "route", file, "--work", &work, "--shard", "0/3"])?;
    ensure!(
        refused.contains("qa.min_grounding") && refused.contains("one process"),
        "{refused}"
    );
    Ok(())
}
