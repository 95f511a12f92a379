//! Functions backed by files the user names: `token_count(text, 'tokenizer')` and
//! `classify(text, 'model')`. The names resolve through a [`Models`] registry (the `[tokenizers]` and
//! `[classifiers]` tables of a sources file).
use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use arrow::array::{ArrayRef, Float64Array, UInt64Array};
use arrow::datatypes::DataType;
use datafusion::common::{plan_err, Result};
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDFImpl, Signature, TypeSignature, Volatility,
};
use rayon::prelude::*;

use super::classifier::Classifier;
use super::{constant_string, Texts};

/// Tokenizers and classifiers by name.
#[derive(Clone, Debug, Default)]
pub struct Models {
    /// Tokenizers by the name `token_count(text, name)` uses.
    pub tokenizers: BTreeMap<String, Arc<dapt_encoder::TokenizerFile>>,
    /// Classifiers by the name `classify(text, name)` uses.
    pub classifiers: BTreeMap<String, Arc<Classifier>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Kind {
    TokenCount,
    Classify,
}

/// A function that looks a model up by its constant second argument.
#[derive(Debug)]
pub struct ModelFunction {
    kind: Kind,
    models: Arc<Models>,
    signature: Signature,
}

impl PartialEq for ModelFunction {
    fn eq(&self, other: &Self) -> bool {
        self.kind == other.kind && Arc::ptr_eq(&self.models, &other.models)
    }
}

impl Eq for ModelFunction {}

impl Hash for ModelFunction {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.kind.hash(state);
        (Arc::as_ptr(&self.models) as usize).hash(state);
    }
}

impl ModelFunction {
    fn new(kind: Kind, models: Arc<Models>) -> Self {
        let variants = super::text_types()
            .into_iter()
            .map(|t| TypeSignature::Exact(vec![t, DataType::Utf8]))
            .collect();
        Self {
            kind,
            models,
            signature: Signature::one_of(variants, Volatility::Immutable),
        }
    }

    /// `token_count(text, tokenizer_name)`.
    pub fn token_count(models: Arc<Models>) -> Self {
        Self::new(Kind::TokenCount, models)
    }

    /// `classify(text, classifier_name)`.
    pub fn classify(models: Arc<Models>) -> Self {
        Self::new(Kind::Classify, models)
    }
}

impl ScalarUDFImpl for ModelFunction {
    fn name(&self) -> &str {
        match self.kind {
            Kind::TokenCount => "token_count",
            Kind::Classify => "classify",
        }
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(match self.kind {
            Kind::TokenCount => DataType::UInt64,
            Kind::Classify => DataType::Float64,
        })
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let name = self.name();
        let Some(model) = constant_string(name, &args.args, 1)? else {
            return plan_err!("{name}: the model name must not be NULL");
        };
        let scalar_input = matches!(args.args[0], ColumnarValue::Scalar(_));
        let array = args.args[0].to_array(args.number_rows.max(1))?;
        let texts = Texts::new(&array)?;
        let rows: Vec<Option<&str>> = (0..texts.len()).map(|i| texts.get(i)).collect();
        let result: ArrayRef = match self.kind {
            Kind::TokenCount => {
                let Some(tokenizer) = self.models.tokenizers.get(&model) else {
                    return plan_err!(
                        "token_count: no tokenizer {model:?} (configured: {})",
                        self.models
                            .tokenizers
                            .keys()
                            .cloned()
                            .collect::<Vec<_>>()
                            .join(", ")
                    );
                };
                let counts: Vec<Option<u64>> = rows
                    .par_iter()
                    .map(|t| {
                        t.map(|t| {
                            tokenizer
                                .encode("token_count", t)
                                .map(|ids| ids.len() as u64)
                                .unwrap_or(0)
                        })
                    })
                    .collect();
                Arc::new(UInt64Array::from(counts))
            }
            Kind::Classify => {
                let Some(classifier) = self.models.classifiers.get(&model) else {
                    return plan_err!(
                        "classify: no classifier {model:?} (configured: {})",
                        self.models
                            .classifiers
                            .keys()
                            .cloned()
                            .collect::<Vec<_>>()
                            .join(", ")
                    );
                };
                let scores: Vec<Option<f64>> = rows
                    .par_iter()
                    .map(|t| t.map(|t| classifier.score(t)))
                    .collect();
                Arc::new(Float64Array::from(scores))
            }
        };
        if scalar_input {
            Ok(ColumnarValue::Scalar(
                datafusion::common::ScalarValue::try_from_array(&result, 0)?,
            ))
        } else {
            Ok(ColumnarValue::Array(result))
        }
    }
}
