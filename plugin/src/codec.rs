//! The plugin's logical and physical extension codecs. They wrap Ballista's own codecs
//! (which must still encode Ballista's stage nodes) and tag every buffer so that decoding
//! knows which side wrote it.

use std::sync::Arc;

use ballista_core::serde::{BallistaLogicalExtensionCodec, BallistaPhysicalExtensionCodec};
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::common::{Result, TableReference, internal_err, plan_datafusion_err};
use datafusion::datasource::TableProvider;
use datafusion::datasource::file_format::FileFormatFactory;
use datafusion::execution::TaskContext;
use datafusion::logical_expr::{AggregateUDF, Extension, LogicalPlan, ScalarUDF, WindowUDF};
use datafusion::physical_plan::ExecutionPlan;
use datafusion_proto::logical_plan::LogicalExtensionCodec;
use datafusion_proto::physical_plan::{PhysicalExtensionCodec, PhysicalProtoConverterExtension};
use serde::{Deserialize, Serialize};

use crate::image::provider::MAX_CARRIED_LISTING_BYTES;
use crate::image::{ImageDecodeExec, ImageListing, ImageScanSpec, ImageTableProvider};
use crate::ml::{MlNode, MlStep};
use crate::torch::{TorchInferenceExec, TorchInferenceNode, TorchSpec};

/// First byte of a buffer written by Ballista's inner codec.
const TAG_BALLISTA: u8 = 0x00;
/// First byte of a buffer written by this plugin; the second byte is the [`Kind`].
const TAG_PLUGIN: u8 = 0xD1;

/// What a plugin buffer holds.
#[repr(u8)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    ImageTable = 1,
    ImageDecodeExec = 2,
    TorchInferenceNode = 3,
    TorchInferenceExec = 4,
    MlNode = 5,
    MlExec = 6,
}

impl Kind {
    fn from_byte(b: u8) -> Option<Self> {
        match b {
            1 => Some(Self::ImageTable),
            2 => Some(Self::ImageDecodeExec),
            3 => Some(Self::TorchInferenceNode),
            4 => Some(Self::TorchInferenceExec),
            5 => Some(Self::MlNode),
            6 => Some(Self::MlExec),
            _ => None,
        }
    }
}

fn write_plugin<T: Serialize>(buf: &mut Vec<u8>, kind: Kind, value: &T) -> Result<()> {
    buf.push(TAG_PLUGIN);
    buf.push(kind as u8);
    serde_json::to_writer(buf, value)
        .map_err(|e| plan_datafusion_err!("plugin codec: cannot encode {kind:?}: {e}"))
}

fn read_plugin<T: for<'de> Deserialize<'de>>(kind: Kind, body: &[u8]) -> Result<T> {
    serde_json::from_slice(body)
        .map_err(|e| plan_datafusion_err!("plugin codec: cannot decode {kind:?}: {e}"))
}

/// A tagged buffer: the plugin's `(kind, body)`, or Ballista's body.
type Tagged<'a> = std::result::Result<(Kind, &'a [u8]), &'a [u8]>;

/// Splits a tagged buffer into `Ok((kind, body))` for plugin buffers, or `Err(body)` for
/// Ballista's.
fn split(buf: &[u8]) -> Result<Tagged<'_>> {
    match buf {
        [TAG_BALLISTA, rest @ ..] => Ok(Err(rest)),
        [TAG_PLUGIN, kind, rest @ ..] => match Kind::from_byte(*kind) {
            Some(k) => Ok(Ok((k, rest))),
            None => internal_err!(
                "plugin codec: unknown node kind {kind}; are all processes the same version?"
            ),
        },
        _ => internal_err!("plugin codec: buffer without a plugin/Ballista tag"),
    }
}

/// An image table as the logical codec writes it: the spec, and the files the table keeps
/// when their encoding fits [`MAX_CARRIED_LISTING_BYTES`].
#[derive(Serialize)]
struct ImageTableOut<'a> {
    spec: &'a ImageScanSpec,
    #[serde(skip_serializing_if = "Option::is_none")]
    listing: Option<&'a ImageListing>,
}

/// An image table as the logical codec reads it.
#[derive(Deserialize)]
struct ImageTableIn {
    spec: ImageScanSpec,
    #[serde(default)]
    listing: Option<ImageListing>,
}

#[derive(Serialize, Deserialize)]
struct ImageDecodeExecProto {
    spec: ImageScanSpec,
    projection: Vec<usize>,
}

/// Logical codec: the plugin's table providers, then Ballista's codec for everything else.
#[derive(Debug, Default)]
pub struct PluginLogicalCodec {
    inner: BallistaLogicalExtensionCodec,
}

impl LogicalExtensionCodec for PluginLogicalCodec {
    fn try_decode(
        &self,
        buf: &[u8],
        inputs: &[LogicalPlan],
        ctx: &TaskContext,
    ) -> Result<Extension> {
        match split(buf)? {
            Err(rest) => self.inner.try_decode(rest, inputs, ctx),
            Ok((Kind::TorchInferenceNode, body)) => {
                let spec: TorchSpec = read_plugin(Kind::TorchInferenceNode, body)?;
                let [input] = inputs else {
                    return internal_err!("plugin codec: TorchInference needs 1 input");
                };
                Ok(Extension {
                    node: Arc::new(TorchInferenceNode::try_new(input.clone(), spec)?),
                })
            }
            Ok((Kind::MlNode, body)) => {
                let step: MlStep = read_plugin(Kind::MlNode, body)?;
                Ok(Extension {
                    node: Arc::new(MlNode::try_new(inputs.first().cloned(), step)?),
                })
            }
            Ok((kind, _)) => internal_err!("plugin codec: {kind:?} is not a logical node"),
        }
    }

    fn try_encode(&self, node: &Extension, buf: &mut Vec<u8>) -> Result<()> {
        if let Some(torch) = node.node.as_any().downcast_ref::<TorchInferenceNode>() {
            return write_plugin(buf, Kind::TorchInferenceNode, torch.spec());
        }
        if let Some(ml) = node.node.as_any().downcast_ref::<MlNode>() {
            return write_plugin(buf, Kind::MlNode, ml.step());
        }
        buf.push(TAG_BALLISTA);
        self.inner.try_encode(node, buf)
    }

    fn try_decode_table_provider(
        &self,
        buf: &[u8],
        table_ref: &TableReference,
        schema: SchemaRef,
        ctx: &TaskContext,
    ) -> Result<Arc<dyn TableProvider>> {
        match split(buf)? {
            Err(rest) => self
                .inner
                .try_decode_table_provider(rest, table_ref, schema, ctx),
            Ok((Kind::ImageTable, body)) => {
                let table: ImageTableIn = read_plugin(Kind::ImageTable, body)?;
                let mut provider = ImageTableProvider::from_spec(table.spec);
                if let Some(listing) = table.listing {
                    provider = provider.with_listing(listing)?;
                }
                if provider.schema().fields() != schema.fields() {
                    return internal_err!(
                        "plugin codec: image table {table_ref} decoded with schema {:?}, plan \
                         says {:?}",
                        provider.schema(),
                        schema
                    );
                }
                Ok(Arc::new(provider))
            }
            Ok((kind, _)) => internal_err!("plugin codec: {kind:?} is not a table provider"),
        }
    }

    fn try_encode_table_provider(
        &self,
        table_ref: &TableReference,
        node: Arc<dyn TableProvider>,
        buf: &mut Vec<u8>,
    ) -> Result<()> {
        if let Some(images) = node.downcast_ref::<ImageTableProvider>() {
            let start = buf.len();
            let with_files = ImageTableOut {
                spec: images.spec(),
                listing: images.listing().map(|l| l.as_ref()),
            };
            write_plugin(buf, Kind::ImageTable, &with_files)?;
            if buf.len() - start <= MAX_CARRIED_LISTING_BYTES {
                return Ok(());
            }
            // Too many files to carry: the scheduler's scan lists them again.
            buf.truncate(start);
            let spec_only = ImageTableOut {
                spec: images.spec(),
                listing: None,
            };
            return write_plugin(buf, Kind::ImageTable, &spec_only);
        }
        buf.push(TAG_BALLISTA);
        self.inner.try_encode_table_provider(table_ref, node, buf)
    }

    fn try_decode_file_format(
        &self,
        buf: &[u8],
        ctx: &TaskContext,
    ) -> Result<Arc<dyn FileFormatFactory>> {
        self.inner.try_decode_file_format(buf, ctx)
    }

    fn try_encode_file_format(
        &self,
        buf: &mut Vec<u8>,
        node: Arc<dyn FileFormatFactory>,
    ) -> Result<()> {
        self.inner.try_encode_file_format(buf, node)
    }

    fn try_decode_udf(&self, name: &str, buf: &[u8]) -> Result<Arc<ScalarUDF>> {
        match decode_model_udf(name, buf) {
            Some(udf) => udf,
            None => self.inner.try_decode_udf(name, buf),
        }
    }

    fn try_encode_udf(&self, node: &ScalarUDF, buf: &mut Vec<u8>) -> Result<()> {
        if encode_model_udf(node, buf)? {
            return Ok(());
        }
        self.inner.try_encode_udf(node, buf)
    }

    fn try_decode_udaf(&self, name: &str, buf: &[u8]) -> Result<Arc<AggregateUDF>> {
        self.inner.try_decode_udaf(name, buf)
    }

    fn try_encode_udaf(&self, node: &AggregateUDF, buf: &mut Vec<u8>) -> Result<()> {
        self.inner.try_encode_udaf(node, buf)
    }

    fn try_decode_udwf(&self, name: &str, buf: &[u8]) -> Result<Arc<WindowUDF>> {
        self.inner.try_decode_udwf(name, buf)
    }

    fn try_encode_udwf(&self, node: &WindowUDF, buf: &mut Vec<u8>) -> Result<()> {
        self.inner.try_encode_udwf(node, buf)
    }
}

/// Physical codec: the plugin's operators, then Ballista's codec (shuffle nodes etc.).
#[derive(Debug, Default)]
pub struct PluginPhysicalCodec {
    inner: BallistaPhysicalExtensionCodec,
}

impl PhysicalExtensionCodec for PluginPhysicalCodec {
    fn try_decode(
        &self,
        buf: &[u8],
        inputs: &[Arc<dyn ExecutionPlan>],
        ctx: &TaskContext,
        proto_converter: &dyn PhysicalProtoConverterExtension,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        match split(buf)? {
            Err(rest) => self.inner.try_decode(rest, inputs, ctx, proto_converter),
            Ok((Kind::ImageDecodeExec, body)) => {
                let proto: ImageDecodeExecProto = read_plugin(Kind::ImageDecodeExec, body)?;
                let [input] = inputs else {
                    return internal_err!(
                        "plugin codec: ImageDecodeExec needs 1 input, got {}",
                        inputs.len()
                    );
                };
                Ok(Arc::new(ImageDecodeExec::try_new(
                    input.clone(),
                    proto.spec,
                    proto.projection,
                )?))
            }
            Ok((Kind::TorchInferenceExec, body)) => {
                let spec: TorchSpec = read_plugin(Kind::TorchInferenceExec, body)?;
                let [input] = inputs else {
                    return internal_err!("plugin codec: TorchInferenceExec needs 1 input");
                };
                Ok(Arc::new(TorchInferenceExec::try_new(input.clone(), spec)?))
            }
            Ok((Kind::MlExec, body)) => {
                let step: MlStep = read_plugin(Kind::MlExec, body)?;
                let [input] = inputs else {
                    return internal_err!(
                        "plugin codec: a logistic regression operator needs 1 input"
                    );
                };
                crate::ml::planner::operator(input.clone(), step)
            }
            Ok((kind, _)) => internal_err!("plugin codec: {kind:?} is not a physical node"),
        }
    }

    fn try_encode(
        &self,
        node: Arc<dyn ExecutionPlan>,
        buf: &mut Vec<u8>,
        proto_converter: &dyn PhysicalProtoConverterExtension,
    ) -> Result<()> {
        if let Some(exec) = node.downcast_ref::<ImageDecodeExec>() {
            let proto = ImageDecodeExecProto {
                spec: exec.spec().clone(),
                projection: exec.projection().to_vec(),
            };
            return write_plugin(buf, Kind::ImageDecodeExec, &proto);
        }
        if let Some(exec) = node.downcast_ref::<TorchInferenceExec>() {
            return write_plugin(buf, Kind::TorchInferenceExec, exec.spec());
        }
        if let Some(step) = crate::ml::planner::step_of(node.as_ref()) {
            return write_plugin(buf, Kind::MlExec, &step);
        }
        buf.push(TAG_BALLISTA);
        self.inner.try_encode(node, buf, proto_converter)
    }

    fn try_decode_udf(&self, name: &str, buf: &[u8]) -> Result<Arc<ScalarUDF>> {
        match decode_model_udf(name, buf) {
            Some(udf) => udf,
            None => self.inner.try_decode_udf(name, buf),
        }
    }

    fn try_encode_udf(&self, node: &ScalarUDF, buf: &mut Vec<u8>) -> Result<()> {
        if encode_model_udf(node, buf)? {
            return Ok(());
        }
        self.inner.try_encode_udf(node, buf)
    }

    fn try_decode_udaf(&self, name: &str, buf: &[u8]) -> Result<Arc<AggregateUDF>> {
        self.inner.try_decode_udaf(name, buf)
    }

    fn try_encode_udaf(&self, node: &AggregateUDF, buf: &mut Vec<u8>) -> Result<()> {
        self.inner.try_encode_udaf(node, buf)
    }

    fn try_decode_udwf(&self, name: &str, buf: &[u8]) -> Result<Arc<WindowUDF>> {
        self.inner.try_decode_udwf(name, buf)
    }

    fn try_encode_udwf(&self, node: &WindowUDF, buf: &mut Vec<u8>) -> Result<()> {
        self.inner.try_encode_udwf(node, buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::ImageReadOptions;
    use datafusion::physical_plan::ExecutionPlanProperties;
    use datafusion::prelude::SessionContext;
    use datafusion_proto::bytes::{
        logical_plan_from_bytes_with_extension_codec, logical_plan_to_bytes_with_extension_codec,
        physical_plan_from_bytes_with_extension_codec, physical_plan_to_bytes_with_extension_codec,
    };

    fn flowers() -> String {
        format!("{}/../../shared/data/flowers", env!("CARGO_MANIFEST_DIR"))
    }

    fn options() -> ImageReadOptions {
        ImageReadOptions::from_pairs([("withLabel", "true"), ("dropInvalid", "true")]).unwrap()
    }

    #[tokio::test]
    async fn image_table_round_trips_through_the_logical_codec() {
        let ctx = SessionContext::new();
        let provider = ImageTableProvider::try_new(&flowers(), options()).unwrap();
        let df = ctx.read_table(Arc::new(provider.clone())).unwrap();
        let plan = df.logical_plan().clone();
        let codec = PluginLogicalCodec::default();
        let bytes = logical_plan_to_bytes_with_extension_codec(&plan, &codec).unwrap();
        let back =
            logical_plan_from_bytes_with_extension_codec(&bytes, &ctx.task_ctx(), &codec).unwrap();
        assert_eq!(format!("{plan}"), format!("{back}"));
        let LogicalPlan::TableScan(scan) = back else {
            panic!("not a scan: {back}")
        };
        let source = datafusion::datasource::source_as_provider(&scan.source).unwrap();
        let decoded = source
            .downcast_ref::<ImageTableProvider>()
            .expect("image table");
        assert_eq!(decoded.spec(), provider.spec());
        // The files listed when the table was defined travel with it: the scheduler's scan
        // does not list again.
        let kept = decoded.listing().expect("the listing is carried");
        assert_eq!(Some(kept), provider.listing());
        // The 1,428 photos and LICENSE.txt (an invalid row, dropped by dropInvalid).
        assert_eq!(kept.files.len(), 1429);
        // A catalog table (STORED AS IMAGE) carries none: its scans list.
        let table: Arc<dyn TableProvider> = Arc::new(provider.clone().listing_at_scan());
        let mut buf = vec![];
        codec
            .try_encode_table_provider(&TableReference::bare("t"), table.clone(), &mut buf)
            .unwrap();
        let back = codec
            .try_decode_table_provider(
                &buf,
                &TableReference::bare("t"),
                table.schema(),
                &ctx.task_ctx(),
            )
            .unwrap();
        let back = back.downcast_ref::<ImageTableProvider>().unwrap();
        assert!(back.listing().is_none());
        assert_eq!(back.spec(), provider.spec());
    }

    #[tokio::test]
    async fn image_decode_exec_round_trips_through_the_physical_codec() {
        let ctx = SessionContext::new();
        let provider = ImageTableProvider::try_new(&flowers(), options()).unwrap();
        let plan = provider
            .scan(&ctx.state(), Some(&vec![2, 0]), &[], None)
            .await
            .unwrap();
        let codec = PluginPhysicalCodec::default();
        let bytes = physical_plan_to_bytes_with_extension_codec(plan.clone(), &codec).unwrap();
        let back =
            physical_plan_from_bytes_with_extension_codec(&bytes, &ctx.task_ctx(), &codec).unwrap();
        let exec = back
            .downcast_ref::<ImageDecodeExec>()
            .expect("ImageDecodeExec");
        assert_eq!(exec.spec(), provider.spec());
        assert_eq!(exec.projection(), &[2, 0]);
        assert_eq!(back.schema(), plan.schema());
        // The leaf stays a built-in DataSourceExec, which Ballista slices per task.
        assert_eq!(back.children()[0].name(), "DataSourceExec");
        assert_eq!(
            back.output_partitioning().partition_count(),
            plan.output_partitioning().partition_count()
        );
        // A scaled decode (set by the scheduler's planner) reaches the executors.
        let scaled: Arc<dyn ExecutionPlan> = Arc::new(
            plan.downcast_ref::<ImageDecodeExec>()
                .unwrap()
                .with_decode_cover((256, 256))
                .unwrap(),
        );
        let bytes = physical_plan_to_bytes_with_extension_codec(scaled, &codec).unwrap();
        let back =
            physical_plan_from_bytes_with_extension_codec(&bytes, &ctx.task_ctx(), &codec).unwrap();
        let exec = back.downcast_ref::<ImageDecodeExec>().unwrap();
        assert_eq!(exec.spec().decode_cover, Some((256, 256)));
    }

    #[test]
    fn foreign_or_unknown_tags_are_rejected() {
        assert!(split(&[]).is_err());
        assert!(split(&[0x42, 1, 2]).is_err());
        assert!(split(&[TAG_PLUGIN, 99]).is_err());
        assert!(matches!(split(&[TAG_BALLISTA, 7]), Ok(Err(&[7]))));
    }
}

/// Tag of a registered model function's definition (see `sql::functions`).
const MODEL_UDF_TAG: &[u8] = b"DLPMODELFN1";

#[derive(serde::Serialize, serde::Deserialize)]
struct ModelUdfDefinition {
    name: String,
    source: crate::sql::functions::FunctionSource,
}

/// Writes a registered model function's definition; false for other functions.
fn encode_model_udf(node: &ScalarUDF, buf: &mut Vec<u8>) -> Result<bool> {
    let Some(f) = node
        .inner()
        .downcast_ref::<crate::sql::functions::ModelUdf>()
    else {
        return Ok(false);
    };
    buf.extend_from_slice(MODEL_UDF_TAG);
    serde_json::to_writer(
        &mut *buf,
        &ModelUdfDefinition {
            name: node.name().to_string(),
            source: f.source().clone(),
        },
    )
    .map_err(|e| {
        datafusion::common::DataFusionError::Internal(format!("encode {}: {e}", node.name()))
    })?;
    Ok(true)
}

/// Rebuilds a registered model function from its definition; None for other functions.
fn decode_model_udf(name: &str, buf: &[u8]) -> Option<Result<Arc<ScalarUDF>>> {
    let json = buf.strip_prefix(MODEL_UDF_TAG)?;
    Some(
        serde_json::from_slice::<ModelUdfDefinition>(json)
            .map_err(|e| {
                datafusion::common::DataFusionError::Internal(format!(
                    "decode function {name}: {e}"
                ))
            })
            .and_then(|d| crate::sql::functions::decode(&d.name, d.source)),
    )
}
