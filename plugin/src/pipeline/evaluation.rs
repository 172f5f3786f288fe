//! `MulticlassClassificationEvaluator` with Spark MLlib's metric names and semantics, plus
//! what users otherwise get from scikit-learn: the confusion matrix, a classification
//! report and one-vs-rest ROC AUC.
//!
//! The evaluator brings the label, prediction and (for ROC AUC and log loss) probability
//! columns of the evaluated rows to the driver; the features never travel.

use std::fmt::Write as _;

use datafusion::arrow::array::{Array, AsArray, FixedSizeListArray, ListArray};
use datafusion::arrow::datatypes::{DataType, Float64Type};
use datafusion::common::{Result, exec_datafusion_err, plan_err};
use datafusion::dataframe::DataFrame;
use datafusion::prelude::{cast, col};
use serde::{Deserialize, Serialize};

use crate::ml::node::input_type;

/// The metric names MLlib's evaluator accepts, plus `rocAuc` (one-vs-rest, macro average).
pub const METRIC_NAMES: &[&str] = &[
    "f1",
    "accuracy",
    "weightedPrecision",
    "weightedRecall",
    "weightedTruePositiveRate",
    "weightedFalsePositiveRate",
    "weightedFMeasure",
    "truePositiveRateByLabel",
    "falsePositiveRateByLabel",
    "precisionByLabel",
    "recallByLabel",
    "fMeasureByLabel",
    "logLoss",
    "hammingLoss",
    "rocAuc",
];

/// Spark MLlib's `MulticlassClassificationEvaluator`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct MulticlassClassificationEvaluator {
    /// Metric used by `evaluate` and by tuning (default `f1`, the weighted F-measure).
    pub metric_name: String,
    /// Class of the `...ByLabel` metrics.
    pub metric_label: f64,
    /// Beta of the F-measure.
    pub beta: f64,
    /// Label column (class index).
    pub label_col: String,
    /// Predicted class column.
    pub prediction_col: String,
    /// Class probability vectors (needed by `logLoss` and `rocAuc`).
    pub probability_col: String,
    /// Optional instance weights.
    pub weight_col: Option<String>,
    /// Clip of the probabilities in `logLoss`.
    pub eps: f64,
}

impl Default for MulticlassClassificationEvaluator {
    fn default() -> Self {
        Self {
            metric_name: "f1".into(),
            metric_label: 0.0,
            beta: 1.0,
            label_col: "label".into(),
            prediction_col: "prediction".into(),
            probability_col: "probability".into(),
            weight_col: None,
            eps: 1e-15,
        }
    }
}

impl MulticlassClassificationEvaluator {
    /// An evaluator of `metric_name`.
    pub fn new(metric_name: impl Into<String>) -> Self {
        Self {
            metric_name: metric_name.into(),
            ..Self::default()
        }
    }

    /// Checks the metric name and `beta`.
    pub fn validate(&self) -> Result<()> {
        if !METRIC_NAMES.contains(&self.metric_name.as_str()) {
            return plan_err!(
                "metricName: '{}' is not one of {}",
                self.metric_name,
                METRIC_NAMES.join(", ")
            );
        }
        if self.beta.is_nan() || self.beta <= 0.0 {
            return plan_err!("beta must be > 0, found {}", self.beta);
        }
        Ok(())
    }

    /// Whether larger values of the metric are better (MLlib's `isLargerBetter`).
    pub fn is_larger_better(&self) -> bool {
        !matches!(
            self.metric_name.as_str(),
            "weightedFalsePositiveRate" | "falsePositiveRateByLabel" | "logLoss" | "hammingLoss"
        )
    }

    /// The configured metric on `df`.
    pub async fn evaluate(&self, df: DataFrame) -> Result<f64> {
        self.validate()?;
        let metrics = self.metrics(df).await?;
        metrics.metric(&self.metric_name, self.metric_label, self.beta)
    }

    /// All metrics on `df`.
    pub async fn metrics(&self, df: DataFrame) -> Result<MulticlassMetrics> {
        let needs_prob = df
            .schema()
            .field_with_unqualified_name(&self.probability_col)
            .is_ok();
        let p = self.collect(df, needs_prob).await?;
        MulticlassMetrics::new(&p)
    }

    /// Collects the label, prediction, weight and probability columns.
    pub async fn collect(&self, df: DataFrame, with_probability: bool) -> Result<Predictions> {
        let schema = df.schema().clone();
        let numeric = |param: &str, c: &str| -> Result<()> {
            let t = input_type(&schema, param, c)?;
            if !t.is_numeric() {
                return plan_err!("{param} '{c}' must be numeric, found {t}");
            }
            Ok(())
        };
        numeric("labelCol", &self.label_col)?;
        numeric("predictionCol", &self.prediction_col)?;
        let mut cols = vec![
            cast(col(&self.label_col), DataType::Float64),
            cast(col(&self.prediction_col), DataType::Float64),
        ];
        if let Some(w) = &self.weight_col {
            numeric("weightCol", w)?;
            cols.push(cast(col(w), DataType::Float64));
        }
        if with_probability {
            let t = input_type(&schema, "probabilityCol", &self.probability_col)?;
            if !matches!(t, DataType::FixedSizeList(..) | DataType::List(_)) {
                return plan_err!(
                    "probabilityCol '{}' must be a vector, found {t}",
                    self.probability_col
                );
            }
            cols.push(col(&self.probability_col));
        }
        let batches = df.select(cols)?.collect().await?;
        let mut p = Predictions::default();
        let mut probs: Vec<Vec<f64>> = vec![];
        for b in &batches {
            let label = b.column(0).as_primitive::<Float64Type>();
            let pred = b.column(1).as_primitive::<Float64Type>();
            let weight = self
                .weight_col
                .as_ref()
                .map(|_| b.column(2).as_primitive::<Float64Type>());
            let prob_col = with_probability.then(|| b.column(b.num_columns() - 1));
            for i in 0..b.num_rows() {
                if label.is_null(i) || pred.is_null(i) {
                    return Err(exec_datafusion_err!(
                        "null {} in row {} of the evaluated data: every row needs a label and a prediction",
                        if label.is_null(i) {
                            format!("labelCol '{}'", self.label_col)
                        } else {
                            format!("predictionCol '{}'", self.prediction_col)
                        },
                        p.labels.len()
                    ));
                }
                p.labels.push(label.value(i));
                p.predictions.push(pred.value(i));
                p.weights.push(weight.map_or(1.0, |w| w.value(i)));
                if let Some(c) = prob_col {
                    probs.push(vector_at(c.as_ref(), i).ok_or_else(|| {
                        exec_datafusion_err!(
                            "null probabilityCol '{}' in row {}",
                            self.probability_col,
                            p.labels.len() - 1
                        )
                    })?);
                }
            }
        }
        if with_probability {
            p.probabilities = Some(probs);
        }
        Ok(p)
    }
}

fn vector_at(array: &dyn Array, i: usize) -> Option<Vec<f64>> {
    if array.is_null(i) {
        return None;
    }
    let values = if let Some(a) = array.as_any().downcast_ref::<FixedSizeListArray>() {
        a.value(i)
    } else {
        array.as_any().downcast_ref::<ListArray>()?.value(i)
    };
    let values = datafusion::arrow::compute::cast(&values, &DataType::Float64).ok()?;
    Some(values.as_primitive::<Float64Type>().values().to_vec())
}

/// Labels, predictions, weights and probability vectors of evaluated rows.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Predictions {
    pub labels: Vec<f64>,
    pub predictions: Vec<f64>,
    pub weights: Vec<f64>,
    pub probabilities: Option<Vec<Vec<f64>>>,
}

/// Per-class figures.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClassMetrics {
    pub label: f64,
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
    pub false_positive_rate: f64,
    /// Weight (count) of rows whose true class is this one.
    pub support: f64,
    /// One-vs-rest ROC AUC of this class's probability (when probabilities are known and
    /// the class has positives and negatives).
    pub roc_auc: Option<f64>,
}

/// Every metric of a set of predictions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MulticlassMetrics {
    /// Class values, sorted (the union of labels and predictions, as scikit-learn's).
    pub labels: Vec<f64>,
    /// `confusion[i][j]`: weight of rows of true class `labels[i]` predicted `labels[j]`.
    pub confusion: Vec<Vec<f64>>,
    pub classes: Vec<ClassMetrics>,
    pub accuracy: f64,
    pub weighted_precision: f64,
    pub weighted_recall: f64,
    pub weighted_f1: f64,
    pub weighted_false_positive_rate: f64,
    pub macro_precision: f64,
    pub macro_recall: f64,
    pub macro_f1: f64,
    pub hamming_loss: f64,
    pub log_loss: Option<f64>,
    /// scikit-learn's `roc_auc_score(multi_class='ovr')`: the mean of the per-class AUCs of
    /// the classes present in the labels.
    pub roc_auc: Option<f64>,
    /// Total weight (row count without weights).
    pub total: f64,
    /// 95% Wilson score interval of the accuracy (over the effective number of rows,
    /// `(sum w)^2 / sum w^2`, which is the row count without weights).
    pub accuracy_ci95: (f64, f64),
    /// 95% percentile-bootstrap interval of the weighted F1 (1,000 resamples of the rows,
    /// seed 0).
    pub f1_ci95: (f64, f64),
    #[serde(skip)]
    predictions: Predictions,
}

/// z of a two-sided 95% interval.
const Z95: f64 = 1.959_963_984_540_054;

/// The Wilson score interval of a proportion `successes / n` at `z` (as scipy's
/// `binomtest(k, n).proportion_ci(method="wilson")` and statsmodels' `proportion_confint`).
pub fn wilson_interval(successes: f64, n: f64, z: f64) -> (f64, f64) {
    if n <= 0.0 {
        return (0.0, 1.0);
    }
    let p = successes / n;
    let z2 = z * z;
    let denom = 1.0 + z2 / n;
    let center = (p + z2 / (2.0 * n)) / denom;
    let half = z / denom * (p * (1.0 - p) / n + z2 / (4.0 * n * n)).sqrt();
    ((center - half).max(0.0), (center + half).min(1.0))
}

/// Weighted F1 of labels / predictions (support-weighted mean of the per-class F1 over the
/// classes in either), without the other metrics.
fn weighted_f1(labels: &[f64], predictions: &[f64], weights: &[f64]) -> f64 {
    let mut classes: Vec<f64> = labels.iter().chain(predictions).copied().collect();
    classes.sort_by(f64::total_cmp);
    classes.dedup();
    let (mut total, mut acc) = (0.0, 0.0);
    for &c in &classes {
        let (mut tp, mut support, mut predicted) = (0.0, 0.0, 0.0);
        for i in 0..labels.len() {
            let (l, p, w) = (labels[i] == c, predictions[i] == c, weights[i]);
            if l {
                support += w;
            }
            if p {
                predicted += w;
            }
            if l && p {
                tp += w;
            }
        }
        let (precision, recall) = (ratio(tp, predicted), ratio(tp, support));
        acc += support * f_beta(precision, recall, 1.0);
        total += support;
    }
    ratio(acc, total)
}

/// 95% percentile-bootstrap interval of the weighted F1: `resamples` draws of n rows with
/// replacement (a seeded generator: the same rows give the same interval).
fn bootstrap_f1(p: &Predictions, resamples: usize, seed: u64) -> (f64, f64) {
    use rand::{Rng, SeedableRng};
    let n = p.labels.len();
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let (mut l, mut q, mut w) = (vec![0.0; n], vec![0.0; n], vec![0.0; n]);
    let mut scores: Vec<f64> = (0..resamples)
        .map(|_| {
            for j in 0..n {
                let i = rng.random_range(0..n);
                (l[j], q[j], w[j]) = (p.labels[i], p.predictions[i], p.weights[i]);
            }
            weighted_f1(&l, &q, &w)
        })
        .collect();
    scores.sort_by(f64::total_cmp);
    let at = |q: f64| scores[((q * (resamples - 1) as f64).round() as usize).min(resamples - 1)];
    (at(0.025), at(0.975))
}

fn ratio(a: f64, b: f64) -> f64 {
    if b == 0.0 { 0.0 } else { a / b }
}

fn f_beta(precision: f64, recall: f64, beta: f64) -> f64 {
    let b2 = beta * beta;
    ratio((1.0 + b2) * precision * recall, b2 * precision + recall)
}

/// Area under the ROC curve of `scores` for the positives, as scikit-learn's `roc_curve`
/// and trapezoids: ties of scores form one step.
pub fn roc_auc(scores: &[f64], positive: &[bool], weights: &[f64]) -> Option<f64> {
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));
    let (pos, neg) = order.iter().fold((0.0, 0.0), |(p, n), &i| {
        if positive[i] {
            (p + weights[i], n)
        } else {
            (p, n + weights[i])
        }
    });
    if pos == 0.0 || neg == 0.0 {
        return None;
    }
    let (mut tp, mut fp, mut area) = (0.0, 0.0, 0.0);
    let mut i = 0;
    while i < order.len() {
        let (tp0, fp0) = (tp, fp);
        let s = scores[order[i]];
        while i < order.len() && scores[order[i]] == s {
            let r = order[i];
            if positive[r] {
                tp += weights[r];
            } else {
                fp += weights[r];
            }
            i += 1;
        }
        area += (fp - fp0) * (tp + tp0) / 2.0;
    }
    Some(area / (pos * neg))
}

impl MulticlassMetrics {
    /// Computes every metric.
    pub fn new(p: &Predictions) -> Result<Self> {
        let n = p.labels.len();
        if n == 0 {
            return plan_err!("no rows to evaluate");
        }
        if p.predictions.len() != n || p.weights.len() != n {
            return plan_err!("labels, predictions and weights differ in length");
        }
        let mut labels: Vec<f64> = p.labels.iter().chain(&p.predictions).copied().collect();
        labels.sort_by(f64::total_cmp);
        labels.dedup();
        let index = |v: f64| labels.binary_search_by(|x| x.total_cmp(&v)).unwrap();
        let k = labels.len();
        let mut confusion = vec![vec![0.0; k]; k];
        for i in 0..n {
            confusion[index(p.labels[i])][index(p.predictions[i])] += p.weights[i];
        }
        let total: f64 = p.weights.iter().sum();
        let support: Vec<f64> = confusion.iter().map(|r| r.iter().sum()).collect();
        let predicted: Vec<f64> = (0..k)
            .map(|j| (0..k).map(|i| confusion[i][j]).sum())
            .collect();
        let correct: f64 = (0..k).map(|i| confusion[i][i]).sum();

        let aucs: Option<Vec<Option<f64>>> = match &p.probabilities {
            Some(probs) => {
                for (r, v) in probs.iter().enumerate() {
                    let need = index(p.labels[r]).max(index(p.predictions[r]));
                    let top = labels[need];
                    if top < 0.0 || top.fract() != 0.0 || (top as usize) >= v.len() {
                        return plan_err!(
                            "probability vectors have {} entries but class {top} occurs; labels \
                             must be class indices 0..{}",
                            v.len(),
                            v.len()
                        );
                    }
                }
                Some(
                    labels
                        .iter()
                        .map(|&c| {
                            let scores: Vec<f64> = probs.iter().map(|v| v[c as usize]).collect();
                            let positive: Vec<bool> = p.labels.iter().map(|&l| l == c).collect();
                            roc_auc(&scores, &positive, &p.weights)
                        })
                        .collect(),
                )
            }
            None => None,
        };
        let classes: Vec<ClassMetrics> = (0..k)
            .map(|c| {
                let tp = confusion[c][c];
                let precision = ratio(tp, predicted[c]);
                let recall = ratio(tp, support[c]);
                ClassMetrics {
                    label: labels[c],
                    precision,
                    recall,
                    f1: f_beta(precision, recall, 1.0),
                    false_positive_rate: ratio(predicted[c] - tp, total - support[c]),
                    support: support[c],
                    roc_auc: aucs.as_ref().and_then(|a| a[c]),
                }
            })
            .collect();
        let weighted = |f: &dyn Fn(&ClassMetrics) -> f64| -> f64 {
            classes.iter().map(|c| f(c) * c.support).sum::<f64>() / total
        };
        let present: Vec<&ClassMetrics> = classes.iter().filter(|c| c.support > 0.0).collect();
        let macro_ = |f: &dyn Fn(&ClassMetrics) -> f64| -> f64 {
            classes.iter().map(f).sum::<f64>() / k as f64
        };
        let log_loss = p.probabilities.as_ref().map(|probs| {
            let eps = 1e-15;
            (0..n)
                .map(|i| -probs[i][p.labels[i] as usize].clamp(eps, 1.0 - eps).ln() * p.weights[i])
                .sum::<f64>()
                / total
        });
        let roc = aucs.as_ref().and_then(|_| {
            let v: Option<Vec<f64>> = present.iter().map(|c| c.roc_auc).collect();
            v.map(|v| v.iter().sum::<f64>() / v.len() as f64)
        });
        Ok(Self {
            accuracy: correct / total,
            weighted_precision: weighted(&|c| c.precision),
            weighted_recall: weighted(&|c| c.recall),
            weighted_f1: weighted(&|c| c.f1),
            weighted_false_positive_rate: weighted(&|c| c.false_positive_rate),
            macro_precision: macro_(&|c| c.precision),
            macro_recall: macro_(&|c| c.recall),
            macro_f1: macro_(&|c| c.f1),
            hamming_loss: 1.0 - correct / total,
            log_loss,
            roc_auc: roc,
            labels,
            confusion,
            classes,
            total,
            accuracy_ci95: {
                let sq: f64 = p.weights.iter().map(|w| w * w).sum();
                let n_eff = if sq > 0.0 { total * total / sq } else { 0.0 };
                wilson_interval(correct / total * n_eff, n_eff, Z95)
            },
            f1_ci95: bootstrap_f1(p, 1000, 0),
            predictions: p.clone(),
        })
    }

    fn class(&self, label: f64) -> Result<&ClassMetrics> {
        self.classes
            .iter()
            .find(|c| c.label == label)
            .ok_or_else(|| exec_datafusion_err!("metricLabel {label} is not a class of the data"))
    }

    /// A metric by MLlib name (`metric_label` for the `...ByLabel` ones).
    pub fn metric(&self, name: &str, metric_label: f64, beta: f64) -> Result<f64> {
        let weighted_f = |beta: f64| {
            self.classes
                .iter()
                .map(|c| f_beta(c.precision, c.recall, beta) * c.support)
                .sum::<f64>()
                / self.total
        };
        Ok(match name {
            "f1" => self.weighted_f1,
            "accuracy" => self.accuracy,
            "weightedPrecision" => self.weighted_precision,
            "weightedRecall" | "weightedTruePositiveRate" => self.weighted_recall,
            "weightedFalsePositiveRate" => self.weighted_false_positive_rate,
            "weightedFMeasure" => weighted_f(beta),
            "truePositiveRateByLabel" | "recallByLabel" => self.class(metric_label)?.recall,
            "falsePositiveRateByLabel" => self.class(metric_label)?.false_positive_rate,
            "precisionByLabel" => self.class(metric_label)?.precision,
            "fMeasureByLabel" => {
                let c = self.class(metric_label)?;
                f_beta(c.precision, c.recall, beta)
            }
            "hammingLoss" => self.hamming_loss,
            "logLoss" => self
                .log_loss
                .ok_or_else(|| exec_datafusion_err!("logLoss needs the probability column"))?,
            "rocAuc" => self.roc_auc.ok_or_else(|| {
                exec_datafusion_err!(
                    "rocAuc needs the probability column and at least two classes among the labels"
                )
            })?,
            other => {
                return plan_err!(
                    "metricName: '{other}' is not one of {}",
                    METRIC_NAMES.join(", ")
                );
            }
        })
    }

    /// The rows that were evaluated.
    pub fn predictions(&self) -> &Predictions {
        &self.predictions
    }

    /// Class name of each class value: `names[label]` when given, else the number.
    pub fn class_names(&self, names: &[String]) -> Vec<String> {
        self.labels
            .iter()
            .map(|&l| {
                if l >= 0.0 && l.fract() == 0.0 && (l as usize) < names.len() {
                    names[l as usize].clone()
                } else {
                    format!("{l}")
                }
            })
            .collect()
    }

    /// A report laid out like scikit-learn's `classification_report` (two decimals), with
    /// the ROC AUC under it when known.
    pub fn report(&self, names: &[String]) -> String {
        let names = self.class_names(names);
        let width = names
            .iter()
            .map(String::len)
            .chain([12])
            .max()
            .unwrap_or(12);
        let mut s = String::new();
        let _ = writeln!(
            s,
            "{:>width$} {:>9} {:>9} {:>9} {:>9}\n",
            "", "precision", "recall", "f1-score", "support"
        );
        for (c, name) in self.classes.iter().zip(&names) {
            let _ = writeln!(
                s,
                "{name:>width$} {:>9.2} {:>9.2} {:>9.2} {:>9}",
                c.precision, c.recall, c.f1, c.support
            );
        }
        let _ = writeln!(s);
        let _ = writeln!(
            s,
            "{:>width$} {:>9} {:>9} {:>9.2} {:>9}",
            "accuracy", "", "", self.accuracy, self.total
        );
        let _ = writeln!(
            s,
            "{:>width$} {:>9} {:>9} {:>9} {:>9}",
            "95% interval",
            "",
            "",
            format!("{:.2}-{:.2}", self.accuracy_ci95.0, self.accuracy_ci95.1),
            "Wilson"
        );
        let _ = writeln!(
            s,
            "{:>width$} {:>9.2} {:>9.2} {:>9.2} {:>9}",
            "macro avg", self.macro_precision, self.macro_recall, self.macro_f1, self.total
        );
        let _ = writeln!(
            s,
            "{:>width$} {:>9.2} {:>9.2} {:>9.2} {:>9}",
            "weighted avg",
            self.weighted_precision,
            self.weighted_recall,
            self.weighted_f1,
            self.total
        );
        let _ = writeln!(
            s,
            "{:>width$} {:>9} {:>9} {:>9} {:>9}",
            "95% interval",
            "",
            "",
            format!("{:.2}-{:.2}", self.f1_ci95.0, self.f1_ci95.1),
            "bootstrap"
        );
        if let Some(auc) = self.roc_auc {
            let _ = writeln!(s, "\n{:>width$} {auc:>9.4}", "ROC AUC (ovr)");
        }
        let _ = writeln!(
            s,
            "\nOn {} test rows the accuracy is known to within about +-{:.1} points (95%).",
            self.total,
            (self.accuracy_ci95.1 - self.accuracy_ci95.0) * 50.0
        );
        s
    }

    /// The metrics as JSON: MLlib's names at the top level, per-class figures under
    /// `classes` keyed by class name, and the confusion matrix.
    pub fn to_json(&self, names: &[String]) -> serde_json::Value {
        let names = self.class_names(names);
        let classes: serde_json::Map<String, serde_json::Value> = self
            .classes
            .iter()
            .zip(&names)
            .map(|(c, n)| (n.clone(), serde_json::to_value(c).unwrap_or_default()))
            .collect();
        serde_json::json!({
            "accuracy": self.accuracy,
            "f1": self.weighted_f1,
            "weightedPrecision": self.weighted_precision,
            "weightedRecall": self.weighted_recall,
            "weightedFalsePositiveRate": self.weighted_false_positive_rate,
            "macroPrecision": self.macro_precision,
            "macroRecall": self.macro_recall,
            "macroF1": self.macro_f1,
            "hammingLoss": self.hamming_loss,
            "logLoss": self.log_loss,
            "rocAuc": self.roc_auc,
            "accuracyCi95": [self.accuracy_ci95.0, self.accuracy_ci95.1],
            "f1Ci95": [self.f1_ci95.0, self.f1_ci95.1],
            "rows": self.total,
            "labels": self.labels,
            "classNames": names,
            "confusionMatrix": self.confusion,
            "classes": classes,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn preds(labels: &[f64], predictions: &[f64]) -> Predictions {
        Predictions {
            labels: labels.to_vec(),
            predictions: predictions.to_vec(),
            weights: vec![1.0; labels.len()],
            probabilities: None,
        }
    }

    #[test]
    fn hand_checked_metrics() {
        // 0: 2 right, 1 as 1; 1: 1 right, 1 as 2; 2: 1 right.
        let m = MulticlassMetrics::new(&preds(
            &[0.0, 0.0, 0.0, 1.0, 1.0, 2.0],
            &[0.0, 0.0, 1.0, 1.0, 2.0, 2.0],
        ))
        .unwrap();
        assert_eq!(
            m.confusion,
            vec![
                vec![2.0, 1.0, 0.0],
                vec![0.0, 1.0, 1.0],
                vec![0.0, 0.0, 1.0]
            ]
        );
        assert!((m.accuracy - 4.0 / 6.0).abs() < 1e-15);
        // precision: 1, 1/2, 1/2; recall: 2/3, 1/2, 1; support 3, 2, 1.
        let wp = (3.0 * 1.0 + 2.0 * 0.5 + 0.5) / 6.0;
        assert!((m.weighted_precision - wp).abs() < 1e-15);
        assert!((m.metric("recallByLabel", 2.0, 1.0).unwrap() - 1.0).abs() < 1e-15);
        assert!(m.metric("nope", 0.0, 1.0).is_err());
        assert!(m.report(&[]).contains("weighted avg"));
    }

    #[test]
    fn auc_counts_ties_as_half() {
        let auc = roc_auc(
            &[0.9, 0.5, 0.5, 0.1],
            &[true, true, false, false],
            &[1.0; 4],
        )
        .unwrap();
        assert!((auc - 0.875).abs() < 1e-15, "{auc}");
        assert_eq!(roc_auc(&[0.1, 0.2], &[true, true], &[1.0; 2]), None);
    }
}
