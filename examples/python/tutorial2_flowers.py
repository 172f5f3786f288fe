"""sparkdl's tutorial 2 ("Deep Learning Pipelines", transfer learning) in Python, on a Ballista
DLP cluster: tulips vs daisy, a pretrained CNN as featurizer and a logistic regression on top.
The same pipeline as examples/flowers.yaml, written the way the seed writes it.

    DLP_PASSWORD=... python examples/python/tutorial2_flowers.py --uri grpc://localhost:50050 \\
        --user alice --data flowers

--data is the flowers folder as the cluster sees it (relative: from its first data root)."""
import argparse

import dlp
from dlp import (DeepImageFeaturizer, DeepImagePredictor, LogisticRegression,
                 MulticlassClassificationEvaluator, Pipeline, lit)


def run(session, img_dir="flowers", show=True):
    tulips_df = session.read_images(f"{img_dir}/tulips", dropInvalid=True).withColumn("label", lit(1))
    daisy_df = session.read_images(f"{img_dir}/daisy", dropInvalid=True).withColumn("label", lit(0))
    tulips_train, tulips_test = tulips_df.randomSplit([0.8, 0.2], seed=42)
    daisy_train, daisy_test = daisy_df.randomSplit([0.8, 0.2], seed=42)
    train_df = daisy_train.unionAll(tulips_train)
    test_df = daisy_test.unionAll(tulips_test)

    featurizer = DeepImageFeaturizer(inputCol="image", outputCol="features",
                                     modelName="efficientnet_lite0", resize="stretch")
    lr = LogisticRegression(maxIter=100, regParam=0.001, elasticNetParam=0.3,
                            classWeight="balanced", labelCol="label")
    p = Pipeline(stages=[featurizer, lr])
    p_model = p.fit(train_df)

    predictions = p_model.transform(test_df)
    evaluator = MulticlassClassificationEvaluator(metricName="accuracy")
    accuracy = evaluator.evaluate(predictions.select("prediction", "label"))
    if show:
        print("Test set accuracy = " + str(accuracy))
        # The seed's last step: ImageNet top-K of a few test images.
        top = DeepImagePredictor(inputCol="image", outputCol="predicted_labels",
                                 modelName="efficientnet_lite0", topK=3)
        top.transform(test_df.limit(3)).select("predicted_labels").show(truncate=False)
    return p_model, predictions, accuracy, test_df


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--uri", default="grpc://127.0.0.1:50050")
    ap.add_argument("--user")
    ap.add_argument("--tls-root-certs")
    ap.add_argument("--data", default="flowers")
    a = ap.parse_args()
    session = dlp.connect(a.uri, user=a.user, tls_root_certs=a.tls_root_certs)
    run(session, a.data)


if __name__ == "__main__":
    main()
