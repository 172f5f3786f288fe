"""Peers of the distributed logistic regression: data, Spark MLlib and scikit-learn.

  lr_reference.py data    --out DIR --rows N --test-rows M --dim D --classes K
                          [--center-std S] [--seed 42] [--float32] [--files F]
      Gaussian blobs (class centres ~ N(0, S^2) per feature, unit noise) written as
      DIR/train.parquet and DIR/test.parquet: features list<double|float>, label double, id.
  lr_reference.py spark   --jobs JSON [--warm]
      Spark MLlib LogisticRegression in local[2] for each job {"train", "test", "params"}
      (MLlib param names); prints one JSON object per job: objective, iterations,
      accuracies, non-zeros, fit seconds (first fit, and a second "warm" fit with --warm).
  lr_reference.py sklearn --train P --test P --reg-param R [--elastic-net-param A] [--tol T]
      scikit-learn at C = 1 / (n * regParam) (lbfgs; saga for elastic net); prints its
      MLlib-style objective (mean log-loss + regParam * (A |w|_1 + (1 - A) / 2 |w|^2),
      intercepts free), accuracies, fit seconds and the seconds of loading the training file.
"""

import argparse
import json
import os
import sys
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq


def blobs(args):
    rng = np.random.default_rng(args.seed)
    centres = rng.normal(0.0, args.center_std, size=(args.classes, args.dim))
    os.makedirs(args.out, exist_ok=True)
    dtype = np.float32 if args.float32 else np.float64
    item = pa.float32() if args.float32 else pa.float64()
    for name, n in (("train", args.rows), ("test", args.test_rows)):
        if args.class_probs:
            probs = np.asarray([float(v) for v in args.class_probs.split(",")])
            y = rng.choice(args.classes, size=n, p=probs / probs.sum())
        else:
            y = rng.integers(0, args.classes, size=n)
        x = (centres[y] + rng.normal(size=(n, args.dim))).astype(dtype)
        features = pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1), item), args.dim)
        table = pa.table({
            "features": features.cast(pa.list_(item)),
            "label": pa.array(y.astype(np.float64)),
            # A row key for folds and splits (`keyCol`).
            "id": pa.array(np.arange(n, dtype=np.int64) + (0 if name == "train" else args.rows)),
        })
        if name == "train" and args.files > 1:
            # A directory of files: one scan partition per file on every engine.
            d = os.path.join(args.out, "train.parquet")
            os.makedirs(d, exist_ok=True)
            step = (n + args.files - 1) // args.files
            for i in range(args.files):
                pq.write_table(table.slice(i * step, step), os.path.join(d, f"part-{i}.parquet"),
                               row_group_size=4096)
        else:
            pq.write_table(table, os.path.join(args.out, f"{name}.parquet"), row_group_size=4096)
    print(json.dumps({"out": args.out, "rows": args.rows, "dim": args.dim}))


def load_numpy(path):
    t = pq.read_table(path)
    feats = t.column("features").combine_chunks()
    x = np.asarray(feats.flatten().to_numpy(zero_copy_only=False), dtype=np.float64)
    x = x.reshape(len(t), -1)
    return x, t.column("label").to_numpy().astype(np.int64)


def spark(args):
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    from pyspark.sql import SparkSession
    from pyspark.ml.classification import LogisticRegression
    from pyspark.ml.functions import array_to_vector
    from pyspark.sql import functions as F

    started = time.time()
    session = (SparkSession.builder.master("local[2]")
               .config("spark.driver.memory", "4g")
               .config("spark.ui.enabled", "false")
               .config("spark.sql.shuffle.partitions", "2")
               .getOrCreate())
    session.sparkContext.setLogLevel("ERROR")
    session_seconds = time.time() - started

    def load(path):
        df = session.read.parquet(path)
        return df.select(array_to_vector(F.col("features")).alias("features"), "label").cache()

    loaded = {}

    def data(path):
        if path not in loaded:
            df = load(path)
            df.count()
            loaded[path] = df
        return loaded[path]

    def accuracy(model, df):
        return model.transform(df).select(
            F.avg((F.col("prediction") == F.col("label")).cast("double"))).first()[0]

    out = []
    for job in json.loads(args.jobs):
        cfg = job["params"]
        started = time.time()
        train, test = data(job["train"]), data(job["test"])
        load_seconds = time.time() - started
        lr = LogisticRegression(**cfg)
        t0 = time.time()
        model = lr.fit(train)
        first = time.time() - t0
        warm = None
        if args.warm:
            t0 = time.time()
            model = lr.fit(train)
            warm = time.time() - t0
        if model.numClasses > 2 or cfg.get("family") == "multinomial":
            coef = model.coefficientMatrix.toArray()
        else:
            coef = model.coefficients.toArray()
        summary = model.summary
        out.append({
            "config": cfg,
            "objective": summary.objectiveHistory[-1],
            "iterations": summary.totalIterations,
            "train_accuracy": accuracy(model, train),
            "test_accuracy": accuracy(model, test),
            "non_zeros": int(np.count_nonzero(coef)),
            "coefficients": int(coef.size),
            "fit_seconds": first,
            "warm_fit_seconds": warm,
            "load_seconds": load_seconds,
        })
    print(json.dumps({"session_seconds": session_seconds, "fits": out}))
    session.stop()


def sklearn(args):
    from sklearn.linear_model import LogisticRegression

    t_load = time.time()
    x, y = load_numpy(args.train)
    load_seconds = time.time() - t_load
    xt, yt = load_numpy(args.test)
    n = len(y)
    c = 1.0 / (n * args.reg_param)
    alpha = args.elastic_net_param
    if alpha > 0:
        model = LogisticRegression(C=c, solver="saga", l1_ratio=alpha, penalty="elasticnet",
                                   tol=args.tol, max_iter=args.max_iter)
    else:
        model = LogisticRegression(C=c, solver="lbfgs", tol=args.tol, max_iter=args.max_iter,
                                   class_weight=args.class_weight)
    t0 = time.time()
    model.fit(x, y)
    seconds = time.time() - t0
    proba = np.clip(model.predict_proba(x), 1e-300, 1.0)
    if args.class_weight == "balanced":
        counts = np.bincount(y)
        cw = n / (len(np.unique(y)) * counts)
        sw = cw[y]
    else:
        sw = np.ones(n)
    # the mean of the (class-)weighted log loss: the objective both sides minimize
    loss = -np.sum(sw * np.log(proba[np.arange(n), y])) / n
    w = model.coef_
    objective = loss + args.reg_param * (alpha * float(np.sum(np.abs(w)))
                                         + (1 - alpha) / 2 * float(np.sum(w ** 2)))
    print(json.dumps({
        "objective": objective,
        "iterations": int(np.max(model.n_iter_)),
        "train_accuracy": float(np.mean(model.predict(x) == y)),
        "test_accuracy": float(np.mean(model.predict(xt) == yt)),
        "fit_seconds": seconds,
        # Reading the training Parquet file into NumPy arrays (pyarrow), before the fit.
        "load_seconds": load_seconds,
        "non_zeros": int(np.count_nonzero(w)),
        "test_predictions": model.predict(xt).tolist(),
        "minority_recall": float(np.mean(model.predict(x)[y == np.argmin(np.bincount(y))]
                                         == np.argmin(np.bincount(y)))),
    }))


def main():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("data")
    d.add_argument("--out", required=True)
    d.add_argument("--rows", type=int, required=True)
    d.add_argument("--test-rows", type=int, default=1000)
    d.add_argument("--dim", type=int, required=True)
    d.add_argument("--classes", type=int, required=True)
    d.add_argument("--center-std", type=float, default=0.05)
    d.add_argument("--seed", type=int, default=42)
    d.add_argument("--float32", action="store_true")
    d.add_argument("--files", type=int, default=1, help="train split into this many files")
    d.add_argument("--class-probs", help="comma-separated class frequencies (imbalanced data)")
    s = sub.add_parser("spark")
    s.add_argument("--jobs", required=True)
    s.add_argument("--warm", action="store_true")
    k = sub.add_parser("sklearn")
    k.add_argument("--train", required=True)
    k.add_argument("--test", required=True)
    k.add_argument("--reg-param", type=float, required=True)
    k.add_argument("--elastic-net-param", type=float, default=0.0)
    k.add_argument("--tol", type=float, default=1e-10)
    k.add_argument("--max-iter", type=int, default=10000)
    k.add_argument("--class-weight", choices=["balanced"], help="scikit-learn's class_weight")
    args = p.parse_args()
    {"data": blobs, "spark": spark, "sklearn": sklearn}[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
