"""sparkdl's tutorial 1 in Python on a Ballista DLP cluster: Bengali handwritten digits
(NumtaDB, 50 per class), an 8:2 split, three EfficientNet-Lite models' logits assembled into
one vector and a logistic regression (the pipeline of examples/numta.yaml), then a
classification report and a confusion matrix from the returned predictions.

    DLP_PASSWORD=... python examples/python/tutorial1_digits.py --uri grpc://localhost:50050 \\
        --user alice --data numta-50"""
import argparse

import dlp
from dlp import (DeepImageFeaturizer, LogisticRegression, MulticlassClassificationEvaluator,
                 Pipeline, VectorAssembler)


def run(session, img_dir="numta-50", show=True):
    df = session.read_images(img_dir, withLabel=True, dropInvalid=True)
    train_df, test_df = df.randomSplit([0.8, 0.2], seed=42)
    stages = [DeepImageFeaturizer(modelName=m, featureLayer="logits", resize="stretch", outputCol=c)
              for m, c in (("efficientnet_lite0", "lite0"), ("efficientnet_lite1", "lite1"),
                           ("efficientnet_lite2", "lite2"))]
    stages.append(VectorAssembler(inputCols=["lite0", "lite1", "lite2"]))
    stages.append(LogisticRegression(maxIter=100, regParam=0.03, elasticNetParam=0.5))
    model = Pipeline(stages=stages).fit(train_df)

    predictions = model.transform(test_df).select("label_name", "label", "prediction")
    f1 = MulticlassClassificationEvaluator(metricName="f1").evaluate(predictions)
    if show:
        rows = predictions.toPandas()
        try:
            from sklearn.metrics import classification_report, confusion_matrix

            print(classification_report(rows["label"], rows["prediction"].astype(int), digits=3))
            print(confusion_matrix(rows["label"], rows["prediction"].astype(int)))
        except ImportError:
            print(rows.groupby(["label", "prediction"]).size().unstack(fill_value=0))
        print(f"weighted F1 = {f1:.4f}")
    return model, predictions, f1


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--uri", default="grpc://127.0.0.1:50050")
    ap.add_argument("--user")
    ap.add_argument("--tls-root-certs")
    ap.add_argument("--data", default="numta-50")
    a = ap.parse_args()
    session = dlp.connect(a.uri, user=a.user, tls_root_certs=a.tls_root_certs)
    run(session, a.data)


if __name__ == "__main__":
    main()
