# Ballista DLP: the README's two commands are `make run` and `make test`.
.PHONY: run test bench bench-lr bench-featurize bench-s3 lint setup

run:        ## the main job on the embedded cluster (transfer learning on digits: fit, evaluate, report, plot)
	scripts/run.sh

test:       ## set-up, build and every test (what CI runs)
	scripts/test.sh

bench:      ## benchmarks beside their peers, with ratios
	scripts/bench.sh

bench-featurize: ## only the featurization benchmark (PyTorch + Pillow)
	scripts/bench-featurize.sh

bench-s3:   ## only the object-storage benchmark (local S3 server vs disk, listing 10,000 objects)
	scripts/bench-s3.sh

bench-finetune: ## only the fine-tuning benchmark (PyTorch reference loop)
	scripts/bench-finetune.sh

bench-lr:   ## only the logistic regression benchmark (Spark MLlib, scikit-learn)
	scripts/bench-lr.sh

lint:       ## rustfmt + clippy -D warnings, and the scheduler checked without libtorch
	scripts/lint.sh

setup:      ## idempotent set-up (nasm, Python venv with test clients and peers)
	scripts/setup.sh
