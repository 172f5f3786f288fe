//! Decoding for the model: in a physical plan where nothing but models reads an image
//! scan's pixels, the scan decodes JPEGs at the smallest DCT scale (1/8, 1/4, 1/2 or 1)
//! that still covers every such model's input, instead of at full size.
//!
//! A featurization or prediction that keeps no image column (`dlp fit`, a Pipeline whose
//! logistic regression takes `features` and `label`, `SELECT origin, prediction ...`) then
//! never decodes full-size pixels that the model's resize would throw away: a 4608 x 3456
//! photo is decoded at 576 x 432 for EfficientNet-Lite0's 224 (256 before its centre crop).
//! Wherever the image column can be seen (it reaches the result, or any operator but a
//! model reads its size or pixels), the scan stays Spark-exact. `SET dlp.image.decode =
//! exact` turns the rewrite off.
//!
//! How: the plan is walked bottom-up, following every scan's `image` column through the
//! operators that pass columns on unchanged (projections, filters, repartitioning,
//! coalescing, limits, unions). A use is allowed when it is
//! - the image input of a [`TorchInferenceExec`] (its preprocessing resizes anyway; the
//!   scan must then cover [`TorchSpec::decode_cover`](super::TorchSpec::decode_cover)), or
//! - the image argument of the model SQL functions `featurize` and `predict_topk` (the
//!   same preprocessing; the model's manifest says its input), or
//! - `get_field(image, 'origin' | 'nChannels' | 'mode')`, which do not depend on the scale.
//!
//! Any other use (a bare reference in an expression, an operator this walk does not know,
//! the plan's output) keeps the scan exact. A scan whose pixels nothing reads at all (its
//! image column feeds only `nChannels` and `origin`, as in the invalid-file count of a
//! job) decodes at 1/8: whether a file decodes does not depend on the scale, since the
//! entropy decoding is the same.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::common::{Result, ScalarValue};
use datafusion::physical_expr::expressions::{Column, Literal};
use datafusion::physical_expr::{PhysicalExpr, ScalarFunctionExpr};
use datafusion::physical_plan::coalesce_partitions::CoalescePartitionsExec;
use datafusion::physical_plan::coop::CooperativeExec;
use datafusion::physical_plan::filter::FilterExec;
use datafusion::physical_plan::limit::{GlobalLimitExec, LocalLimitExec};
use datafusion::physical_plan::projection::ProjectionExec;
use datafusion::physical_plan::repartition::RepartitionExec;
use datafusion::physical_plan::union::{InterleaveExec, UnionExec};
use datafusion::physical_plan::{ExecutionPlan, Partitioning};

use super::exec::TorchInferenceExec;
use crate::image::ImageDecodeExec;

/// Fields of Spark's image struct whose values do not depend on the decoding scale.
const SCALE_FREE_FIELDS: [&str; 3] = ["origin", "nChannels", "mode"];

/// The smallest cover: a scan read only for its metadata decodes at 1/8.
const METADATA_ONLY: (usize, usize) = (1, 1);

/// A scan, by the address of its node (the same node used twice is one scan).
type ScanId = usize;

/// Which scans' image columns flow, unchanged, into each output column of a node.
type Lineage = Vec<BTreeSet<ScanId>>;

/// Rewrites the image scans of `plan` whose pixels only models read (module docs).
pub fn decode_for_models(plan: Arc<dyn ExecutionPlan>) -> Result<Arc<dyn ExecutionPlan>> {
    let mut scans = Scans::default();
    let output = lineage(&plan, &mut scans);
    // What reaches the result is seen as it is.
    for ids in &output {
        scans.exact(ids);
    }
    if scans.covers.values().all(Option::is_none) {
        return Ok(plan);
    }
    plan.transform_up(|node| {
        let Some(scan) = node.downcast_ref::<ImageDecodeExec>() else {
            return Ok(Transformed::no(node));
        };
        match scans.covers.get(&id(&node)).copied().flatten() {
            Some(cover) => {
                let cover = (cover.0.max(METADATA_ONLY.0), cover.1.max(METADATA_ONLY.1));
                Ok(Transformed::yes(
                    Arc::new(scan.with_decode_cover(cover)?) as Arc<dyn ExecutionPlan>
                ))
            }
            None => Ok(Transformed::no(node)),
        }
    })
    .map(|t| t.data)
}

/// Per scan: the size its decode must cover, or `None` once it must be exact.
#[derive(Default)]
struct Scans {
    covers: HashMap<ScanId, Option<(usize, usize)>>,
}

impl Scans {
    fn exact(&mut self, ids: &BTreeSet<ScanId>) {
        for id in ids {
            self.covers.insert(*id, None);
        }
    }

    fn cover(&mut self, ids: &BTreeSet<ScanId>, (w, h): (usize, usize)) {
        for id in ids {
            if let Some(Some(c)) = self.covers.get_mut(id) {
                *c = (c.0.max(w), c.1.max(h));
            }
        }
    }

    /// Checks an expression over an input with `input` lineage: a scan whose image it reads
    /// in any way but a scale-free field becomes exact.
    fn reads(&mut self, expr: &Arc<dyn PhysicalExpr>, input: &Lineage) {
        if let Some(f) = expr.downcast_ref::<ScalarFunctionExpr>()
            && f.name() == "get_field"
            && f.args().len() >= 2
            && f.args()[0].is::<Column>()
            && field_name(&f.args()[1]).is_some_and(|n| SCALE_FREE_FIELDS.contains(&n))
        {
            return;
        }
        if let Some((image, cover)) = model_function(expr) {
            // `featurize(model, image, ...)` / `predict_topk(model, image, k)`: the model
            // function preprocesses as the operator does.
            if let Some(ids) = input.get(image.index()) {
                self.cover(ids, cover);
            }
            return;
        }
        if let Some(c) = expr.downcast_ref::<Column>() {
            if let Some(ids) = input.get(c.index()) {
                self.exact(ids);
            }
            return;
        }
        for child in expr.children() {
            self.reads(child, input);
        }
    }

    /// Every scan flowing into `input` becomes exact (an operator this walk does not know).
    fn exact_all(&mut self, input: &Lineage) {
        for ids in input {
            self.exact(ids);
        }
    }
}

fn field_name(expr: &Arc<dyn PhysicalExpr>) -> Option<&str> {
    match expr.downcast_ref::<Literal>()?.value() {
        ScalarValue::Utf8(Some(s)) | ScalarValue::Utf8View(Some(s)) => Some(s.as_str()),
        ScalarValue::LargeUtf8(Some(s)) => Some(s.as_str()),
        _ => None,
    }
}

/// A model SQL function ([`crate::sql::model`]) applied to an image column: the column and
/// the cover of the model's input (its manifest read from the process's model directory, as
/// the function's planning does).
fn model_function(expr: &Arc<dyn PhysicalExpr>) -> Option<(&Column, (usize, usize))> {
    let f = expr.downcast_ref::<ScalarFunctionExpr>()?;
    if !f.fun().inner().is::<crate::sql::model::ModelFunction>() {
        return None;
    }
    let [model, image, rest @ ..] = f.args() else {
        return None;
    };
    let image = image.downcast_ref::<Column>()?;
    if !rest.iter().all(|a| a.is::<Literal>()) {
        return None;
    }
    let entry = super::ProcessTorchConfig::get()
        .zoo()
        .get(field_name(model)?)
        .ok()?;
    Some((image, entry.manifest.decode_cover()))
}

fn id(plan: &Arc<dyn ExecutionPlan>) -> ScanId {
    Arc::as_ptr(plan) as *const () as usize
}

/// The lineage of `plan`'s output columns, recording in `scans` what each scan must cover.
fn lineage(plan: &Arc<dyn ExecutionPlan>, scans: &mut Scans) -> Lineage {
    let node = plan.as_ref();
    if let Some(scan) = node.downcast_ref::<ImageDecodeExec>() {
        let mut out = vec![BTreeSet::new(); scan.projection().len()];
        // A scan that is already scaled (a plan rewritten twice) is left as it is.
        if scan.spec().decode_cover.is_none()
            && let Some(j) = scan.projection().iter().position(|&i| i == 0)
        {
            scans.covers.entry(id(plan)).or_insert(Some(METADATA_ONLY));
            out[j].insert(id(plan));
        }
        return out;
    }
    let inputs: Vec<Lineage> = plan
        .children()
        .into_iter()
        .map(|c| lineage(c, scans))
        .collect();
    let single = || inputs.first().cloned().unwrap_or_default();
    if let Some(torch) = node.downcast_ref::<TorchInferenceExec>() {
        let mut out = single();
        let ids = out.get(torch.input_index()).cloned().unwrap_or_default();
        match torch.spec().decode_cover() {
            Some(cover) => scans.cover(&ids, cover),
            None => scans.exact(&ids),
        }
        out.push(BTreeSet::new());
        return out;
    }
    if let Some(projection) = node.downcast_ref::<ProjectionExec>() {
        let input = single();
        return projection
            .expr()
            .iter()
            .map(|e| match e.expr.downcast_ref::<Column>() {
                Some(c) => input.get(c.index()).cloned().unwrap_or_default(),
                None => {
                    scans.reads(&e.expr, &input);
                    BTreeSet::new()
                }
            })
            .collect();
    }
    if let Some(filter) = node.downcast_ref::<FilterExec>() {
        let input = single();
        scans.reads(filter.predicate(), &input);
        return match filter.projection() {
            Some(p) => p
                .iter()
                .map(|&i| input.get(i).cloned().unwrap_or_default())
                .collect(),
            None => input,
        };
    }
    if let Some(repartition) = node.downcast_ref::<RepartitionExec>() {
        let input = single();
        if let Partitioning::Hash(exprs, _) = repartition.partitioning() {
            for e in exprs {
                scans.reads(e, &input);
            }
        }
        return input;
    }
    if node.is::<CoalescePartitionsExec>()
        || node.is::<GlobalLimitExec>()
        || node.is::<LocalLimitExec>()
        || node.is::<CooperativeExec>()
    {
        return single();
    }
    if node.is::<UnionExec>() || node.is::<InterleaveExec>() {
        let width = plan.schema().fields().len();
        let mut out = vec![BTreeSet::new(); width];
        for input in &inputs {
            for (o, ids) in out.iter_mut().zip(input) {
                o.extend(ids.iter().copied());
            }
        }
        return out;
    }
    // Anything else sees the image as it is.
    for input in &inputs {
        scans.exact_all(input);
    }
    vec![BTreeSet::new(); plan.schema().fields().len()]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::{ImageReadOptions, ImageScanSpec};
    use crate::torch::{ResizePolicy, TorchSpec, TorchTask};
    use datafusion::functions::core::expr_fn::get_field;
    use datafusion::physical_plan::empty::EmptyExec;
    use datafusion::prelude::{col, lit};

    fn scan() -> Arc<dyn ExecutionPlan> {
        let spec = ImageScanSpec {
            root: "/data/photos".into(),
            options: ImageReadOptions::from_pairs([("withLabel", "true")]).unwrap(),
            partition_columns: vec![],
            decode_cover: None,
        };
        let leaf = Arc::new(EmptyExec::new(spec.file_list_schema()));
        Arc::new(ImageDecodeExec::try_new(leaf, spec, vec![0, 1, 2]).unwrap())
    }

    /// A features step named `out` of a 224 x 224 model with `resize` over `input`.
    fn model_named(
        input: Arc<dyn ExecutionPlan>,
        out: &str,
        resize: ResizePolicy,
    ) -> Arc<dyn ExecutionPlan> {
        let spec = TorchSpec {
            model: "m".into(),
            input_col: "image".into(),
            output_col: out.into(),
            task: TorchTask::Features,
            batch_size: 4,
            resize: None,
            device: None,
            output_dim: 8,
            sha256: String::new(),
            model_input: Some((224, 224, resize)),
        };
        Arc::new(TorchInferenceExec::try_new(input, spec).unwrap())
    }

    fn model(input: Arc<dyn ExecutionPlan>, resize: ResizePolicy) -> Arc<dyn ExecutionPlan> {
        model_named(input, "features", resize)
    }

    /// A logical expression over `input`'s columns, planned.
    fn physical(
        e: &datafusion::prelude::Expr,
        input: &Arc<dyn ExecutionPlan>,
    ) -> Arc<dyn PhysicalExpr> {
        let schema = datafusion::common::DFSchema::try_from(input.schema()).unwrap();
        datafusion::prelude::SessionContext::new()
            .state()
            .create_physical_expr(e.clone(), &schema)
            .unwrap()
    }

    /// `exprs` (logical, over `input`'s columns) as a projection.
    fn project(
        input: Arc<dyn ExecutionPlan>,
        exprs: Vec<datafusion::prelude::Expr>,
    ) -> Arc<dyn ExecutionPlan> {
        let exprs = exprs
            .into_iter()
            .enumerate()
            .map(|(i, e)| (physical(&e, &input), format!("c{i}")))
            .collect::<Vec<_>>();
        Arc::new(ProjectionExec::try_new(exprs, input).unwrap())
    }

    /// The covers of the plan's scans after the rewrite.
    fn covers(plan: Arc<dyn ExecutionPlan>) -> Vec<Option<(usize, usize)>> {
        let plan = decode_for_models(plan).unwrap();
        let mut out = vec![];
        plan.apply(|n| {
            if let Some(s) = n.downcast_ref::<ImageDecodeExec>() {
                out.push(s.spec().decode_cover);
            }
            Ok(datafusion::common::tree_node::TreeNodeRecursion::Continue)
        })
        .unwrap();
        out
    }

    #[test]
    fn a_model_that_alone_reads_the_pixels_gets_a_scaled_decode() {
        let features = project(
            model(scan(), ResizePolicy::Stretch),
            vec![
                get_field(col("image"), "origin"),
                col("features"),
                col("label"),
            ],
        );
        assert_eq!(covers(features), vec![Some((224, 224))]);
        // The crop policy needs the shorter side before its crop.
        let crop = project(
            model(scan(), ResizePolicy::ShorterSideCenterCrop),
            vec![col("features")],
        );
        assert_eq!(covers(crop), vec![Some((256, 256))]);
        // Two models on one scan: the larger cover.
        let two = project(
            model(
                model_named(scan(), "f2", ResizePolicy::ShorterSideCenterCrop),
                ResizePolicy::Stretch,
            ),
            vec![col("features"), col("f2")],
        );
        assert_eq!(covers(two), vec![Some((256, 256))]);
    }

    #[test]
    fn an_image_anyone_else_can_see_stays_exact() {
        // The image column in the result.
        assert_eq!(covers(model(scan(), ResizePolicy::Stretch)), vec![None]);
        assert_eq!(
            covers(project(
                model(scan(), ResizePolicy::Stretch),
                vec![col("image"), col("features")]
            )),
            vec![None]
        );
        // Its size read by an expression.
        assert_eq!(
            covers(project(
                model(scan(), ResizePolicy::Stretch),
                vec![get_field(col("image"), "width"), col("features")]
            )),
            vec![None]
        );
        // A plain scan.
        assert_eq!(covers(scan()), vec![None]);
        // A model without its input size in the plan (an older client's).
        let mut spec = model(scan(), ResizePolicy::Stretch)
            .downcast_ref::<TorchInferenceExec>()
            .unwrap()
            .spec()
            .clone();
        spec.model_input = None;
        let old = Arc::new(TorchInferenceExec::try_new(scan(), spec).unwrap());
        assert_eq!(covers(project(old, vec![col("features")])), vec![None]);
    }

    #[test]
    fn metadata_alone_decodes_at_an_eighth_through_filters_and_unions() {
        let valid = |input: Arc<dyn ExecutionPlan>| -> Arc<dyn ExecutionPlan> {
            let predicate = physical(&get_field(col("image"), "nChannels").gt(lit(0i32)), &input);
            Arc::new(FilterExec::try_new(predicate, input).unwrap())
        };
        let union = UnionExec::try_new(vec![valid(scan()), valid(scan())]).unwrap();
        let origins = project(union, vec![get_field(col("image"), "origin")]);
        assert_eq!(covers(origins), vec![Some((1, 1)), Some((1, 1))]);
        // The same union feeding a model and the result: exact.
        let union = UnionExec::try_new(vec![valid(scan()), scan()]).unwrap();
        assert_eq!(
            covers(model(union, ResizePolicy::Stretch)),
            vec![None, None]
        );
    }
}
