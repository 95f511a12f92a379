//! Training in stages (seed §5): a config lists stages — CPT stage 1 → CPT stage 2 → SFT, say — each
//! trained from the previous stage's output model, full-weight or LoRA, on packed Parquet (a packer
//! output directory, local or object store). Every stage writes `OUT/<stage>/`: `model/` (an HF model
//! directory; LoRA stages merge their adapter into it), `adapter/` (LoRA, PEFT layout),
//! `train_log.jsonl`, `checkpoints/` while running, and `stage.json` when done. A rerun skips finished
//! stages and resumes an interrupted one from its last checkpoint, so the outputs are byte-identical to
//! an uninterrupted run's.
//!
//! Data-parallel (`TrainConfig::dist`): every rank runs the stages; rank 0 alone decides what is done,
//! writes the stage directories, and the others follow its decision and wait for its writes.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use dapt_core::hash::{sha256_hex, sub_seed};
use dapt_core::{Location, PackedRow};
use serde::{Deserialize, Serialize};
use tch::{nn, Device, Kind};

use crate::batch::Objective;
use crate::data::PackedShards;
use crate::dist::Dist;
use crate::error::{invalid, json_error};
use crate::lora::{save_adapter, LoraOptions, TrainableTokens};
use crate::preference::{PreferenceMetrics, ReferenceLogps};
use crate::train::{heldout_loss, StepMetrics, TrainOptions, TrainSettings, Trainer};
use crate::weights::write_atomically;
use crate::{CausalLm, Error, ProxyDefaults, ProxyModelOptions, Result};

/// Full fine-tuning or LoRA.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Method {
    /// Every parameter (or the embeddings only, see `trainable`) trains.
    #[default]
    Full,
    /// LoRA adapters train on a frozen base.
    Lora,
}

/// What a full-weight stage trains.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Trainable {
    /// Every weight.
    #[default]
    All,
    /// Only the input and output embeddings (the first step after a vocabulary extension).
    Embeddings,
}

/// Where training runs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeviceChoice {
    /// CUDA when available, else CPU.
    #[default]
    Auto,
    /// The CPU.
    Cpu,
    /// The first CUDA device (an error when there is none).
    Cuda,
}

impl DeviceChoice {
    /// The device this choice means here.
    pub fn device(self) -> Result<Device> {
        Ok(match self {
            Self::Auto => Device::cuda_if_available(),
            Self::Cpu => Device::Cpu,
            Self::Cuda => {
                if !tch::Cuda::is_available() {
                    return Err(Error::Setting {
                        key: "device".into(),
                        reason: "cuda was asked for but LibTorch sees no CUDA device".into(),
                    });
                }
                Device::Cuda(0)
            }
        })
    }
}

/// One `[[stage]]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StageOptions {
    /// Directory name of the stage's outputs.
    pub name: String,
    /// Packed Parquet directory (path or URL) to train on.
    pub data: String,
    /// Packed Parquet directory of held-out rows: loss before/after and every `train.eval_every` steps.
    #[serde(default)]
    pub heldout: Option<String>,
    /// Full fine-tuning or LoRA.
    #[serde(default)]
    pub method: Method,
    /// In a full stage: every parameter or the embedding tables only.
    #[serde(default)]
    pub trainable: Trainable,
    /// Keep embedding rows below this id unchanged (e.g. the old vocabulary after an extension). In a
    /// LoRA stage the rows from this id on train beside the adapters (PEFT's trainable tokens) and are
    /// saved with them; the rest of the model stays frozen.
    #[serde(default)]
    pub freeze_embeddings_below: Option<i64>,
    /// `[stage.train]`: steps, batch, learning rate, schedule.
    #[serde(default)]
    pub train: TrainOptions,
    /// `[stage.lora]`: rank, alpha, dropout, target modules (LoRA stages).
    #[serde(default)]
    pub lora: LoraOptions,
}

/// A training config (`dapt train CONFIG`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfigOptions {
    /// The run's one seed.
    #[serde(default)]
    pub seed: u64,
    /// The base model: an HF model directory (relative to the config file).
    #[serde(default)]
    pub model: Option<PathBuf>,
    /// Or a model initialised at random from these `config.json` keys (a proxy model).
    #[serde(default)]
    pub init: Option<ProxyModelOptions>,
    /// Where training runs: auto, cpu or cuda.
    #[serde(default)]
    pub device: DeviceChoice,
    /// Rows read ahead by the data loader.
    #[serde(default = "default_prefetch")]
    pub prefetch_rows: usize,
    /// object_store options for `data`/`heldout` URLs (`aws_endpoint`, `aws_region`, …).
    #[serde(default)]
    pub storage: BTreeMap<String, String>,
    /// The stages, in order (`[[stage]]`).
    #[serde(rename = "stage")]
    pub stages: Vec<StageOptions>,
}

fn default_prefetch() -> usize {
    4096
}

/// A validated training config.
#[derive(Clone, Debug)]
pub struct TrainConfig {
    /// The options as read.
    pub options: TrainConfigOptions,
    /// Directory of the config file (relative paths resolve against it).
    pub base_dir: PathBuf,
    /// A stage directory written by other settings, input model or data is removed and trained
    /// afresh (a recipe that owns its output directory); otherwise it is refused.
    pub replace_stale: bool,
    /// Data-parallel training: this rank's process group (none: one process).
    pub dist: Option<Arc<Dist>>,
    /// ZeRO-1 optimiser-state sharding over the ranks (same results, less memory per rank).
    pub zero1: bool,
    /// Keep a finished stage's last checkpoint (a later run with more steps resumes from it).
    pub keep_final_checkpoint: bool,
}

impl TrainConfig {
    /// Reads and validates a config file; errors name the file and key.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(crate::error::io_error(path))?;
        let options: TrainConfigOptions = toml::from_str(&text).map_err(|source| Error::Toml {
            path: path.to_path_buf(),
            source: Box::new(source),
        })?;
        let base_dir = path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."));
        let config = Self {
            options,
            base_dir,
            replace_stale: false,
            dist: None,
            zero1: false,
            keep_final_checkpoint: false,
        };
        config.validate().map_err(invalid(path.display()))?;
        Ok(config)
    }

    fn validate(&self) -> Result<()> {
        let o = &self.options;
        let bad = |key: String, reason: String| Error::Setting { key, reason };
        match (&o.model, &o.init) {
            (None, None) => {
                return Err(bad(
                    "model".into(),
                    "give `model` (an HF directory) or `[init]`".into(),
                ))
            }
            (Some(_), Some(_)) => {
                return Err(bad(
                    "init".into(),
                    "give either `model` or `[init]`, not both".into(),
                ))
            }
            (None, Some(init)) => {
                init.to_config(ProxyDefaults::default())?;
            }
            _ => {}
        }
        if o.stages.is_empty() {
            return Err(bad("stage".into(), "no [[stage]]".into()));
        }
        let mut names = std::collections::BTreeSet::new();
        for (i, stage) in o.stages.iter().enumerate() {
            let key = |k: &str| format!("stage[{i}].{k}");
            if stage.name.is_empty()
                || stage.name.contains(['/', '\\'])
                || stage.name.starts_with('.')
            {
                return Err(bad(
                    key("name"),
                    format!("{:?} is not a directory name", stage.name),
                ));
            }
            if !names.insert(&stage.name) {
                return Err(bad(key("name"), format!("{:?} is used twice", stage.name)));
            }
            TrainSettings::try_from(stage.train.clone()).map_err(invalid(key("train")))?;
            if stage.method == Method::Lora {
                stage.lora.validate().map_err(invalid(key("lora")))?;
                if stage.trainable != Trainable::All {
                    return Err(bad(
                        key("trainable"),
                        "LoRA stages train adapters; `trainable` is for full stages".into(),
                    ));
                }
            }
        }
        Ok(())
    }

    /// `data`/`heldout` as a location: URLs as they are, paths relative to the config file.
    pub fn location(&self, input: &str) -> Result<Location> {
        let is_url = input.contains("://");
        let resolved = if is_url || Path::new(input).is_absolute() {
            input.to_string()
        } else {
            self.base_dir.join(input).display().to_string()
        };
        Ok(Location::parse_with(&resolved, &self.options.storage)?)
    }

    fn model_dir(&self) -> Option<PathBuf> {
        self.options.model.as_ref().map(|m| {
            if m.is_absolute() {
                m.clone()
            } else {
                self.base_dir.join(m)
            }
        })
    }
}

/// `stage.json`: what a finished stage did.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StageReport {
    /// Stage name.
    pub name: String,
    /// Hash of the stage's settings and its input model.
    pub hash: String,
    /// Full or LoRA.
    pub method: Method,
    /// Optimiser steps.
    pub steps: usize,
    /// Target tokens trained on.
    pub target_tokens: i64,
    /// Parameters that trained.
    pub trainable_parameters: i64,
    /// Loss of the first step.
    pub first_loss: f64,
    /// Loss of the last step.
    pub last_loss: f64,
    /// Held-out loss before the stage.
    pub heldout_before: Option<f64>,
    /// Held-out loss after it.
    pub heldout_after: Option<f64>,
    /// Preference objectives: reward accuracy, margin and log-probabilities on the held-out pairs
    /// before training.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heldout_preference_before: Option<PreferenceMetrics>,
    /// The same after training.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heldout_preference_after: Option<PreferenceMetrics>,
    /// Wall time of the stage.
    pub seconds: f64,
    /// `bf16 autocast` or `float32`.
    #[serde(default)]
    pub precision: String,
    /// The output model directory.
    pub model: String,
}

/// A stage directory that another run's settings made.
fn stale_stage(path: &Path, reason: &str) -> Error {
    Error::File {
        path: path.display().to_string(),
        reason: reason.into(),
    }
}

fn io_error(path: &Path, source: std::io::Error) -> Error {
    Error::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Identity of a model directory: its config and the names and sizes of its weight files (hashing the
/// weights themselves would read gigabytes).
fn model_identity(dir: &Path) -> Result<String> {
    let mut parts = vec![std::fs::read(dir.join("config.json"))
        .map_err(|e| io_error(&dir.join("config.json"), e))?];
    for file in crate::weights::weight_files(dir)? {
        let size = std::fs::metadata(&file)
            .map_err(|e| io_error(&file, e))?
            .len();
        parts.push(
            format!(
                "{}:{size}",
                file.file_name().unwrap_or_default().to_string_lossy()
            )
            .into_bytes(),
        );
    }
    Ok(sha256_hex(&parts.concat()))
}

/// Copies the files of an HF model directory that travel with the weights (tokenizer, chat template,
/// generation settings) from `from` into `to`; a missing `from` copies nothing.
pub fn copy_companions(from: &Path, to: &Path) -> Result<()> {
    let Ok(entries) = std::fs::read_dir(from) else {
        return Ok(());
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().to_string();
        let companion = name.starts_with("tokenizer")
            || name == "generation_config.json"
            || name == "special_tokens_map.json"
            || name == "vocab.json"
            || name == "merges.txt"
            || name == "chat_template.jinja";
        if companion && entry.path().is_file() {
            std::fs::copy(entry.path(), to.join(&name))
                .map_err(|e| io_error(&to.join(&name), e))?;
        }
    }
    Ok(())
}

/// Every row of a packed directory (one epoch), for held-out evaluation.
pub fn read_all_rows(location: Location, prefetch: usize) -> Result<Vec<PackedRow>> {
    PackedShards::open(location, 0, prefetch)?.into_rows()
}

/// Runs every stage in order into `out`; `on_step(stage, metrics)` after each step. Returns the reports.
pub fn run_stages(
    config: &TrainConfig,
    out: &Path,
    mut on_step: impl FnMut(&str, &StepMetrics),
) -> Result<Vec<StageReport>> {
    let o = &config.options;
    let dist = config.dist.as_deref();
    let leader = dist.is_none_or(|d| d.rank() == 0);
    let device = match (o.device.device()?, dist) {
        // One GPU per rank of a machine (LOCAL_RANK picks it, as torchrun sets it).
        (Device::Cuda(_), Some(dist)) => Device::Cuda(
            dist.local_rank()
                .min(tch::Cuda::device_count().max(1) as usize - 1),
        ),
        (device, _) => device,
    };
    if leader {
        std::fs::create_dir_all(out).map_err(|e| io_error(out, e))?;
    }
    let mut input_dir = config.model_dir();
    let mut input_identity = match &input_dir {
        Some(dir) => model_identity(dir)?,
        None => sha256_hex(&serde_json::to_vec(&o.init).map_err(json_error("init"))?),
    };
    if input_dir.is_none() {
        // A model initialised at random: keep it as OUT/init/model, the baseline of reports.
        let init_dir = out.join("init").join("model");
        // Bound to the `[init]` keys and the seed that made it: other settings make it anew.
        let marker = out.join("init").join("settings.sha256");
        let made_by = std::fs::read_to_string(&marker).ok();
        let init_identity =
            sha256_hex(&serde_json::to_vec(&(&o.init, o.seed)).map_err(json_error("init"))?);
        if made_by.as_deref().map(str::trim) != Some(init_identity.as_str()) {
            let dir = out.join("init");
            if dir.exists() {
                std::fs::remove_dir_all(&dir).map_err(|e| io_error(&dir, e))?;
            }
        }
        if leader && !init_dir.join("model.safetensors").exists() {
            if let Some(init) = &o.init {
                tch::manual_seed(sub_seed(o.seed, "model-init", 0) as i64);
                let vs = nn::VarStore::new(Device::Cpu);
                let model = CausalLm::new(&vs.root(), &init.to_config(ProxyDefaults::default())?)?;
                model.save(&vs, &init_dir)?;
                write_atomically(&marker, init_identity.as_bytes())?;
            }
        }
        input_dir = Some(init_dir);
        if let Some(dist) = dist {
            dist.barrier()?;
        }
    }
    let mut reports = Vec::new();
    for (index, stage) in o.stages.iter().enumerate() {
        let stage_dir = out.join(&stage.name);
        // The stage is bound to its input model, its settings and the identities of its data.
        let data = PackedShards::identity(&config.location(&stage.data)?)?;
        let heldout = stage
            .heldout
            .as_deref()
            .map(|h| PackedShards::identity(&config.location(h)?))
            .transpose()?;
        let hash = sha256_hex(
            &serde_json::to_vec(&(&input_identity, stage, o.seed, index, &data, &heldout))
                .map_err(json_error(format_args!("stage[{index}]")))?,
        );
        let report_path = stage_dir.join("stage.json");
        // Rank 0 decides whether the stage is done (and clears stale outputs); the others follow.
        let mut done = if leader {
            prepare_stage(config, stage, &stage_dir, &hash)?
        } else {
            None
        };
        if let Some(dist) = dist {
            let skip = dist.sum_f64(&[if done.is_some() { 1.0 } else { 0.0 }])?[0] > 0.5;
            if skip && done.is_none() {
                let text =
                    std::fs::read_to_string(&report_path).map_err(|e| io_error(&report_path, e))?;
                done =
                    Some(serde_json::from_str(&text).map_err(json_error(report_path.display()))?);
            }
        }
        if let Some(report) = done {
            input_dir = Some(stage_dir.join("model"));
            input_identity = report.hash.clone();
            reports.push(report);
            continue;
        }
        let report = run_stage(
            config,
            stage,
            index,
            &input_dir.clone().unwrap_or_default(),
            &stage_dir,
            &hash,
            device,
            &mut on_step,
        )?;
        if leader {
            let json =
                serde_json::to_string_pretty(&report).map_err(json_error(report_path.display()))?;
            write_atomically(&report_path, (json + "\n").as_bytes())?;
            if !config.keep_final_checkpoint {
                let _ = std::fs::remove_dir_all(stage_dir.join("checkpoints"));
            }
        }
        if let Some(dist) = dist {
            // The other ranks load this stage's model next.
            dist.barrier()?;
        }
        input_dir = Some(stage_dir.join("model"));
        input_identity = hash;
        reports.push(report);
    }
    Ok(reports)
}

/// The stage's report when it is already done with these settings (`hash`); otherwise clears what
/// other settings left (or refuses to, see `TrainConfig::replace_stale`), marks the stage directory
/// with `hash` and returns `None`: the stage trains (resuming from its checkpoints, if any).
fn prepare_stage(
    config: &TrainConfig,
    stage: &StageOptions,
    stage_dir: &Path,
    hash: &str,
) -> Result<Option<StageReport>> {
    let report_path = stage_dir.join("stage.json");
    let hash_path = stage_dir.join("settings.sha256");
    let written_by = std::fs::read_to_string(&report_path)
        .ok()
        .map(|text| {
            serde_json::from_str::<StageReport>(&text).map_err(json_error(report_path.display()))
        })
        .transpose()?;
    match written_by {
        Some(report) if report.hash == hash => {
            tracing::info!(stage = %stage.name, "stage already done; skipped");
            return Ok(Some(report));
        }
        Some(_) if !config.replace_stale => {
            return Err(stale_stage(
                &report_path,
                "was written by other settings, another input model or other data; remove the stage directory to retrain it",
            ));
        }
        _ => {}
    }
    let previous = std::fs::read_to_string(&hash_path).ok();
    // A marker of other settings only protects checkpoints: a run that failed before its first
    // checkpoint (bad data, say) leaves nothing to keep, and the stage starts afresh.
    let has_checkpoints = std::fs::read_dir(stage_dir.join("checkpoints"))
        .is_ok_and(|mut entries| entries.next().is_some());
    let other_marker = previous.as_deref().is_some_and(|p| p.trim() != hash);
    if other_marker && !has_checkpoints && !report_path.exists() {
        tracing::info!(stage = %stage.name, "an earlier run of other settings left no checkpoint; starting afresh");
        std::fs::remove_dir_all(stage_dir).map_err(|e| io_error(stage_dir, e))?;
    }
    let stale = report_path.exists() || (other_marker && has_checkpoints);
    if stale {
        if !config.replace_stale {
            return Err(stale_stage(
                stage_dir,
                "holds checkpoints of other settings; remove it to train this stage afresh",
            ));
        }
        tracing::info!(stage = %stage.name, "settings, input model or data changed; the stage trains afresh");
        std::fs::remove_dir_all(stage_dir).map_err(|e| io_error(stage_dir, e))?;
    }
    std::fs::create_dir_all(stage_dir).map_err(|e| io_error(stage_dir, e))?;
    if stale || previous.is_none() || other_marker {
        write_atomically(&hash_path, hash.as_bytes())?;
    }
    Ok(None)
}

#[allow(clippy::too_many_arguments)]
fn run_stage(
    config: &TrainConfig,
    stage: &StageOptions,
    index: usize,
    input_dir: &Path,
    stage_dir: &Path,
    hash: &str,
    device: Device,
    on_step: &mut impl FnMut(&str, &StepMetrics),
) -> Result<StageReport> {
    let started = Instant::now();
    let o = &config.options;
    let seed = sub_seed(o.seed, &stage.name, index as u64);
    let (mut vs, mut model) = CausalLm::load(input_dir, device, Kind::Float)?;
    let adapters = nn::VarStore::new(device);
    match stage.method {
        Method::Lora => {
            vs.freeze();
            tch::manual_seed(sub_seed(seed, "lora-init", 0) as i64);
            let count = model.attach_lora(&adapters.root(), &stage.lora)?;
            tracing::info!(stage = %stage.name, layers = count, r = stage.lora.r, "LoRA adapters attached");
            if let Some(first) = stage.freeze_embeddings_below {
                let rows = model.attach_token_rows(&adapters.root(), first)?;
                tracing::info!(stage = %stage.name, first, rows, "embedding rows trained beside the adapters");
            }
        }
        Method::Full => {
            if stage.trainable == Trainable::Embeddings {
                vs.freeze();
                let _ = model.input_embeddings().set_requires_grad(true);
                if let Some(head) = model.output_embeddings() {
                    let _ = head.set_requires_grad(true);
                }
            }
        }
    }
    let trainable = match stage.method {
        Method::Lora => &adapters,
        Method::Full => &vs,
    };
    // The data must fit the model before LibTorch sees it: ids below vocab_size, one tokenizer,
    // sequence length and pad id for the training and held-out rows.
    let vocab_size = model.config().vocab_size;
    let data_location = config.location(&stage.data)?;
    let mut data = PackedShards::open(data_location.clone(), seed, o.prefetch_rows)?;
    data.metadata()
        .check_vocab(vocab_size, &data_location.url())?;
    let heldout = match &stage.heldout {
        Some(h) => {
            let location = config.location(h)?;
            let shards = PackedShards::open(location.clone(), 0, o.prefetch_rows)?;
            shards.metadata().check_vocab(vocab_size, &location.url())?;
            shards.metadata().check_matches(
                &location.url(),
                data.metadata(),
                &data_location.url(),
            )?;
            Some(shards.into_rows()?)
        }
        None => None,
    };
    let objective = stage.train.objective;
    let leader = config.dist.as_ref().is_none_or(|d| d.rank() == 0);
    let reference = match objective {
        Objective::Dpo => Some(reference_logps(
            config,
            stage,
            &model,
            &data_location,
            heldout.as_deref(),
            stage_dir,
            device,
        )?),
        _ => None,
    };
    let heldout_eval = |model: &CausalLm| -> Result<(Option<f64>, Option<PreferenceMetrics>)> {
        let Some(rows) = heldout.as_deref() else {
            return Ok((None, None));
        };
        let (loss, preference) =
            heldout_loss(model, rows, &stage.train, reference.as_ref(), device)?;
        Ok((Some(loss), preference))
    };
    let (heldout_before, heldout_preference_before) = if leader {
        heldout_eval(&model)?
    } else {
        (None, None)
    };
    let precision = crate::train::describe_precision(&stage.train, device)?;
    tracing::info!(
        stage = %stage.name,
        rows_per_epoch = data.rows_per_epoch(),
        steps = stage.train.steps,
        precision,
        ?device,
        "training"
    );
    let settings = TrainSettings::try_from(stage.train.clone())?;
    let trainer = Trainer {
        model: &model,
        trainable,
        options: &settings,
        seed,
        heldout: heldout.as_deref(),
        // A LoRA stage holds its trainable rows apart (the frozen base keeps the others).
        freeze_embeddings_below: match stage.method {
            Method::Lora => None,
            Method::Full => stage.freeze_embeddings_below,
        },
        checkpoint_dir: Some(stage_dir.join("checkpoints")),
        log_path: Some(stage_dir.join("train_log.jsonl")),
        dist: config.dist.as_deref(),
        zero1: config.zero1,
        reference: reference.as_ref(),
    };
    let outcome = trainer.run(&mut data, true, |m| on_step(&stage.name, m))?;
    if !leader {
        // Rank 0 writes the stage's outputs; this rank reports what it trained.
        return Ok(StageReport {
            name: stage.name.clone(),
            hash: hash.to_string(),
            method: stage.method,
            steps: outcome.history.len(),
            target_tokens: outcome.history.iter().map(|m| m.tokens).sum(),
            trainable_parameters: outcome.trainable_parameters,
            first_loss: outcome.history.first().map_or(f64::NAN, |m| m.loss),
            last_loss: outcome.history.last().map_or(f64::NAN, |m| m.loss),
            heldout_before: None,
            heldout_after: None,
            heldout_preference_before: None,
            heldout_preference_after: None,
            seconds: started.elapsed().as_secs_f64(),
            precision: precision.into(),
            model: stage_dir.join("model").display().to_string(),
        });
    }
    // The whole curve (a resumed run logged its earlier steps before the interruption).
    let log_path = stage_dir.join("train_log.jsonl");
    let log: Vec<StepMetrics> = std::fs::read_to_string(&log_path)
        .map_err(|e| io_error(&log_path, e))?
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let model_dir = stage_dir.join("model");
    if stage.method == Method::Lora {
        let trainable_tokens = model.token_rows_from().map(|first| TrainableTokens {
            rows: first..model.config().vocab_size,
            output_table: model.output_embeddings().is_some(),
        });
        save_adapter(
            &stage_dir.join("adapter"),
            &adapters,
            &stage.lora.for_model(model.config().fused_projections())?,
            Some(&input_dir.display().to_string()),
            trainable_tokens.as_ref(),
        )?;
        model.merge_lora();
    }
    let (heldout_after, heldout_preference_after) = heldout_eval(&model)?;
    model.save(&vs, &model_dir)?;
    copy_companions(input_dir, &model_dir)?;
    Ok(StageReport {
        name: stage.name.clone(),
        hash: hash.to_string(),
        method: stage.method,
        steps: log.len(),
        target_tokens: log.iter().map(|m| m.tokens).sum(),
        trainable_parameters: outcome.trainable_parameters,
        first_loss: log.first().map_or(f64::NAN, |m| m.loss),
        last_loss: log.last().map_or(f64::NAN, |m| m.loss),
        heldout_before,
        heldout_after,
        heldout_preference_before,
        heldout_preference_after,
        seconds: started.elapsed().as_secs_f64(),
        precision: precision.into(),
        model: model_dir.display().to_string(),
    })
}

/// The reference log-probabilities of a DPO stage's training and held-out rows: read back from
/// `reference_logps.json` in the stage directory (bound to the stage's settings, input model and
/// data like everything there) or computed with `model` as it is before the first step, adapters
/// off, and written there. A full fine-tuning stage with checkpoints but no cache is refused: its
/// weights have moved, the reference is gone.
fn reference_logps(
    config: &TrainConfig,
    stage: &StageOptions,
    model: &CausalLm,
    data: &Location,
    heldout: Option<&[PackedRow]>,
    stage_dir: &Path,
    device: Device,
) -> Result<ReferenceLogps> {
    let path = stage_dir.join("reference_logps.json");
    let rows = read_all_rows(data.clone(), config.options.prefetch_rows)?;
    let all = || rows.iter().chain(heldout.unwrap_or_default());
    if let Some(cached) = ReferenceLogps::load(&path)? {
        if cached.covers(all()) {
            tracing::info!(stage = %stage.name, rows = cached.len(), "reference log-probabilities read back");
            return Ok(cached);
        }
    }
    let resumed = std::fs::read_dir(stage_dir.join("checkpoints"))
        .is_ok_and(|mut entries| entries.next().is_some());
    if resumed && !model.has_lora() {
        return Err(Error::Setting {
            key: format!("stage[{}].train.objective", stage.name),
            reason: format!(
                "{} is missing or does not cover the data, and the stage's checkpoints have moved the weights that were the reference; remove {} to train the stage afresh",
                path.display(),
                stage_dir.display()
            ),
        });
    }
    let started = Instant::now();
    let all_rows: Vec<PackedRow> = all().cloned().collect();
    let reference = ReferenceLogps::compute(model, &all_rows, stage.train.batch_size, device)?;
    if config.dist.as_ref().is_none_or(|d| d.rank() == 0) {
        reference.save(&path)?;
    }
    tracing::info!(
        stage = %stage.name,
        rows = reference.len(),
        seconds = started.elapsed().as_secs_f64(),
        adapters_off = model.has_lora(),
        "reference log-probabilities computed once"
    );
    Ok(reference)
}
