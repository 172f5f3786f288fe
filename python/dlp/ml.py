"""Spark ML / sparkdl stages, pipelines, evaluation and tuning. Nothing here computes a
model: estimators' `fit` submits a job spec that the cluster runs, models live on the
cluster (a saved PipelineModel directory there), and `transform` is SQL.

Parameters are checked here, by name and type, before anything is sent."""
from __future__ import annotations

import hashlib
import itertools
import json
import time
import uuid
from typing import Any, Dict, List, Optional, Sequence, Tuple

from .dataframe import DataFrame, _ident, _string
from .errors import DlpError

_UNSET = object()


class Param:
    """A stage's parameter (`lr.regParam`), for ParamGridBuilder and getters."""

    def __init__(self, parent: "Params", name: str, types: Tuple[type, ...], doc: str):
        self.parent, self.name, self.types, self.doc = parent, name, types, doc

    def __repr__(self) -> str:
        return f"Param({type(self.parent).__name__}.{self.name})"

    def check(self, value: Any) -> Any:
        """The value if its type fits (ints are accepted for floats), else TypeError."""
        if value is None and type(None) in self.types:
            return value
        if isinstance(value, bool) and bool not in self.types:
            raise self._wrong(value)
        if isinstance(value, int) and float in self.types and int not in self.types:
            return float(value)
        if list in self.types and isinstance(value, tuple):
            value = list(value)
        if not isinstance(value, self.types):
            raise self._wrong(value)
        if isinstance(value, list) and getattr(self, "item", None) is not None:
            for v in value:
                if isinstance(v, int) and self.item is float and not isinstance(v, bool):
                    continue
                if not isinstance(v, self.item):
                    raise TypeError(f"{type(self.parent).__name__}: parameter '{self.name}' must "
                                    f"be a list of {self.item.__name__}, got {value!r}")
        return value

    def _wrong(self, value: Any) -> TypeError:
        names = " or ".join("None" if t is type(None) else t.__name__ for t in self.types)
        return TypeError(f"{type(self.parent).__name__}: parameter '{self.name}' must be "
                         f"{names}, got {type(value).__name__} {value!r}")


class Params:
    """Stages with Spark's keyword-only parameters: `Stage(name=value, ...)`,
    `getOrDefault(name)`, `setParams(...)`, `copy(extra)`."""

    # name -> (types, default, doc); default _UNSET: required.
    _spec: Dict[str, Tuple[Tuple[type, ...], Any, str]] = {}
    # Sub-types of lists.
    _items: Dict[str, type] = {}

    def __init__(self, **kwargs: Any):
        self._values: Dict[str, Any] = {}
        for name, (types, _default, doc) in self._spec.items():
            p = Param(self, name, types, doc)
            p.item = self._items.get(name)
            object.__setattr__(self, name, p)
        self.setParams(**kwargs)
        missing = [n for n, (_, d, _) in self._spec.items() if d is _UNSET and n not in self._values]
        if missing:
            raise TypeError(f"{type(self).__name__}: missing required parameter(s) {', '.join(missing)}")

    def setParams(self, **kwargs: Any) -> "Params":
        for name, value in kwargs.items():
            if name not in self._spec:
                close = [n for n in self._spec if n.lower() == name.lower()]
                hint = f"; did you mean '{close[0]}'?" if close else ""
                raise TypeError(f"{type(self).__name__}: unknown parameter '{name}'{hint} "
                                f"(parameters: {', '.join(self._spec)})")
            self._values[name] = getattr(self, name).check(value)
        return self

    def _set(self, **kwargs: Any) -> "Params":
        return self.setParams(**kwargs)

    def getOrDefault(self, name) -> Any:
        name = name.name if isinstance(name, Param) else name
        if name in self._values:
            return self._values[name]
        default = self._spec[name][1]
        return None if default is _UNSET else default

    def isSet(self, name) -> bool:
        return (name.name if isinstance(name, Param) else name) in self._values

    def explainParams(self) -> str:
        return "\n".join(f"{n}: {doc} (default: {d if d is not _UNSET else 'required'}"
                         f"{', current: ' + repr(self._values[n]) if n in self._values else ''})"
                         for n, (_, d, doc) in self._spec.items())

    def copy(self, extra: Optional[Dict[Param, Any]] = None) -> "Params":
        new = type(self)(**self._values)
        for p, v in (extra or {}).items():
            if p.parent is self:
                new.setParams(**{p.name: v})
        return new

    def __getattr__(self, attr: str):
        # getRegParam() / setRegParam(v), as PySpark generates them.
        for prefix in ("get", "set"):
            if attr.startswith(prefix) and len(attr) > 3:
                name = attr[3].lower() + attr[4:]
                if name in type(self)._spec:
                    if prefix == "get":
                        return lambda: self.getOrDefault(name)
                    return lambda value: self.setParams(**{name: value})
        raise AttributeError(f"{type(self).__name__} has no attribute '{attr}'")

    def _stage_spec(self) -> Dict[str, Any]:
        """The stage as a job spec's `stages` entry (only the parameters set)."""
        out: Dict[str, Any] = {"type": type(self).__name__}
        out.update(self._values)
        return out

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self._values.items())
        return f"{type(self).__name__}({args})"


_S, _I, _F, _B = (str,), (int,), (float,), (bool,)
_OPT_S = (str, type(None))


class Transformer(Params):
    def transform(self, df: DataFrame) -> DataFrame:
        raise NotImplementedError


class Estimator(Params):
    def fit(self, df: DataFrame, params: Optional[Dict[Param, Any]] = None):
        return Pipeline(stages=[self]).fit(df, params)


class DeepImageFeaturizer(Transformer):
    """sparkdl's featurizer: a pretrained CNN's penultimate layer (or logits) per image."""

    _spec = {
        "inputCol": (_S, "image", "image column"),
        "outputCol": (_S, "features", "feature vector column"),
        "modelName": (_S, _UNSET, "zoo model, e.g. efficientnet_lite0"),
        "featureLayer": (_S, "penultimate", "'penultimate' or 'logits'"),
        "resize": (_OPT_S, None, "'stretch' or 'shorter_side_center_crop' (default: the model's)"),
        "batchSize": (_I, None, "images per forward pass (unset: dlp.torch.batch_size; auto by default: 4 on a CPU, 16 on a GPU)"),
    }

    def transform(self, df: DataFrame) -> DataFrame:
        if self.getOrDefault("resize") is not None:
            return _fitted_transform(self, df)
        args = [_string(self.getOrDefault("modelName")), _ident(self.getOrDefault("inputCol"))]
        if self.getOrDefault("featureLayer") != "penultimate":
            args.append(_string(self.getOrDefault("featureLayer")))
        return _add_column(df, self.getOrDefault("outputCol"), f"featurize({', '.join(args)})")


class DeepImagePredictor(Transformer):
    """sparkdl's predictor: a zoo model's top-K ImageNet classes per image."""

    _spec = {
        "inputCol": (_S, "image", "image column"),
        "outputCol": (_S, "predicted_labels", "output column"),
        "modelName": (_S, _UNSET, "zoo model"),
        "topK": (_I, 5, "how many classes"),
        "decodePredictions": (_B, True, "class names with the scores"),
        "batchSize": (_I, None, "images per forward pass (unset: dlp.torch.batch_size; auto by default: 4 on a CPU, 16 on a GPU)"),
    }

    def transform(self, df: DataFrame) -> DataFrame:
        if not self.getOrDefault("decodePredictions"):
            return _fitted_transform(self, df)
        call = (f"predict_topk({_string(self.getOrDefault('modelName'))}, "
                f"{_ident(self.getOrDefault('inputCol'))}, {int(self.getOrDefault('topK'))})")
        return _add_column(df, self.getOrDefault("outputCol"), call)


class TorchImageTransformer(Transformer):
    """A custom TorchScript model from the model directory applied to images."""

    _spec = {
        "inputCol": (_S, "image", "image column"),
        "outputCol": (_S, _UNSET, "output column"),
        "modelName": (_S, _UNSET, "model in the model directory"),
        "outputMode": (_S, "vector", "'vector' or 'image'"),
        "resize": (_OPT_S, None, "resize policy (default: the model's)"),
        "batchSize": (_I, None, "images per forward pass (unset: dlp.torch.batch_size; auto by default: 4 on a CPU, 16 on a GPU)"),
    }

    def transform(self, df: DataFrame) -> DataFrame:
        return _fitted_transform(self, df)


class VectorAssembler(Transformer):
    """MLlib's VectorAssembler: columns (vectors or numbers) concatenated into one vector."""

    _spec = {
        "inputCols": ((list,), _UNSET, "columns, in order"),
        "outputCol": (_S, "features", "output column"),
        "handleInvalid": (_S, "error", "'error', 'skip' or 'keep'"),
    }
    _items = {"inputCols": str}

    def transform(self, df: DataFrame) -> DataFrame:
        cols = ", ".join(_ident(c) for c in self.getOrDefault("inputCols"))
        how = self.getOrDefault("handleInvalid")
        if how == "skip":
            df = df.filter(" AND ".join(f"{_ident(c)} IS NOT NULL" for c in self.getOrDefault("inputCols")))
        fn = "vector_assemble_keep" if how == "keep" else "vector_assemble"
        return _add_column(df, self.getOrDefault("outputCol"), f"{fn}({cols})")


class LogisticRegression(Estimator):
    """MLlib's LogisticRegression, fitted on the executors by gradient aggregation."""

    _spec = {
        "featuresCol": (_S, "features", "features column"),
        "labelCol": (_S, "label", "label column (0..k-1)"),
        "predictionCol": (_S, "prediction", ""),
        "probabilityCol": (_S, "probability", ""),
        "rawPredictionCol": (_S, "rawPrediction", ""),
        "maxIter": (_I, 100, "iterations"),
        "regParam": (_F, 0.0, "regularization strength"),
        "elasticNetParam": (_F, 0.0, "L1 share of the penalty (0: L2, 1: L1)"),
        "tol": (_F, 1e-6, "convergence tolerance"),
        "fitIntercept": (_B, True, ""),
        "standardization": (_B, True, ""),
        "family": (_S, "auto", "'auto', 'binomial' or 'multinomial'"),
        "threshold": (_F, 0.5, "binary threshold"),
        "thresholds": ((list, type(None)), None, "per-class thresholds"),
        "weightCol": (_OPT_S, None, "row weight column"),
        "classWeight": (_OPT_S, None, "'balanced': weights inversely proportional to class counts"),
    }
    _items = {"thresholds": float}


def _add_column(df: DataFrame, name: str, sql: str) -> DataFrame:
    if name in df.columns:
        raise ValueError(f"output column '{name}' already exists; choose another outputCol")
    return df._derive(f"SELECT *, {sql} AS {_ident(name)} FROM {df._from()}")


def _fitted_transform(stage: Params, df: DataFrame) -> DataFrame:
    raise DlpError(f"{type(stage).__name__} with {stage!r} has no SQL form on its own; put it in a "
                   "Pipeline and fit it: the PipelineModel's transform applies it")


class Pipeline(Estimator):
    """Spark ML's Pipeline. `fit(df)` runs on the cluster as a pipeline job (progress shown,
    Ctrl-C cancels it there) and gives a PipelineModel saved on the cluster."""

    _spec = {"stages": ((list,), _UNSET, "stages, in order")}

    def __init__(self, stages: Optional[List[Params]] = None, **kwargs):
        super().__init__(stages=list(stages or []), **kwargs)
        for s in self.getOrDefault("stages"):
            if not isinstance(s, (Transformer, Estimator)) or isinstance(s, Pipeline):
                raise TypeError(f"Pipeline: stages must be dlp stages, got {s!r}")

    def getStages(self) -> List[Params]:
        return self.getOrDefault("stages")

    def _job(self, df: DataFrame, params: Optional[Dict[Param, Any]] = None) -> Dict[str, Any]:
        if not isinstance(df, DataFrame):
            raise TypeError(f"fit: expected a dlp DataFrame, got {type(df).__name__}")
        stages = [s.copy(params) if params else s for s in self.getStages()]
        if not stages:
            raise ValueError("Pipeline: no stages")
        session = df._session
        where = f"{session.models_dir}/{session.user or 'anonymous'}/{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:8]}"
        data: Dict[str, Any] = {"sql": df._sql}
        label_cols = [s.getOrDefault("labelCol") for s in stages
                      if isinstance(s, Estimator) and "labelCol" in s._spec]
        names = _class_names(df, label_cols[-1] if label_cols else "label")
        if names:
            data["classes"] = names
        return {
            "data": data,
            "stages": [s._stage_spec() for s in stages],
            "output": {"model": where},
        }

    def fit(self, df: DataFrame, params: Optional[Dict[Param, Any]] = None) -> "PipelineModel":
        spec = self._job(df, params)
        status = df._session.submit(spec, what="fit")
        return PipelineModel._from_result(df._session, status["result"])


def _class_names(df: DataFrame, label_col: str) -> Optional[List[str]]:
    """The class names a DataFrame carries, as `read_images(..., withLabel=True)` gives them:
    its `label_name` column, in label order, when every label 0..k-1 has exactly one name
    (else None: the model's classes stay unnamed)."""
    if label_col not in df.columns or "label_name" not in df.columns:
        return None
    rows = df._session._query(
        f"SELECT DISTINCT CAST({_ident(label_col)} AS BIGINT) AS l, label_name AS n "
        f"FROM {df._from()}").to_pylist()
    names: Dict[int, set] = {}
    for r in rows:
        if r["l"] is None or r["n"] is None:
            return None
        names.setdefault(r["l"], set()).add(r["n"])
    if sorted(names) != list(range(len(names))) or any(len(v) != 1 for v in names.values()):
        return None
    return [next(iter(names[i])) for i in range(len(names))]


class PipelineModel:
    """A fitted pipeline saved on the cluster (`path` is where)."""

    def __init__(self, session, path: str, stages: List[str], class_names: List[str], manifest=None):
        self._session = session
        self.path = path
        self.stageTypes = stages
        self.classNames = class_names
        self.manifest = manifest
        self._function: Optional[str] = None

    @classmethod
    def _from_result(cls, session, result: Dict[str, Any]) -> "PipelineModel":
        return cls.load(session, result["model"])

    @property
    def stages(self) -> List[Dict[str, Any]]:
        """The fitted stages as saved (type and parameters)."""
        return (self.manifest or {}).get("stages", [])

    @classmethod
    def load(cls, session, path: str) -> "PipelineModel":
        """The PipelineModel saved at `path` on the cluster (checked as a load checks it)."""
        d = session._action("dlp.model.describe", path)
        return cls(session, d["path"], d["stages"], d.get("classNames") or [], d.get("manifest"))

    def save(self, path: str, overwrite: bool = False) -> None:
        """Saves the model again at `path` on the cluster (under a writable root)."""
        session = self._session
        session._action("dlp.model.save", json.dumps({"from": self.path, "to": path, "overwrite": overwrite}))

    def write(self) -> "_Writer":
        return _Writer(self)

    def _ends_in_classifier(self) -> bool:
        return bool(self.stageTypes) and self.stageTypes[-1] == "LogisticRegressionModel"

    def register_function(self, name: str, replace: bool = False) -> str:
        """Registers the model as a SQL function `name(image)` on the cluster (returning
        {prediction, label, probability}), callable from any client, ADBC included."""
        if not name.isidentifier():
            raise ValueError(f"register_function: '{name}' is not a valid function name")
        verb = "CREATE OR REPLACE FUNCTION" if replace else "CREATE FUNCTION"
        self._session._query(f"{verb} {name}() AS {_string('pipeline:' + self.path)}")
        return name

    registerFunction = register_function

    def transform(self, df: DataFrame) -> DataFrame:
        """Adds `prediction` (double), `probability` (vector) and, when the classes have
        names, `predictedLabel`; the model runs once per row."""
        if not self._ends_in_classifier():
            raise DlpError(f"PipelineModel at {self.path}: transform needs a pipeline that ends in "
                           f"a classifier (stages: {self.stageTypes})")
        if self._function is None:
            digest = hashlib.sha256(self.path.encode()).hexdigest()[:16]
            self._function = self.register_function(f"dlp_model_{digest}", replace=True)
        inner = df._derive(f"SELECT *, {self._function}({_ident('image')}) AS __dlp_out FROM {df._from()}")
        cols = [c for c in df.columns]
        keep = ", ".join(_ident(c) for c in cols if c not in ("prediction", "probability", "predictedLabel"))
        named = ", __dlp_out['label'] AS \"predictedLabel\"" if self.classNames else ""
        return df._derive(
            f"SELECT {keep}, __dlp_out['prediction'] AS prediction, "
            f"__dlp_out['probability'] AS probability{named} FROM {inner._from()}")

    def __repr__(self) -> str:
        return f"PipelineModel({self.path!r}, stages={self.stageTypes})"


class _Writer:
    def __init__(self, model: PipelineModel):
        self._model, self._overwrite = model, False

    def overwrite(self) -> "_Writer":
        self._overwrite = True
        return self

    def save(self, path: str) -> None:
        self._model.save(path, self._overwrite)


_METRICS = ("f1", "accuracy", "weightedPrecision", "weightedRecall", "weightedTruePositiveRate",
            "weightedFalsePositiveRate", "weightedFMeasure", "truePositiveRateByLabel",
            "falsePositiveRateByLabel", "precisionByLabel", "recallByLabel", "fMeasureByLabel",
            "hammingLoss", "logLoss")


class MulticlassClassificationEvaluator(Params):
    """MLlib's evaluator, from the confusion matrix the cluster counts."""

    _spec = {
        "metricName": (_S, "f1", "metric"),
        "labelCol": (_S, "label", ""),
        "predictionCol": (_S, "prediction", ""),
        "metricLabel": (_F, 0.0, "the class of the ...ByLabel metrics"),
        "beta": (_F, 1.0, "F-measure beta"),
        "probabilityCol": (_S, "probability", "the class probabilities logLoss reads"),
        "eps": (_F, 1e-15, "logLoss: probabilities are clipped to at least eps"),
    }

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        if self.getOrDefault("metricName") not in _METRICS:
            raise ValueError(f"MulticlassClassificationEvaluator: metricName "
                             f"'{self.getOrDefault('metricName')}' is not one of {', '.join(_METRICS)}")

    def confusion(self, df: DataFrame) -> Dict[Tuple[float, float], int]:
        """(label, prediction) -> count."""
        lab, pred = _ident(self.getOrDefault("labelCol")), _ident(self.getOrDefault("predictionCol"))
        for name in (self.getOrDefault("labelCol"), self.getOrDefault("predictionCol")):
            if name not in df.columns:
                raise ValueError(f"evaluate: no column '{name}' (columns: {', '.join(df.columns)})")
        rows = df._session._query(
            f"SELECT CAST({lab} AS DOUBLE) AS l, CAST({pred} AS DOUBLE) AS p, count(*) AS n "
            f"FROM {df._from()} GROUP BY 1, 2").to_pylist()
        return {(r["l"], r["p"]): int(r["n"]) for r in rows}

    def evaluate(self, df: DataFrame) -> float:
        if self.getOrDefault("metricName") == "logLoss":
            return self._log_loss(df)
        return metric_of(self.confusion(df), self.getOrDefault("metricName"),
                         self.getOrDefault("metricLabel"), self.getOrDefault("beta"))

    def _log_loss(self, df: DataFrame) -> float:
        """MLlib's logLoss: the mean of -log(max(probability[label], eps)), counted on the
        cluster."""
        label_col, prob_col = self.getOrDefault("labelCol"), self.getOrDefault("probabilityCol")
        for name in (label_col, prob_col):
            if name not in df.columns:
                raise ValueError(f"evaluate: no column '{name}' (columns: {', '.join(df.columns)})")
        p = f"array_element({_ident(prob_col)}, CAST({_ident(label_col)} AS BIGINT) + 1)"
        eps = format(self.getOrDefault("eps"), ".20f")
        r = df._session._query(
            f"SELECT avg(-ln(greatest(CAST({p} AS DOUBLE), {eps}))) AS v, count(*) AS n, "
            f"count({p}) AS found FROM {df._from()}").to_pylist()[0]
        if not r["n"]:
            raise DlpError("evaluate: no rows")
        if r["found"] != r["n"]:
            raise ValueError(f"evaluate: logLoss: {r['n'] - r['found']} of {r['n']} rows have no "
                             f"probability for their label ({label_col} is not an index into "
                             f"{prob_col}, or {prob_col} is null)")
        return float(r["v"])

    def isLargerBetter(self) -> bool:
        return self.getOrDefault("metricName") not in ("weightedFalsePositiveRate",
                                                      "falsePositiveRateByLabel", "hammingLoss",
                                                      "logLoss")


def metric_of(cm: Dict[Tuple[float, float], int], name: str, label: float = 0.0,
              beta: float = 1.0) -> float:
    """MLlib's MulticlassMetrics from a confusion matrix."""
    total = sum(cm.values())
    if total == 0:
        raise DlpError("evaluate: no rows")
    labels = sorted({l for l, _ in cm} | {p for _, p in cm})
    tp = {c: cm.get((c, c), 0) for c in labels}
    actual = {c: sum(n for (l, _), n in cm.items() if l == c) for c in labels}
    predicted = {c: sum(n for (_, p), n in cm.items() if p == c) for c in labels}

    def precision(c):
        return tp[c] / predicted[c] if predicted[c] else 0.0

    def recall(c):
        return tp[c] / actual[c] if actual[c] else 0.0

    def fpr(c):
        neg = total - actual[c]
        return (predicted[c] - tp[c]) / neg if neg else 0.0

    def fmeasure(c, b=beta):
        p, r = precision(c), recall(c)
        return (1 + b * b) * p * r / (b * b * p + r) if p + r else 0.0

    def weighted(f):
        return sum(f(c) * actual[c] for c in labels) / total

    if name == "accuracy":
        return sum(tp.values()) / total
    if name == "hammingLoss":
        return 1 - sum(tp.values()) / total
    if name in ("f1",):
        return weighted(lambda c: fmeasure(c, 1.0))
    if name == "weightedFMeasure":
        return weighted(fmeasure)
    if name == "weightedPrecision":
        return weighted(precision)
    if name in ("weightedRecall", "weightedTruePositiveRate"):
        return weighted(recall)
    if name == "weightedFalsePositiveRate":
        return weighted(fpr)
    by_label = {"truePositiveRateByLabel": recall, "recallByLabel": recall,
                "precisionByLabel": precision, "fMeasureByLabel": fmeasure,
                "falsePositiveRateByLabel": fpr}
    if name in by_label:
        return by_label[name](float(label)) if float(label) in labels else 0.0
    raise ValueError(f"unknown metric '{name}'")


class ParamGridBuilder:
    """Spark's ParamGridBuilder: the product of the values given per parameter."""

    def __init__(self):
        self._grid: Dict[Param, List[Any]] = {}

    def addGrid(self, param: Param, values: Sequence[Any]) -> "ParamGridBuilder":
        if not isinstance(param, Param):
            raise TypeError(f"addGrid: expected a stage's Param (e.g. lr.regParam), got {param!r}")
        self._grid[param] = [param.check(v) for v in values]
        return self

    def baseOn(self, *args) -> "ParamGridBuilder":
        pairs = args[0].items() if len(args) == 1 and isinstance(args[0], dict) else args
        for p, v in pairs:
            self.addGrid(p, [v])
        return self

    def build(self) -> List[Dict[Param, Any]]:
        keys = list(self._grid)
        return [dict(zip(keys, combo)) for combo in itertools.product(*(self._grid[k] for k in keys))]


# The parameters CrossValidator and TrainValidationSplit share.
_TUNING = {
    "estimator": ((Estimator,), _UNSET, "a Pipeline (or estimator)"),
    "estimatorParamMaps": ((list,), _UNSET, "ParamGridBuilder().build()"),
    "evaluator": ((MulticlassClassificationEvaluator,), _UNSET, "the metric to pick by"),
    "seed": (_I, 0, "fold / split assignment seed"),
    "parallelism": (_I, 1, "candidate fits at once"),
}


class _Tuning(Params):
    method = ""

    def _grid(self) -> Dict[str, List[Any]]:
        maps = self.getOrDefault("estimatorParamMaps")
        est = self.getOrDefault("estimator")
        stages = est.getStages() if isinstance(est, Pipeline) else [est]
        estimators = [s for s in stages if isinstance(s, Estimator)]
        if len(estimators) != 1:
            raise ValueError(f"{type(self).__name__}: the estimator needs exactly one estimator stage")
        grid: Dict[str, List[Any]] = {}
        for m in maps:
            for p, v in m.items():
                if p.parent is not estimators[0]:
                    raise ValueError(f"{type(self).__name__}: {p!r} is not a parameter of the "
                                     f"pipeline's estimator ({type(estimators[0]).__name__}); only "
                                     "its parameters can be tuned")
                vals = grid.setdefault(p.name, [])
                if v not in vals:
                    vals.append(v)
        product = 1
        for v in grid.values():
            product *= len(v)
        if product != len(maps):
            raise ValueError(f"{type(self).__name__}: estimatorParamMaps must be a full grid "
                             "(ParamGridBuilder().addGrid(...).build())")
        return grid

    def fit(self, df: DataFrame) -> "TuningModel":
        est = self.getOrDefault("estimator")
        pipeline = est if isinstance(est, Pipeline) else Pipeline(stages=[est])
        spec = pipeline._job(df)
        tuning = {"method": self.method, "seed": self.getOrDefault("seed"),
                  "parallelism": self.getOrDefault("parallelism"), "grid": self._grid()}
        tuning.update(self._extra())
        spec["tuning"] = tuning
        evaluator = self.getOrDefault("evaluator")
        spec["evaluation"] = {"metricName": evaluator.getOrDefault("metricName")}
        status = df._session.submit(spec, what="tune")
        return TuningModel(PipelineModel._from_result(df._session, status["result"]),
                           status["result"]["tuning"])


class CrossValidator(_Tuning):
    """Spark's CrossValidator; the featurizer runs once for all folds and candidates."""

    method = "crossValidator"
    _spec = dict(_TUNING, numFolds=(_I, 3, "folds"))

    def _extra(self):
        return {"numFolds": self.getOrDefault("numFolds")}


class TrainValidationSplit(_Tuning):
    method = "trainValidationSplit"
    _spec = dict(_TUNING, trainRatio=(_F, 0.75, "share used for training"))

    def _extra(self):
        return {"trainRatio": self.getOrDefault("trainRatio")}


class TuningModel:
    """A tuning result: `bestModel` (refit on all the data), `avgMetrics`, `stdMetrics`,
    `bestParams`, `paramMaps`."""

    def __init__(self, best: PipelineModel, tuning: Dict[str, Any]):
        self.bestModel = best
        self.avgMetrics = tuning.get("avgMetrics")
        self.stdMetrics = tuning.get("stdMetrics")
        self.bestParams = tuning.get("bestParams")
        self.paramMaps = tuning.get("paramMaps")
        self.metricName = tuning.get("metricName")

    def transform(self, df: DataFrame) -> DataFrame:
        return self.bestModel.transform(df)


CrossValidatorModel = TrainValidationSplitModel = TuningModel
