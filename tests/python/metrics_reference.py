"""scikit-learn's metrics of predictions written by the evaluator test.

Usage: python metrics_reference.py PREDICTIONS.json
Input: {"labels": [...], "predictions": [...], "probabilities": [[...], ...]}
Prints one JSON line: accuracy, weighted f1 / precision / recall, confusion matrix (labels
sorted), ROC AUC one-vs-rest (macro), per-class precision / recall / f1, log loss.
"""

import json
import sys

import numpy as np
from scipy.stats import binomtest
from sklearn.metrics import (
    accuracy_score,
    confusion_matrix,
    f1_score,
    log_loss,
    precision_recall_fscore_support,
    precision_score,
    recall_score,
    roc_auc_score,
)


def main():
    with open(sys.argv[1]) as f:
        d = json.load(f)
    y = np.asarray(d["labels"])
    p = np.asarray(d["predictions"])
    prob = np.asarray(d["probabilities"])
    labels = sorted(set(y.tolist()) | set(p.tolist()))
    prec, rec, f1, support = precision_recall_fscore_support(
        y, p, labels=labels, zero_division=0
    )
    out = {
        "accuracy": accuracy_score(y, p),
        "f1": f1_score(y, p, average="weighted", zero_division=0),
        "weightedPrecision": precision_score(y, p, average="weighted", zero_division=0),
        "weightedRecall": recall_score(y, p, average="weighted", zero_division=0),
        "macroF1": f1_score(y, p, average="macro", zero_division=0),
        "confusion": confusion_matrix(y, p, labels=labels).tolist(),
        "rocAuc": roc_auc_score(y, prob, multi_class="ovr")
        if prob.shape[1] > 2
        else roc_auc_score(y, prob[:, 1]),
        "logLoss": log_loss(y, prob, labels=list(range(prob.shape[1]))),
        "precision": prec.tolist(),
        "recall": rec.tolist(),
        "f1ByLabel": f1.tolist(),
        "labels": labels,
        # The 95% Wilson score interval of the accuracy (scipy).
        "accuracyCi95": list(
            binomtest(int(round(accuracy_score(y, p) * len(y))), len(y))
            .proportion_ci(confidence_level=0.95, method="wilson")
        ),
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
