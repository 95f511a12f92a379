//! `dapt status URL`: per job of an output directory (or its one job), done / running / interrupted /
//! failed (with the error it recorded) / missing, from the manifests, failure records and the
//! writers' locks or leases.
use clap::Args;
use dapt_core::status::{output_status, JobState};
use dapt_core::Location;

/// Arguments of `dapt status`.
#[derive(Args)]
pub struct StatusArgs {
    /// Output directory URL or path (an ingest, pack or mix output, or the work directory of a
    /// sharded near dedup, of a mix array (count, route and write jobs) or of a `tokenizer measure` array; s3://…, gs://…, local).
    url: String,
    /// Jobs in the array that writes it (jobs that never started leave nothing that says how many
    /// there are; without this the count comes from the job manifests and failure records found).
    #[arg(long, value_name = "N")]
    jobs: Option<usize>,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
    /// Object-store setting KEY=VALUE over the environment (aws_endpoint, aws_region, …); repeatable.
    #[arg(long = "storage-option", value_name = "KEY=VALUE")]
    storage_options: Vec<String>,
}

pub fn run(args: StatusArgs) -> anyhow::Result<()> {
    let storage = super::storage_options(&args.storage_options)?;
    if args.jobs == Some(0) {
        anyhow::bail!("--jobs must be at least 1");
    }
    let location = Location::parse_with(&args.url, &storage)?;
    let runtime = dapt_pipeline::runtime()?;
    if let Some((work, jobs)) = runtime.block_on(dapt_pipeline::dedup::near_status(&location))? {
        if args.json {
            let value = serde_json::json!({"url": location.url(), "kind": "near dedup", "settings": work, "jobs": jobs});
            println!("{}", serde_json::to_string_pretty(&value)?);
            return Ok(());
        }
        let done = jobs.iter().filter(|j| j.state == "done").count();
        println!(
            "{}: near dedup work ({} signature shards, {} partitions), {done} of {} job(s) done",
            location.url(),
            work.shards,
            work.partitions,
            jobs.len()
        );
        for job in &jobs {
            let detail = match (&job.error, &job.record) {
                (Some(error), _) => format!("  {error}"),
                (None, Some(record)) => format!("  {} items, {} pairs", record.items, record.pairs),
                (None, None) => String::new(),
            };
            println!(
                "  {:<10} {}/{}  {:<8}{detail}",
                job.step, job.index, job.count, job.state
            );
        }
        return Ok(());
    }
    if let Some((pipeline, jobs)) = runtime.block_on(dapt_pipeline::mix::count_status(&location))? {
        let array = runtime.block_on(dapt_pipeline::mix_array::array_status(&location))?;
        if args.json {
            let value = serde_json::json!({"url": location.url(), "kind": "mix counts", "pipeline": pipeline, "jobs": jobs, "materialise": array});
            println!("{}", serde_json::to_string_pretty(&value)?);
            return Ok(());
        }
        let done = jobs.iter().filter(|j| j.state == "done").count();
        println!(
            "{}: mix count work (configuration {}), {done} of {} job(s) done",
            location.url(),
            &pipeline[..pipeline.len().min(12)],
            jobs.len()
        );
        for job in &jobs {
            let detail = match (&job.error, &job.record) {
                (Some(error), _) => format!("  {error}"),
                (None, Some(record)) => format!(
                    "  {} components, {} documents, {} tokens",
                    record.components, record.documents, record.tokens
                ),
                (None, None) => String::new(),
            };
            println!(
                "  count {}/{}  {:<8}{detail}",
                job.index, job.count, job.state
            );
        }
        for job in array.iter().flatten() {
            let number = |key: &str| {
                job.record
                    .as_ref()
                    .and_then(|r| r[key].as_u64())
                    .unwrap_or(0)
            };
            let detail = match (&job.error, &job.record) {
                (Some(error), _) => format!("  {error}"),
                (None, Some(_)) if job.step == "route" => format!(
                    "  {} documents, {} bytes of text",
                    number("documents"),
                    number("bytes")
                ),
                (None, Some(_)) => format!(
                    "  {} shards, {} documents",
                    number("shards"),
                    number("documents")
                ),
                (None, None) => String::new(),
            };
            println!(
                "  {} {}/{}  {:<8}{detail}",
                job.step, job.index, job.count, job.state
            );
        }
        return Ok(());
    }
    if let Some(jobs) = runtime.block_on(dapt_pipeline::measure::measure_status(&location))? {
        if args.json {
            let value = serde_json::json!({"url": location.url(), "kind": "tokenizer measure", "jobs": jobs});
            println!("{}", serde_json::to_string_pretty(&value)?);
            return Ok(());
        }
        let done = jobs.iter().filter(|j| j.state == "done").count();
        println!(
            "{}: tokenizer measure work, {done} of {} job(s) done",
            location.url(),
            jobs.len()
        );
        for job in &jobs {
            let detail = match (&job.error, &job.record) {
                (Some(error), _) => format!("  {error}"),
                (None, Some(record)) => format!("  {} groups", record.groups),
                (None, None) => String::new(),
            };
            println!(
                "  measure {}/{}  {:<8}{detail}",
                job.index, job.count, job.state
            );
        }
        return Ok(());
    }
    let status = runtime.block_on(output_status(&location, args.jobs))?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&status)?);
        return Ok(());
    }
    let done = status
        .jobs
        .iter()
        .filter(|j| j.state == JobState::Done)
        .count();
    println!(
        "{}: {}{}, {done} of {} job(s) done",
        status.url,
        status.kind.as_deref().unwrap_or("(no manifest)"),
        if status.complete {
            ", complete"
        } else {
            ", incomplete"
        },
        status.jobs.len()
    );
    for job in &status.jobs {
        let (state, detail) = match &job.state {
            JobState::Done => ("done", String::new()),
            JobState::Running { writer } => ("running", format!("  writer: {writer}")),
            JobState::Failed { error, at } => ("failed", format!("  at {at}: {error}")),
            JobState::Interrupted => ("interrupted", "  (rerun the job to finish it)".into()),
            JobState::Missing => ("missing", String::new()),
        };
        println!(
            "  job {}/{}  {state:<11} {:>6} shards {:>10} rows{detail}",
            job.index, job.count, job.shards, job.rows
        );
    }
    Ok(())
}
