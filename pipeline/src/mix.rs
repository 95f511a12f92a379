//! `dapt mix plan|run` as jobs: a mix or pipeline file planned (counted) or materialised into an
//! output whose identity is every stage's mix settings and the bytes of its tokenizer.
use std::path::Path;

use dapt_core::Location;
use dapt_mixer::{MixReport, Pipeline};

use crate::Result;

/// The identity of a pipeline's output: every stage's mix settings and its tokenizer's sha256.
pub fn pipeline_identity(pipeline: &Pipeline) -> Result<String> {
    let stages = pipeline
        .stages
        .iter()
        .map(|(name, mix)| {
            Ok((
                name.clone(),
                mix,
                crate::identity::file_identity(&mix.tokenizer)?,
                crate::identity::sources_data(&mix.sources)?,
            ))
        })
        .collect::<Result<Vec<_>>>()?;
    crate::identity::identity("the mix pipeline", &stages)
}

/// A mix or pipeline file whose queries run on the Ballista cluster `cluster` (`df://HOST:PORT`), or
/// here.
fn load(file: &Path, cluster: Option<&str>) -> Result<Pipeline> {
    let mut pipeline = Pipeline::load(file)?;
    for (_, mix) in &mut pipeline.stages {
        mix.sources.cluster = cluster.map(str::to_string);
    }
    Ok(pipeline)
}

/// Counts each stage's components (nothing is written); the component queries run on `cluster`
/// (`df://HOST:PORT`) when given.
pub fn plan_mix(
    file: &Path,
    cluster: Option<&str>,
) -> Result<Vec<(String, dapt_mixer::run::StagePlan)>> {
    let pipeline = load(file, cluster)?;
    Ok(crate::runtime()?.block_on(dapt_mixer::plan_pipeline(&pipeline))?)
}

/// Materialises every stage of a mix or pipeline file into `out`; `overwrite` replaces outputs of
/// other configurations there instead of refusing them; the component queries run on `cluster`
/// (`df://HOST:PORT`) when given (the output is the same).
pub fn run_mix(
    file: &Path,
    out: &str,
    overwrite: bool,
    cluster: Option<&str>,
) -> Result<Vec<MixReport>> {
    let pipeline = load(file, cluster)?;
    let hash = pipeline_identity(&pipeline)?;
    Ok(crate::runtime()?.block_on(dapt_mixer::run_pipeline(
        &pipeline,
        &Location::parse(out)?,
        &hash,
        overwrite,
    ))?)
}
