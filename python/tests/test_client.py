"""The client's API against a live cluster: DataFrames, bad input, cancellation."""
import math
import os
import signal
import subprocess
import sys
import time

import pytest

import dlp
from dlp import DeepImageFeaturizer, LogisticRegression, Pipeline, col, lit

HERE = os.path.dirname(os.path.abspath(__file__))


def test_dataframes_are_sql_on_the_cluster(session):
    df = session.read_images("flowers", withLabel=True, dropInvalid=True)
    counts = {r["label_name"]: r["n"] for r in session.sql(
        f"SELECT label_name, count(*) AS n FROM ({df.sql_text}) GROUP BY 1").collect()}
    assert counts == {"daisy": 289, "dandelion": 487, "roses": 263, "sunflowers": 290, "tulips": 99}
    assert "image" in df.columns and df.schema.field("label").type == dlp.dataframe.pa.int32()
    tulips = df.filter("label_name = 'tulips'")
    assert tulips.count() == 99
    assert tulips.limit(5).count() == 5
    small = tulips.select("label", "label_name").withColumn("one", lit(1)).limit(3)
    rows = small.collect()
    assert len(rows) == 3 and all(r["one"] == 1 and r["label_name"] == "tulips" for r in rows)
    assert list(small.toPandas().columns) == ["label", "label_name", "one"]
    # randomSplit: a partition of the rows, the same for the same seed.
    a, b = tulips.randomSplit([0.8, 0.2], seed=42)
    na, nb = a.count(), b.count()
    assert na + nb == 99 and 60 < na < 95
    a2, _ = tulips.randomSplit([0.8, 0.2], seed=42)
    key = "SELECT image['origin'] AS o FROM ({})"
    origins = [sorted(r["o"] for r in session.sql(key.format(x.sql_text)).collect()) for x in (a, a2)]
    assert origins[0] == origins[1]


def test_wrong_password_names_the_user(cluster):
    with pytest.raises(dlp.DlpError, match="alice"):
        dlp.connect(cluster["uri"], user="alice", password="not the password")


def test_nothing_listening_names_the_address():
    # A closed port answers with a gRPC error that names nothing; the client names the address.
    with pytest.raises(dlp.DlpError, match=r"grpc://127\.0\.0\.1:1\b"):
        dlp.connect("grpc://127.0.0.1:1", user="alice", password="x")


def test_misspelt_and_mistyped_parameters_fail_before_sending():
    with pytest.raises(TypeError, match=r"unknown parameter 'regparam'.*did you mean 'regParam'"):
        LogisticRegression(regparam=0.1)
    with pytest.raises(TypeError, match="'maxIter' must be int"):
        LogisticRegression(maxIter="ten")
    with pytest.raises(TypeError, match="missing required parameter.*modelName"):
        DeepImageFeaturizer(inputCol="image")
    with pytest.raises(TypeError, match="'inputCols' must be list"):
        dlp.VectorAssembler(inputCols="a,b")
    with pytest.raises(ValueError, match="metricName 'acuracy'"):
        dlp.MulticlassClassificationEvaluator(metricName="acuracy")


def test_misspelt_read_option_lists_the_real_ones(session):
    with pytest.raises(TypeError, match=r"unexpected option 'withLabels'") as e:
        session.read_images("flowers", withLabels=True)
    listed = str(e.value).split("(options: ")[1]
    assert "withLabels" not in listed and "withLabel" in listed and "batchSize" in listed, e.value


def test_columns_build_conditions_and_read_struct_fields(session):
    df = session.read_images("flowers", withLabel=True, dropInvalid=True, sampleRatio=0.02, seed=5)
    assert df.filter(col("label") == 1).count() == df.filter("label = 1").count() > 0
    both = df.filter((col("label") >= 1) & ~col("label").isin(3, 4))
    assert {r["label"] for r in both.select("label").collect()} <= {1, 2}
    with pytest.raises(ValueError, match="use '&' for 'and'"):
        if col("label") == 1:
            pass
    rows = df.select("image.origin", col("image.width")).limit(2).collect()
    assert set(rows[0]) == {"origin", "width"} and rows[0]["origin"].endswith(".jpg"), rows


def test_unknown_model_and_column_are_named(session):
    df = session.read_images("flowers/tulips", dropInvalid=True).withColumn("label", lit(0)).limit(4)
    with pytest.raises(dlp.DlpError, match="no_such_model"):
        Pipeline(stages=[DeepImageFeaturizer(modelName="no_such_model"), LogisticRegression()]).fit(df)
    with pytest.raises(dlp.DlpError, match="nolabel"):
        Pipeline(stages=[DeepImageFeaturizer(modelName="efficientnet_lite0"),
                         LogisticRegression(labelCol="nolabel", maxIter=2)]).fit(df)
    with pytest.raises(ValueError, match="no column 'nope'"):
        df.select("nope")
    with pytest.raises(dlp.DlpError, match="nope"):
        session.sql(f"SELECT nope FROM ({df.sql_text})").collect()
    with pytest.raises(dlp.DlpError, match="no_such_dir"):
        dlp.PipelineModel.load(session, "no_such_dir/model")


def test_sigint_cancels_the_job_on_the_cluster(cluster, session):
    script = f"""
import dlp
from dlp import DeepImageFeaturizer, LogisticRegression, Pipeline
s = dlp.connect({cluster['uri']!r}, user={cluster['user']!r}, password={cluster['password']!r}, progress=False)
df = s.read_images("flowers", withLabel=True, dropInvalid=True)
print("fitting", flush=True)
Pipeline(stages=[DeepImageFeaturizer(modelName="efficientnet_lite2"), LogisticRegression(maxIter=5)]).fit(df)
print("finished", flush=True)
"""
    before = {j["job_id"] for j in session.jobs()}
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=dict(os.environ, PYTHONPATH=os.path.dirname(HERE)))
    job = None
    deadline = time.time() + 120
    while time.time() < deadline and job is None:
        for j in session.jobs():
            if j["job_id"] not in before and j["state"] == "running" and j.get("ballista_jobs", 0) > 0:
                job = j["job_id"]
        time.sleep(0.5)
    assert job, f"the fit did not start: {proc.stderr.read1().decode() if proc.poll() is not None else ''}"
    time.sleep(1.0)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode != 0 and b"finished" not in out, err.decode()
    assert b"KeyboardInterrupt" in err and f"cancelled {job}".encode() in err, err.decode()
    status = session.status(job)
    assert status["state"] == "cancelled", status
    # Its Ballista jobs stop on the executors within seconds.
    deadline = time.time() + 20
    while session.status(job).get("running_stages") and time.time() < deadline:
        time.sleep(0.5)
    assert session.status(job).get("running_stages") is None, session.status(job)


def test_cross_validator_tunes_on_the_cluster(session):
    df = session.read_images("flowers", withLabel=True, dropInvalid=True, sampleRatio=0.04, seed=3)
    n = df.count()
    assert 30 < n < 90, n
    lr = LogisticRegression(maxIter=30)
    pipeline = Pipeline(stages=[dlp.DeepImageFeaturizer(modelName="efficientnet_lite0"), lr])
    grid = dlp.ParamGridBuilder().addGrid(lr.regParam, [0.01, 0.3]).build()
    cv = dlp.CrossValidator(estimator=pipeline, estimatorParamMaps=grid,
                            evaluator=dlp.MulticlassClassificationEvaluator(metricName="accuracy"),
                            numFolds=2, seed=7)
    model = cv.fit(df)
    assert len(model.avgMetrics) == 2 and all(0.0 <= m <= 1.0 for m in model.avgMetrics)
    assert model.bestParams["regParam"] in (0.01, 0.3)
    assert model.bestModel.stageTypes == ["DeepImageFeaturizer", "LogisticRegressionModel"]
    # read_images(withLabel=True)'s label_name names the classes, as `dlp fit` names them.
    assert model.bestModel.classNames == ["daisy", "dandelion", "roses", "sunflowers", "tulips"]
    out = model.transform(df).select("label", "prediction").collect()
    assert len(out) == n and {r["prediction"] for r in out} <= {0.0, 1.0, 2.0, 3.0, 4.0}
    # MLlib's logLoss, counted on the cluster, against the same sum over the collected rows.
    scored = model.transform(df)
    rows = scored.select("label", "probability").collect()
    expected = sum(-math.log(max(r["probability"][int(r["label"])], 1e-15)) for r in rows) / len(rows)
    log_loss = dlp.MulticlassClassificationEvaluator(metricName="logLoss")
    assert abs(log_loss.evaluate(scored) - expected) < 1e-9 and not log_loss.isLargerBetter()
    # A grid over a parameter of another stage is refused before anything is sent.
    bad = dlp.ParamGridBuilder().addGrid(pipeline.getStages()[0].modelName, ["a", "b"]).build()
    with pytest.raises(ValueError, match="only its parameters can be tuned"):
        dlp.CrossValidator(estimator=pipeline, estimatorParamMaps=bad,
                           evaluator=dlp.MulticlassClassificationEvaluator()).fit(df)
