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

/// Counts each stage's components (nothing is written).
pub fn plan_mix(file: &Path) -> Result<Vec<(String, dapt_mixer::run::StagePlan)>> {
    let pipeline = Pipeline::load(file)?;
    Ok(crate::runtime()?.block_on(dapt_mixer::plan_pipeline(&pipeline))?)
}

/// Materialises every stage of a mix or pipeline file into `out`; `overwrite` replaces outputs of
/// other configurations there instead of refusing them.
pub fn run_mix(file: &Path, out: &str, overwrite: bool) -> Result<Vec<MixReport>> {
    let pipeline = Pipeline::load(file)?;
    let hash = pipeline_identity(&pipeline)?;
    Ok(crate::runtime()?.block_on(dapt_mixer::run_pipeline(
        &pipeline,
        &Location::parse(out)?,
        &hash,
        overwrite,
    ))?)
}
