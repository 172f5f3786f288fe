"""Ballista DLP for Python: sparkdl's Deep Learning Pipelines API on a Ballista DLP cluster.

    import dlp
    session = dlp.connect("grpc://localhost:50050", user="alice", password="...")
    df = session.read_images("flowers", withLabel=True)

The package holds no ML code: DataFrames are SQL the cluster runs, estimators' fit is a
pipeline job on the cluster, and fitted models live there."""
from .dataframe import Column, DataFrame, col, expr, lit
from .errors import DlpError, JobCancelled, JobFailed
from .ml import (
    CrossValidator,
    CrossValidatorModel,
    DeepImageFeaturizer,
    DeepImagePredictor,
    LogisticRegression,
    MulticlassClassificationEvaluator,
    Param,
    ParamGridBuilder,
    Pipeline,
    PipelineModel,
    TorchImageTransformer,
    TrainValidationSplit,
    TrainValidationSplitModel,
    TuningModel,
    VectorAssembler,
    metric_of,
)
from .session import Session, connect

__version__ = "0.2.0"

__all__ = [
    "Column", "CrossValidator", "CrossValidatorModel", "DataFrame", "DeepImageFeaturizer",
    "DeepImagePredictor", "DlpError", "JobCancelled", "JobFailed", "LogisticRegression",
    "MulticlassClassificationEvaluator", "Param", "ParamGridBuilder", "Pipeline",
    "PipelineModel", "Session", "TorchImageTransformer", "TrainValidationSplit",
    "TrainValidationSplitModel", "TuningModel", "VectorAssembler", "col", "connect", "expr",
    "lit", "metric_of",
]
