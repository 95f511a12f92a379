//! The dapt SQL function catalogue. [`register_functions`] registers every function on a session (one
//! entry point, so that Ballista executors can load the same catalogue).
//!
//! | function | returns |
//! |---|---|
//! | `xxhash64(text[, seed])` | `uint64` xxHash64 of the UTF-8 bytes |
//! | `shard_of(text, n)` | `uint64` the job of an array of `n` that takes this value (`xxh3(text) % n`, as `--shard i/n` splits) |
//! | `order_key(id, seed, 'stage', pass)` | `uint64` the document-order key of [`dapt_core::order::document_key`] (seed as the two's-complement `int64` of the `u64`) |
//! | `lang_id(text)` | `utf8` ISO 639-1 code (639-3 where there is none), NULL when undecided |
//! | `lang_score(text, 'ru')` | `float64` confidence in [0, 1] that the text is in that language (a constant or a column of codes) |
//! | `script_ratio(text, 'Cyrillic')` | `float64` share of letters in the script |
//! | `text_stats(text)` | `struct` of document statistics (see [`stats::TextStats`]) |
//! | `gopher_quality(text[, 'en'])` | `bool`: passes the Gopher quality and repetition rules |
//! | `c4_quality(text)` | `bool`: survives the C4 page rules |
//! | `fineweb_quality(text)` | `bool`: passes the FineWeb custom rules |
//! | `minhash(text, k, num_perm, seed)` | `list<uint64>` MinHash signature of word k-shingles |
//! | `token_count(text, 'name')` | `uint64` tokens of a configured tokenizer (no special tokens) |
//! | `classify(text, 'name')` | `float64` positive-class probability of a configured classifier |
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, Float64Array, ListArray, StringArray, UInt64Array,
};
use arrow::buffer::OffsetBuffer;
use arrow::datatypes::{DataType, Field, Fields};
use datafusion::common::{exec_err, plan_err, Result, ScalarValue};
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, TypeSignature,
    Volatility,
};
use datafusion::prelude::SessionContext;

pub mod classifier;
pub use dapt_core::lang;
pub mod minhash;
pub mod models;
pub mod quality;
pub use dapt_core::script;
pub mod stats;

/// Registers every dapt function on `context`; `token_count` and `classify` know no models yet (see
/// [`register_functions_with_models`]).
pub fn register_functions(context: &SessionContext) {
    register_functions_with_models(context, Arc::new(models::Models::default()));
}

/// Registers every dapt function on `context`, with the tokenizers and classifiers that
/// `token_count` and `classify` can name.
pub fn register_functions_with_models(context: &SessionContext, models: Arc<models::Models>) {
    for udf in functions_with_models(models) {
        context.register_udf(udf);
    }
}

/// Every dapt function, `token_count` and `classify` with these models: the catalogue a cluster's
/// scheduler and executors register.
pub fn functions_with_models(models: Arc<models::Models>) -> Vec<ScalarUDF> {
    let mut all = functions();
    all.push(ScalarUDF::new_from_impl(
        models::ModelFunction::token_count(Arc::clone(&models)),
    ));
    all.push(ScalarUDF::new_from_impl(models::ModelFunction::classify(
        models,
    )));
    all
}

/// Every dapt function as a DataFusion UDF.
pub fn functions() -> Vec<ScalarUDF> {
    use Kind::*;
    [
        Xxhash64,
        ShardOf,
        OrderKey,
        LangId,
        LangScore,
        ScriptRatio,
        TextStats,
        GopherQuality,
        C4Quality,
        FinewebQuality,
        Minhash,
    ]
    .into_iter()
    .map(|kind| ScalarUDF::new_from_impl(TextFunction::new(kind)))
    .collect()
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Kind {
    Xxhash64,
    ShardOf,
    OrderKey,
    LangId,
    LangScore,
    ScriptRatio,
    TextStats,
    GopherQuality,
    C4Quality,
    FinewebQuality,
    Minhash,
}

/// A function whose first argument is text and whose other arguments are constants.
#[derive(Debug, PartialEq, Eq, Hash)]
struct TextFunction {
    kind: Kind,
    name: &'static str,
    signature: Signature,
}

pub(crate) fn text_types() -> Vec<DataType> {
    vec![DataType::Utf8, DataType::LargeUtf8, DataType::Utf8View]
}

/// Signatures `(text)`, `(text, extra...)` for every string type of `text`.
fn signature(extra: &[&[DataType]]) -> Signature {
    let mut variants = Vec::new();
    for text in text_types() {
        for tail in extra {
            let mut types = vec![text.clone()];
            types.extend(tail.iter().cloned());
            variants.push(TypeSignature::Exact(types));
        }
    }
    Signature::one_of(variants, Volatility::Immutable)
}

impl TextFunction {
    fn new(kind: Kind) -> Self {
        use DataType::{Int64, Utf8};
        let (name, extra): (&'static str, Vec<&[DataType]>) = match kind {
            Kind::Xxhash64 => ("xxhash64", vec![&[], &[Int64]]),
            Kind::ShardOf => ("shard_of", vec![&[Int64]]),
            Kind::OrderKey => ("order_key", vec![&[Int64, Utf8, Int64]]),
            Kind::LangId => ("lang_id", vec![&[]]),
            Kind::LangScore => ("lang_score", vec![&[Utf8]]),
            Kind::ScriptRatio => ("script_ratio", vec![&[Utf8]]),
            Kind::TextStats => ("text_stats", vec![&[]]),
            Kind::GopherQuality => ("gopher_quality", vec![&[], &[Utf8]]),
            Kind::C4Quality => ("c4_quality", vec![&[]]),
            Kind::FinewebQuality => ("fineweb_quality", vec![&[]]),
            Kind::Minhash => ("minhash", vec![&[Int64, Int64, Int64]]),
        };
        Self {
            kind,
            name,
            signature: signature(&extra),
        }
    }
}

/// The text argument as a column of optional strings, whatever its string type.
pub(crate) enum Texts<'a> {
    Utf8(&'a arrow::array::StringArray),
    Large(&'a arrow::array::LargeStringArray),
    View(&'a arrow::array::StringViewArray),
}

impl<'a> Texts<'a> {
    pub(crate) fn new(array: &'a ArrayRef) -> Result<Self> {
        Ok(match array.data_type() {
            DataType::Utf8 => Self::Utf8(array.as_string::<i32>()),
            DataType::LargeUtf8 => Self::Large(array.as_string::<i64>()),
            DataType::Utf8View => Self::View(array.as_string_view()),
            other => return exec_err!("expected text, got {other}"),
        })
    }

    pub(crate) fn len(&self) -> usize {
        match self {
            Self::Utf8(a) => a.len(),
            Self::Large(a) => a.len(),
            Self::View(a) => a.len(),
        }
    }

    pub(crate) fn get(&self, i: usize) -> Option<&'a str> {
        match self {
            Self::Utf8(a) => a.is_valid(i).then(|| a.value(i)),
            Self::Large(a) => a.is_valid(i).then(|| a.value(i)),
            Self::View(a) => a.is_valid(i).then(|| a.value(i)),
        }
    }
}

/// A constant argument.
pub(crate) fn constant_string(
    name: &str,
    args: &[ColumnarValue],
    index: usize,
) -> Result<Option<String>> {
    match args.get(index) {
        None => Ok(None),
        Some(ColumnarValue::Scalar(
            ScalarValue::Utf8(v) | ScalarValue::LargeUtf8(v) | ScalarValue::Utf8View(v),
        )) => Ok(v.clone()),
        Some(_) => plan_err!("{name}: argument {} must be a constant string", index + 1),
    }
}

fn constant_int(name: &str, args: &[ColumnarValue], index: usize) -> Result<Option<i64>> {
    match args.get(index) {
        None => Ok(None),
        Some(ColumnarValue::Scalar(ScalarValue::Int64(v))) => Ok(*v),
        Some(_) => plan_err!("{name}: argument {} must be a constant integer", index + 1),
    }
}

impl ScalarUDFImpl for TextFunction {
    fn name(&self) -> &str {
        self.name
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(match self.kind {
            Kind::Xxhash64 | Kind::ShardOf | Kind::OrderKey => DataType::UInt64,
            Kind::LangId => DataType::Utf8,
            Kind::LangScore | Kind::ScriptRatio => DataType::Float64,
            Kind::TextStats => DataType::Struct(stats::fields()),
            Kind::GopherQuality | Kind::C4Quality | Kind::FinewebQuality => DataType::Boolean,
            Kind::Minhash => minhash_type(),
        })
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let name = self.name;
        let scalar_input = args
            .args
            .iter()
            .all(|a| matches!(a, ColumnarValue::Scalar(_)));
        let text_array = args.args[0].to_array(args.number_rows.max(1))?;
        let texts = Texts::new(&text_array)?;
        let rows = texts.len();
        let result: ArrayRef = match self.kind {
            Kind::Xxhash64 => {
                let seed = constant_int(name, &args.args, 1)?.unwrap_or(0) as u64;
                Arc::new(
                    (0..rows)
                        .map(|i| {
                            texts
                                .get(i)
                                .map(|t| xxhash_rust::xxh64::xxh64(t.as_bytes(), seed))
                        })
                        .collect::<UInt64Array>(),
                )
            }
            Kind::ShardOf => {
                let count = constant_int(name, &args.args, 1)?.unwrap_or(0);
                if count < 1 {
                    return exec_err!("shard_of: the job count must be at least 1, got {count}");
                }
                Arc::new(
                    (0..rows)
                        .map(|i| {
                            texts
                                .get(i)
                                .map(|t| dapt_core::hash::shard_of(t, count as u64))
                        })
                        .collect::<UInt64Array>(),
                )
            }
            Kind::OrderKey => {
                let seed = constant_int(name, &args.args, 1)?.unwrap_or(0) as u64;
                let stage = constant_string(name, &args.args, 2)?.unwrap_or_default();
                let pass = constant_int(name, &args.args, 3)?.unwrap_or(0) as u64;
                let stage_seed = dapt_core::order::stage_seed(seed, &stage, pass);
                Arc::new(
                    (0..rows)
                        .map(|i| {
                            texts
                                .get(i)
                                .map(|id| dapt_core::order::key_with(stage_seed, id))
                        })
                        .collect::<UInt64Array>(),
                )
            }
            Kind::LangId => Arc::new(
                (0..rows)
                    .map(|i| texts.get(i).and_then(lang::lang_id))
                    .collect::<StringArray>(),
            ),
            Kind::LangScore => {
                // The language may be a constant or a column (one code per row).
                let languages = args.args[1].to_array(rows.max(1))?;
                let languages = Texts::new(&languages)?;
                let mut parsed: std::collections::HashMap<&str, whatlang::Lang> =
                    Default::default();
                let mut scores = Vec::with_capacity(rows);
                for i in 0..rows {
                    let (Some(text), Some(code)) = (texts.get(i), languages.get(i)) else {
                        scores.push(None);
                        continue;
                    };
                    let target = match parsed.get(code) {
                        Some(lang) => *lang,
                        None => match lang::parse_language(code) {
                            Some(lang) => *parsed.entry(code).or_insert(lang),
                            None => return plan_err!("lang_score: unknown language {code:?}"),
                        },
                    };
                    scores.push(Some(lang::lang_score(text, target)));
                }
                Arc::new(Float64Array::from(scores))
            }
            Kind::ScriptRatio => {
                let Some(script) = constant_string(name, &args.args, 1)? else {
                    return plan_err!("script_ratio: the script must not be NULL");
                };
                let Some(script) = script::Script::parse(&script) else {
                    return plan_err!(
                        "script_ratio: unknown script {script:?} (one of {})",
                        script::Script::NAMES.join(", ")
                    );
                };
                Arc::new(
                    (0..rows)
                        .map(|i| texts.get(i).map(|t| script::script_ratio(t, script)))
                        .collect::<Float64Array>(),
                )
            }
            Kind::TextStats => {
                let stats: Vec<Option<stats::TextStats>> = (0..rows)
                    .map(|i| texts.get(i).map(stats::TextStats::of))
                    .collect();
                Arc::new(stats::to_struct_array(&stats))
            }
            Kind::GopherQuality => {
                let language = constant_string(name, &args.args, 1)?.unwrap_or_else(|| "en".into());
                let Some(stop_words) = quality::stop_words(&language) else {
                    return plan_err!(
                        "gopher_quality: no stop words for {language:?} (en, ru, none)"
                    );
                };
                Arc::new(
                    (0..rows)
                        .map(|i| texts.get(i).map(|t| quality::gopher(t, stop_words)))
                        .collect::<BooleanArray>(),
                )
            }
            Kind::C4Quality => Arc::new(
                (0..rows)
                    .map(|i| texts.get(i).map(quality::c4))
                    .collect::<BooleanArray>(),
            ),
            Kind::FinewebQuality => Arc::new(
                (0..rows)
                    .map(|i| texts.get(i).map(quality::fineweb))
                    .collect::<BooleanArray>(),
            ),
            Kind::Minhash => {
                let int = |index: usize, what: &str| -> Result<i64> {
                    match constant_int(name, &args.args, index)? {
                        Some(v) if v > 0 => Ok(v),
                        _ => plan_err!("minhash: {what} must be a positive constant"),
                    }
                };
                let k = int(1, "k")? as usize;
                let num_perm = int(2, "num_perm")? as usize;
                let seed = constant_int(name, &args.args, 3)?.unwrap_or(0) as u64;
                let hasher = minhash::MinHasher::new(k, num_perm, seed);
                let mut values = Vec::with_capacity(rows * num_perm);
                let mut offsets = Vec::with_capacity(rows + 1);
                offsets.push(0i32);
                let mut validity = Vec::with_capacity(rows);
                for i in 0..rows {
                    match texts.get(i) {
                        Some(text) => {
                            values.extend(hasher.signature(text));
                            validity.push(true);
                        }
                        None => validity.push(false),
                    }
                    offsets.push(values.len() as i32);
                }
                Arc::new(ListArray::try_new(
                    Arc::new(Field::new("item", DataType::UInt64, false)),
                    OffsetBuffer::new(offsets.into()),
                    Arc::new(UInt64Array::from(values)),
                    Some(validity.into()),
                )?)
            }
        };
        if scalar_input {
            Ok(ColumnarValue::Scalar(ScalarValue::try_from_array(
                &result, 0,
            )?))
        } else {
            Ok(ColumnarValue::Array(result))
        }
    }
}

fn minhash_type() -> DataType {
    DataType::List(Arc::new(Field::new("item", DataType::UInt64, false)))
}

/// Field list helper for struct results.
pub(crate) fn struct_fields(fields: Vec<(&str, DataType)>) -> Fields {
    fields
        .into_iter()
        .map(|(name, data_type)| Field::new(name, data_type, false))
        .collect()
}
