# qkscope build.  `make` builds bin/qkscope (CPU backend, plus the CUDA backend when nvcc is on
# PATH); `make CUDA=0` builds CPU only; `make test` runs the Criterion suites, then executes the
# notebook against the demo's output (`make test-notebook`); `make test-slurm` runs a sweep on a
# real single-node Slurm cluster (root, slurm-wlm + munge); `make reference` regenerates the
# committed reference values from the real Python libraries.

# A portable baseline: x86-64-v3 (AVX2 + FMA), so a binary built on an AVX-512 login node runs on
# every AVX2 compute node; code with AVX-512 paths takes them at run time (host/base/cpu_features.h).
# `make NATIVE=1` builds for this CPU only.  Either way the results are the same bits: qkscope's
# GEMM has one summation order (host/base/gemm.h) and floating-point contraction is off.
CC      ?= gcc
NATIVE  ?= 0
ARCH    ?= $(if $(filter 1,$(NATIVE)),-march=native,-march=x86-64-v3 -mtune=generic)
CFLAGS  ?= -O3 $(ARCH)
CFLAGS  += -std=c11 -ffp-contract=off -Wall -Wextra -fopenmp -D_GNU_SOURCE -Ihost -Ikernels -MMD -MP
LDFLAGS += -fopenmp

PKGS    := hdf5 libcjson zlib libzstd inih libdeflate
CFLAGS  += $(shell pkg-config --cflags $(PKGS))
LIBS    := $(shell pkg-config --libs $(PKGS)) -lhdf5_hl -lm -lpthread
# OpenBLAS: only the tests (an independent product to compare with) and the benchmarks (the
# anchor qk_gemm is measured against); qkscope itself does not link it.
OPENBLAS_LIB ?= /usr/lib/x86_64-linux-gnu/openblas-openmp
OPENBLAS_INC ?= /usr/include/x86_64-linux-gnu/openblas-openmp
BLAS_CFLAGS  := -I$(OPENBLAS_INC)
BLAS_LIBS    := -L$(OPENBLAS_LIB) -Wl,-rpath,$(OPENBLAS_LIB) -lopenblas

# CUDA: on when nvcc is found, unless CUDA=0.
NVCC      ?= $(shell command -v nvcc 2>/dev/null)
CUDA      ?= $(if $(NVCC),1,0)
CUDA_HOME ?= $(if $(NVCC),$(patsubst %/bin/nvcc,%,$(NVCC)),/usr/local/cuda)
NVCCFLAGS_ARCH ?= -gencode arch=compute_80,code=sm_80 -gencode arch=compute_90,code=sm_90
NVCCFLAGS ?= -O3 -std=c++17 -Ihost -Ikernels -Xcompiler -Wall,-Wextra $(NVCCFLAGS_ARCH)
# host headers the kernels include (analysis.h) name HDF5 types
NVCCFLAGS += $(shell pkg-config --cflags-only-I hdf5)

BUILD ?= build
BIN   ?= bin

# host/ by responsibility (README's layout): the backend interface at the top, one folder per
# family (base cli model text analysis run io probe); kernels/ mirrors model, analysis and run.
HOST_SRC := $(filter-out host/cli/main.c,$(wildcard host/*.c host/*/*.c))
HOST_OBJ := $(HOST_SRC:host/%.c=$(BUILD)/host/%.o)
TEST_SRC := $(wildcard tests/test_*.c)
TEST_OBJ := $(TEST_SRC:tests/%.c=$(BUILD)/tests/%.o)
# NCCL (multi-GPU runs, kernels/run/comm_nccl.cu): with CUDA, when nccl.h is found; NCCL=0 leaves it out.
NCCL      ?= $(if $(wildcard $(CUDA_HOME)/include/nccl.h /usr/include/nccl.h),1,0)
ifeq ($(CUDA),1)
CU_SRC   := $(wildcard kernels/*.cu kernels/*/*.cu)
ifneq ($(NCCL),1)
CU_SRC   := $(filter-out kernels/run/comm_nccl.cu,$(CU_SRC))
endif
CU_OBJ   := $(CU_SRC:kernels/%.cu=$(BUILD)/kernels/%.o)
CFLAGS   += -DQK_HAVE_CUDA=1 $(if $(filter 1,$(NCCL)),-DQK_HAVE_NCCL=1)
ifeq ($(EMU),1)
# The emulated CUDA device (make test-emu; tests/cudaemu/emu.mk): its runtime and libraries go
# into libqkscope.a in place of libcudart, cuBLAS(Lt) and NCCL.
CU_OBJ   += $(addprefix $(BUILD)/cudaemu/,runtime.o fiber.o fiber_switch_x86_64.o cublas.o nccl.o)
LIBS     += -lstdc++ $(BLAS_LIBS)
CFLAGS   += -DQK_CUDA_EMU=1  # the suites' GPT-2-sized problems take fewer rows there (test_common.h)
else
LIBS     += -L$(CUDA_HOME)/lib64 -Wl,-rpath,$(CUDA_HOME)/lib64 $(if $(filter 1,$(NCCL)),-lnccl) -lcublasLt -lcublas -lcudart -lstdc++
endif
endif

.PHONY: check-ptxas all demo test test-notebook test-python test-report docs-report test-gpu test-scripts test-slurm reference trained-reference trained-reference-sae ground-truth bench-forward bench-gemm bench-topk bench-tokenize bench-run bench-pipeline bench-gpu bench-topk-gpu fuzz fuzz-build fuzz-smoke test-asan clean
all: $(BIN)/qkscope

# ptxas's resource figures of every kernel (registers, shared memory) as built, each object with
# its own flags (the .ptxas logs kept beside the objects): fails on a stack frame, a spill or an
# nvcc warning (scripts/check_ptxas.sh; scripts/gpu.sh bundle keeps the table).
check-ptxas: $(CU_OBJ)
	@scripts/check_ptxas.sh $(CU_OBJ)

$(BIN)/qkscope: $(BUILD)/host/cli/main.o $(BUILD)/libqkscope.a | $(BIN)
	$(CC) $(LDFLAGS) -o $@ $^ $(LIBS)

$(BUILD)/libqkscope.a: $(HOST_OBJ) $(CU_OBJ)
	@rm -f $@
	ar rcs $@ $(filter %.o,$^)

# Objects depend on the flags they were built with: switching CUDA=0/1 or CFLAGS rebuilds.
FLAGS_STAMP := $(BUILD)/flags.$(shell echo '$(CC) $(CFLAGS) $(CUDA) $(NCCL) $(NVCCFLAGS) $(EMU) $(EMU_OPT) $(EMU_SAN)' | md5sum | cut -c1-12)
$(FLAGS_STAMP): | $(BUILD)/host
	rm -f $(BUILD)/flags.*
	touch $@

$(BUILD)/host/%.o: host/%.c $(FLAGS_STAMP) | $(BUILD)/host
	@mkdir -p $(@D)
	$(CC) $(CFLAGS) -c -o $@ $<

$(BUILD)/tests/%.o: tests/%.c $(FLAGS_STAMP) | $(BUILD)/tests
	$(CC) $(CFLAGS) $(BLAS_CFLAGS) $(shell pkg-config --cflags criterion) -c -o $@ $<

# `qkscope --version`: commit and flags in $(BUILD)/version_info.h, rewritten only when they change
# (so only version.o rebuilds; FORCE makes the check run every time).
VERSION_INFO := $(BUILD)/version_info.h
$(VERSION_INFO): FORCE | $(BUILD)/host
	@{ echo '#define QK_GIT_COMMIT "$(shell git rev-parse --short=12 HEAD 2>/dev/null || echo unknown)$(shell git diff --quiet HEAD -- 2>/dev/null || echo -dirty)"'; \
	   echo '#define QK_BUILD_CC "$(CC)"'; \
	   echo '#define QK_BUILD_CFLAGS "$(subst ",,$(CFLAGS))"'; \
	   echo '#define QK_BUILD_CUDA_ARCH "$(subst ",,$(NVCCFLAGS_ARCH))"'; } > $@.new
	@cmp -s $@.new $@ && rm $@.new || mv $@.new $@
$(BUILD)/host/cli/version.o: host/cli/version.c $(VERSION_INFO) $(FLAGS_STAMP) | $(BUILD)/host
	@mkdir -p $(@D)
	$(CC) $(CFLAGS) -I$(BUILD) -c -o $@ $<
.PHONY: FORCE
FORCE:

# Every kernel object is built with ptxas's resource figures kept beside it (.ptxas); a stack
# frame, a spill or an nvcc warning in any kernel fails the build (scripts/check_ptxas.sh --log).
# (EMU=1: the emulated device's rule instead, tests/cudaemu/emu.mk.)
ifneq ($(EMU),1)
$(BUILD)/kernels/%.o: kernels/%.cu $(wildcard kernels/*.h kernels/*.cuh kernels/*/*.h kernels/*/*.cuh) $(FLAGS_STAMP) | $(BUILD)/kernels
	@mkdir -p $(@D)
	$(NVCC) $(NVCCFLAGS) $(NVCC_EXTRA) -Xptxas -v -c -o $@ $< > $(@:.o=.ptxas) 2>&1 || { cat $(@:.o=.ptxas); rm -f $@; exit 1; }
	scripts/check_ptxas.sh --log $(@:.o=.ptxas) $< > /dev/null || { scripts/check_ptxas.sh --log $(@:.o=.ptxas) $<; rm -f $@; exit 1; }
	$(if $(SASS_CHECK),scripts/check_sass.sh $@ || { rm -f $@; exit 1; })
# The fused top-k's tensor-core kernels must show HMMA / HGMMA in their SASS (scripts/check_sass.sh;
# says SKIP where cuobjdump is missing, QK_REQUIRE_SASS=1 makes that a failure).
$(BUILD)/kernels/analysis/topk_fused_sm80.o: SASS_CHECK := 1
# wgmma exists only on sm_90a: the fused top-k's wgmma flavour is built for it alone.
$(BUILD)/kernels/analysis/topk_fused_sm90.o: override NVCCFLAGS_ARCH := -gencode arch=compute_90a,code=sm_90a
$(BUILD)/kernels/analysis/topk_fused_sm90.o: SASS_CHECK := 1
# The device analysis: -fmad=false so every expression rounds as written, as the host's
# -ffp-contract=off (kernels/analysis/analysis_math.h is shared with the CPU suite); OpenMP for the host
# merges of a layer's heads' sketches, in parallel.
$(BUILD)/kernels/analysis/analysis_cuda.o: NVCC_EXTRA := -fmad=false -Xcompiler -fopenmp
# The forward pass's kernels likewise: forward_math.h's host emulations (LayerNorm's double
# statistics, the softmax) are theirs bit for bit only without contraction (make check-fmad).
$(BUILD)/kernels/model/%.o: NVCC_EXTRA := $(MODEL_NVCC_EXTRA)
endif
MODEL_NVCC_EXTRA := -fmad=false

# nvcc's own contractions absent from the model kernels' PTX, with their build flags.
.PHONY: check-fmad
check-fmad:
	@scripts/check_fmad.sh "$(NVCC)" kernels/model/forward_layernorm.cu f64 -- $(filter-out -gencode arch=%,$(NVCCFLAGS)) $(MODEL_NVCC_EXTRA)

$(BIN)/test_qkscope: $(TEST_OBJ) $(BUILD)/libqkscope.a | $(BIN)
	$(CC) $(LDFLAGS) -o $@ $^ $(shell pkg-config --libs criterion) $(LIBS) $(BLAS_LIBS)

# tests/tools/: h5compare (compares two outputs dataset by dataset: scripts/gpu.sh's CPU-vs-CUDA
# check) and cuda_smoke (exits 0 only when CUDA is usable: gpu.sh's preflight).
$(BIN)/h5compare: tests/tools/h5compare.c | $(BIN)
	$(CC) -O2 -std=c11 -Wall -Wextra -D_GNU_SOURCE $(shell pkg-config --cflags hdf5) -o $@ $< $(shell pkg-config --libs hdf5) -lm
$(BIN)/cuda_smoke: tests/tools/cuda_smoke.cu | $(BIN)
	$(NVCC) $(NVCCFLAGS) -o $@ $< -L$(CUDA_HOME)/lib64 -lcublasLt

$(BIN) $(BUILD)/host $(BUILD)/tests $(BUILD)/kernels:
	mkdir -p $@

# The README's main command: offline, on a SYNTHETIC model with planted circuits.  Writes the
# model, SAEs and corpus, runs the analysis and the weights-only maps, prints the per-head
# summary, and checks that every planted circuit is ranked first.
# GPT-2's tokenizer (encoder.json + vocab.bpe, or vocab.json + merges.txt) when one is here:
# scripts/download_gpt2.sh's models/gpt2, else the development checkout's shared data.  With it the
# demo copies it to $(DEMO)/vocab, its files store token text, and your own text runs offline.
GPT2_VOCAB ?= $(firstword $(foreach d,models/gpt2 ../shared/data/gpt2,$(if $(wildcard $(d)/encoder.json $(d)/vocab.json),$(d))))
DEMO ?= build/demo
demo: $(BIN)/qkscope
	@echo "== qkscope demo: the model below is SYNTHETIC (qkscope planted), not GPT-2; it has planted circuits"
	$(BIN)/qkscope planted --out $(DEMO) $(if $(GPT2_VOCAB),--vocab $(GPT2_VOCAB))
	$(BIN)/qkscope run configs/demo.ini --set model.dir=$(DEMO)/model --set sae.layer.0=$(DEMO)/sae/layer_0 \
	    --set sae.layer.1=$(DEMO)/sae/layer_1 --set corpus.paths=$(DEMO)/corpus.npy \
	    $(if $(GPT2_VOCAB),--set corpus.vocab=$(DEMO)/vocab) -o $(DEMO)/run.h5
	$(BIN)/qkscope static -q configs/demo.ini --set model.dir=$(DEMO)/model --set sae.layer.0=$(DEMO)/sae/layer_0 \
	    --set sae.layer.1=$(DEMO)/sae/layer_1 -o $(DEMO)/static.h5
	@echo "== were the planted circuits found?"
	$(BIN)/qkscope planted --out $(DEMO) --check-run $(DEMO)/run.h5 --check-static $(DEMO)/static.h5
	@echo "== outputs: $(DEMO)/run.h5 $(DEMO)/static.h5 (layout: docs/FORMAT.md; notebooks/explore.ipynb opens them)"
	@$(if $(GPT2_VOCAB),echo "== your own text (.txt, .jsonl; offline): bin/qkscope run configs/demo.ini --set corpus.vocab=$(DEMO)/vocab --set corpus.paths=YOUR.txt -o mine.h5",\
	    echo "== for your own text: GPT-2's tokenizer (scripts/download_gpt2.sh, or any folder with encoder.json + vocab.bpe), then make demo GPT2_VOCAB=DIR")

# The README's test command.  Suites that need a GPU skip themselves, saying why.  Then the suites
# whose results must be bit-identical run a second time with qkscope's AVX-512 paths switched off
# (QK_ISA=avx2; on an AVX2-only CPU the same path again, and the suites say so), so CI checks both
# kernel families on whatever machine it lands; then every fuzz harness briefly with every stored
# crash input (fuzz-smoke), and the notebook (sub-makes, so -j does not interleave them).
DETERMINISM_SUITES := @(gemm|topk|forward|cache_sae|analysis_batch|run|ranks|shards)/*
test: $(BIN)/test_qkscope $(BIN)/qkscope
	$(if $(filter 1,$(CUDA)),@$(MAKE) --no-print-directory check-fmad)
	QK_BACKEND=cpu $(BIN)/test_qkscope --jobs 1
	@echo "== the determinism suites again, AVX-512 paths off (QK_ISA=avx2)"
	QK_BACKEND=cpu QK_ISA=avx2 $(BIN)/test_qkscope --jobs 1 --filter '$(DETERMINISM_SUITES)'
	$(MAKE) --no-print-directory fuzz-smoke
	$(MAKE) --no-print-directory test-python
	$(MAKE) --no-print-directory test-report
	$(MAKE) --no-print-directory test-notebook

# The whole Criterion suite under AddressSanitizer + UndefinedBehaviorSanitizer (no recovery) and
# LeakSanitizer, CPU only, in its own build (ASAN_BUILD).  The suites start ./bin/qkscope: they run
# from ASAN_BUILD/root, whose tests/, configs/, bin/ (the sanitized qkscope) and ../shared point at the real
# ones, so every command they start is sanitized too.  A sanitizer report exits 86 (never a status
# a test expects) and fails the test.  The flags go through the environment: the Makefile's own
# CFLAGS (-std, -fopenmp, includes) are added to them.
ASAN_BUILD ?= build/asan
ASAN_FLAGS := -O1 -g -fno-omit-frame-pointer -fsanitize=address,undefined -fno-sanitize-recover=undefined
ASAN_ENV   := ASAN_OPTIONS=exitcode=86:detect_leaks=1:abort_on_error=0 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1:exitcode=86 \
              LSAN_OPTIONS=suppressions=$(abspath tests/lsan.supp):print_suppressions=0
test-asan:
	CFLAGS="$(ASAN_FLAGS)" LDFLAGS="-fsanitize=address,undefined" $(MAKE) --no-print-directory CUDA=0 \
	    BUILD=$(ASAN_BUILD) BIN=$(ASAN_BUILD)/bin $(ASAN_BUILD)/bin/qkscope $(ASAN_BUILD)/bin/test_qkscope
	mkdir -p $(ASAN_BUILD)/root
	ln -sfn $(abspath tests) $(ASAN_BUILD)/root/tests
	ln -sfn $(abspath configs) $(ASAN_BUILD)/root/configs
	ln -sfn $(abspath $(ASAN_BUILD)/bin) $(ASAN_BUILD)/root/bin
	ln -sfn $(abspath ../shared) $(ASAN_BUILD)/shared
	ln -sfn $(abspath slurm) $(ASAN_BUILD)/slurm
	cd $(ASAN_BUILD)/root && $(ASAN_ENV) QK_BACKEND=cpu ./bin/test_qkscope --jobs 1 $(ASAN_TEST_ARGS)

# notebooks/explore.ipynb executed headless (nbconvert) against a small synthetic demo run; its
# asserts fail the target on a broken file.  The virtualenv comes from PyPI, pinned in
# notebooks/requirements.txt; JUPYTER_PATH makes its own python3 kernel the one that runs.
NB_VENV ?= .venv-nb
NB_DEMO := $(BUILD)/demo-test
NB_SETS := --set model.dir=$(NB_DEMO)/model --set sae.layer.0=$(NB_DEMO)/sae/layer_0 \
           --set sae.layer.1=$(NB_DEMO)/sae/layer_1 --set corpus.paths=$(NB_DEMO)/corpus.npy \
           $(if $(GPT2_VOCAB),--set corpus.vocab=$(NB_DEMO)/vocab)
$(NB_VENV)/.ok: notebooks/requirements.txt
	python3 -m venv $(NB_VENV)
	$(NB_VENV)/bin/pip install -q -r notebooks/requirements.txt
	touch $@
# The notebook reader (python/, `pip install ./python`), reinstalled when it changes.
$(NB_VENV)/.qkscope: $(NB_VENV)/.ok python/pyproject.toml $(wildcard python/qkscope/*.py)
	$(NB_VENV)/bin/pip install -q --no-deps ./python
	touch $@
# The small demo both Python checks read (a stamp: made once per change of the binary).
$(NB_DEMO)/.ok: $(BIN)/qkscope configs/demo.ini
	$(BIN)/qkscope planted --out $(NB_DEMO) --tokens 1024 -q $(if $(GPT2_VOCAB),--vocab $(GPT2_VOCAB))
	rm -f $(NB_DEMO)/run.h5 $(NB_DEMO)/static.h5
	$(BIN)/qkscope run configs/demo.ini $(NB_SETS) -q -o $(NB_DEMO)/run.h5
	$(BIN)/qkscope static configs/demo.ini $(NB_SETS) -q -o $(NB_DEMO)/static.h5
	touch $@
test-notebook: $(BIN)/qkscope $(NB_VENV)/.ok $(NB_VENV)/.qkscope $(NB_DEMO)/.ok
	QK_RUN=$(abspath $(NB_DEMO)/run.h5) QK_STATIC=$(abspath $(NB_DEMO)/static.h5) \
	JUPYTER_PATH=$(abspath $(NB_VENV))/share/jupyter $(NB_VENV)/bin/jupyter nbconvert --to notebook --execute \
	    --ExecutePreprocessor.timeout=60 --output $(abspath $(BUILD)/explore.executed.ipynb) notebooks/explore.ipynb

# python/qkscope against the demo: one file, the same corpus sharded (4 shards), over 3 ranks in
# batches of 3 windows, and both merged.
PY_SHARDS := $(BUILD)/demo-test-shards
test-python: $(BIN)/qkscope $(NB_VENV)/.qkscope $(NB_DEMO)/.ok
	rm -rf $(PY_SHARDS) && $(BIN)/qkscope run configs/demo.ini $(NB_SETS) --set output.shard_tokens=256 -q -o $(PY_SHARDS)
	$(BIN)/qkscope merge $(PY_SHARDS) -o $(PY_SHARDS)/all.h5 > /dev/null
	rm -rf $(PY_SHARDS)-ranks && $(BIN)/qkscope run configs/demo.ini $(NB_SETS) --ranks 3 --set corpus.batch=3 --set output.shard_tokens=256 -q -o $(PY_SHARDS)-ranks
	$(BIN)/qkscope merge $(PY_SHARDS)-ranks -o $(PY_SHARDS)-ranks/all.h5 > /dev/null
	QK_RUN=$(NB_DEMO)/run.h5 QK_STATIC=$(NB_DEMO)/static.h5 QK_PLANTED=$(NB_DEMO)/planted.json \
	QK_SHARDS=$(PY_SHARDS) QK_MERGED=$(PY_SHARDS)/all.h5 QK_RANKS=$(PY_SHARDS)-ranks QK_RANKS_MERGED=$(PY_SHARDS)-ranks/all.h5 QK_VOCAB=$(GPT2_VOCAB) QKSCOPE=$(BIN)/qkscope \
	    $(NB_VENV)/bin/python python/tests/test_reader.py

# `qkscope report` of the small demo, rendered in headless Chromium (tests/test_report.sh: a blank
# page, a console message or a missing section fails; SKIP without chromium).  The screenshot in
# docs/report.png is this page of `make demo`'s run: `make docs-report` remakes it.
test-report: $(BIN)/qkscope $(NB_DEMO)/.ok
	QKSCOPE=$(BIN)/qkscope bash tests/test_report.sh $(NB_DEMO)/run.h5 $(NB_DEMO)/static.h5 $(BUILD)/report-test \
	    $(shell sed -n 's/^record_heads *= *//p' configs/demo.ini | tr ',' ' ')
docs-report: demo
	QKSCOPE=$(BIN)/qkscope bash tests/test_report.sh $(DEMO)/run.h5 $(DEMO)/static.h5 $(BUILD)/report-demo \
	    $(shell sed -n 's/^record_heads *= *//p' configs/demo.ini | tr ',' ' ')
	cp $(BUILD)/report-demo/report.png docs/report.png

test-gpu: $(BIN)/test_qkscope $(BIN)/qkscope
	QK_BACKEND=cuda $(BIN)/test_qkscope --jobs 1

# scripts/download_gpt2.sh against a local http.server (offline; ~5 s, so not part of `test`).
test-scripts:
	bash tests/test_download.sh

# A real single-node Slurm cluster (munged, slurmctld, slurmd under a temporary SLURM_CONF): the
# demo sweep through `qkscope submit`, one task pre-empted and requeued, the merged file compared
# with one process.  Needs root and slurm-wlm + munge (scripts/install-deps.sh --slurm), else it
# says SKIP; ~30-60 s.  .ci/run runs it after `test`.
test-slurm: $(BIN)/qkscope
	QKSCOPE=$(abspath $(BIN)/qkscope) bash tests/slurm/test_slurm.sh

# Reference values from Hugging Face transformers, TransformerLens, SAELens and tiktoken.
VENV ?= .venv-ref
$(VENV)/.ok: tests/reference/requirements.txt
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q -r tests/reference/requirements.txt
	touch $@
reference: $(VENV)/.ok
	$(VENV)/bin/python tests/reference/make_all.py

# The trained ground-truth fixture (tests/reference/data/trained): a 2-layer GPT-2 and its SAEs
# trained on the CPU (~15 min; one thread, so a rerun on the same versions gives the same files),
# then results/ground_truth.md from qkscope's own output on it (`make ground-truth`, no Python
# packages: the report script uses the standard library).
trained-reference: $(VENV)/.ok
	OMP_NUM_THREADS=1 $(VENV)/bin/python tests/reference/make_trained_ref.py
	$(MAKE) --no-print-directory ground-truth
# The SAEs and labels only, on the committed model (~10 min; the same files as a full run)
trained-reference-sae: $(VENV)/.ok
	QK_TRAINED_STAGE=sae OMP_NUM_THREADS=1 $(VENV)/bin/python tests/reference/make_trained_ref.py
	$(MAKE) --no-print-directory ground-truth
GT_DIR := $(BUILD)/ground-truth
ground-truth: $(BIN)/qkscope $(BIN)/test_qkscope
	@mkdir -p $(GT_DIR)
	$(BIN)/qkscope run configs/trained.ini -o $(GT_DIR)/run.h5 --set run.backend=cpu
	$(BIN)/qkscope static configs/trained.ini -o $(GT_DIR)/static.h5 --set run.backend=cpu
	$(BIN)/qkscope probe score $(GT_DIR)/run.h5 --probe tests/reference/data/trained/probe \
	    --labels tests/reference/data/trained/labels --static $(GT_DIR)/static.h5 \
	    --expect "$$(python3 -c 'import json; print(",".join(json.load(open("tests/reference/data/trained/ground_truth.json"))["induction_heads"]))')" \
	    --json $(GT_DIR)/score.json
	python3 scripts/ground_truth_report.py $(GT_DIR)/score.json > results/ground_truth.md
	QK_BACKEND=cpu $(BIN)/test_qkscope --jobs 1 --filter 'probe_trained/*'


BENCH_THREADS ?= $(shell nproc)
$(BIN)/bench_%: bench/bench_%.c $(BUILD)/libqkscope.a $(FLAGS_STAMP) | $(BIN)
	$(CC) $(filter-out -MMD -MP,$(CFLAGS)) $(BLAS_CFLAGS) $(LDFLAGS) -o $@ $< $(BUILD)/libqkscope.a $(LIBS) $(BLAS_LIBS)

# The device top-k against one cuBLASLt GEMM writing every score (CUDA builds; on the GPU).
# BENCH_TOPK_GPU_ARGS e.g. "--r 64 --prec bf16 --reps 5".
$(BIN)/bench_topk_gpu: bench/bench_topk_gpu.c $(BUILD)/libqkscope.a $(FLAGS_STAMP) | $(BIN)
	$(CC) $(filter-out -MMD -MP,$(CFLAGS)) -I$(CUDA_HOME)/include $(LDFLAGS) -o $@ $< $(BUILD)/libqkscope.a $(LIBS)
# Adds the fused kernel's column and the cuBLAS + torch.topk anchor (bench/bench_topk_torch.py, where
# PyTorch is); the table goes to results/bench_topk_gpu.md only when a GPU measured it.  A CPU-only
# build (CUDA=0, or no nvcc) has no device top-k to link: it says so and measures nothing.
ifeq ($(CUDA),1)
bench-topk-gpu: $(BIN)/bench_topk_gpu | $(BUILD)/host
	{ $(BIN)/bench_topk_gpu $(BENCH_TOPK_GPU_ARGS) && python3 bench/bench_topk_torch.py; } | tee $(BUILD)/bench_topk_gpu.md
	@if grep -q '^| [0-9]' $(BUILD)/bench_topk_gpu.md; then cp $(BUILD)/bench_topk_gpu.md results/bench_topk_gpu.md; \
	   echo "bench-topk-gpu: results/bench_topk_gpu.md"; else echo "bench-topk-gpu: nothing measured (no GPU)"; fi
else
bench-topk-gpu:
	@echo "bench-topk-gpu: CPU-only build (CUDA=0): no device top-k, nothing measured"
endif

bench-forward: $(BIN)/bench_forward $(VENV)/.ok
	OMP_NUM_THREADS=$(BENCH_THREADS) $(VENV)/bin/python bench/bench_forward.py --threads $(BENCH_THREADS)
# qk_gemm (one summation order, host/base/gemm.h) vs OpenBLAS sgemm on qkscope's shapes, one thread.
bench-gemm: $(BIN)/bench_gemm
	$(BIN)/bench_gemm
bench-topk: $(BIN)/bench_topk $(VENV)/.ok
	OMP_NUM_THREADS=$(BENCH_THREADS) $(VENV)/bin/python bench/bench_topk.py --threads $(BENCH_THREADS)
# qkscope run (CPU) vs the seed's route in PyTorch; BENCH_RUN_ARGS="--layers all" for all 144 heads.
bench-run: $(BIN)/qkscope $(VENV)/.ok
	OMP_NUM_THREADS=$(BENCH_THREADS) $(VENV)/bin/python bench/bench_run.py --threads $(BENCH_THREADS) $(BENCH_RUN_ARGS)
# qkscope run on 1 GPU and on all GPUs (NCCL), scaling efficiency; says so and measures nothing
# without a GPU (BENCH_CPU_RANKS=N exercises it with CPU ranks).  No Python: inputs from `qkscope random`.
bench-gpu: $(BIN)/qkscope $(BIN)/bench_cuda_forward
	QK=$(BIN)/qkscope bench/bench_gpu.sh
bench-pipeline: $(BIN)/qkscope
	python3 bench/bench_pipeline.py --threads $(BENCH_THREADS)
bench-tokenize: $(BIN)/qkscope $(BIN)/bench_tokenize $(VENV)/.ok
	$(VENV)/bin/python bench/bench_tokenize.py


# libFuzzer harnesses (tests/fuzz/fuzz_*.c) over every parser of untrusted input, built with clang,
# ASan and UBSan (Debian's clang and libclang-rt).  `make fuzz` runs a campaign: FUZZ_SECONDS per
# harness, FUZZ_JOBS at a time under nice, figures appended to results/fuzz.md.  `make fuzz-smoke`
# (part of `make test`) runs each for FUZZ_SMOKE_SECONDS, then every stored input of
# tests/fuzz/regressions/.  The harnesses link the parsers only (no CUDA, no HDF5 writing).
FUZZ_CC      ?= clang
FUZZ_SECONDS ?= 600
FUZZ_JOBS    ?= 2
FUZZ_SMOKE_SECONDS ?= 3
FUZZ_DIR     := $(BUILD)/fuzz
FUZZ_NAMES   := safetensors token_file gpt2 sae run_config corpus bpe manifest
FUZZ_HOST    := io/safetensors io/npy text/token_file model/gpt2 model/sae analysis/topk base/gemm base/cpu_features \
                run/run_config io/sha256 text/corpus text/bpe text/unicode_classes text/json_field run/manifest base/util
FUZZ_CFLAGS  := -std=c11 -D_GNU_SOURCE -g -O1 -fno-omit-frame-pointer -fsanitize=address,undefined \
                -fno-sanitize-recover=undefined -Wno-unknown-pragmas -Ihost -Ikernels $(shell pkg-config --cflags $(PKGS)) -I$(OPENBLAS_INC)
FUZZ_LIBS    := $(shell pkg-config --libs $(PKGS)) -L$(OPENBLAS_LIB) -Wl,-rpath,$(OPENBLAS_LIB) -lopenblas -lgomp -lm -lpthread
FUZZ_BINS    := $(FUZZ_NAMES:%=$(FUZZ_DIR)/fuzz_%)

$(FUZZ_DIR)/obj/%.o: host/%.c | $(FUZZ_DIR)/obj
	@mkdir -p $(@D)
	$(FUZZ_CC) $(FUZZ_CFLAGS) -fsanitize=fuzzer-no-link -MMD -MP -c -o $@ $<
$(FUZZ_DIR)/libfuzzhost.a: $(FUZZ_HOST:%=$(FUZZ_DIR)/obj/%.o)
	@rm -f $@
	ar rcs $@ $^
$(FUZZ_DIR)/fuzz_%: tests/fuzz/fuzz_%.c tests/fuzz/fuzz_common.h $(FUZZ_DIR)/libfuzzhost.a
	$(FUZZ_CC) $(FUZZ_CFLAGS) -fsanitize=fuzzer -o $@ $< $(FUZZ_DIR)/libfuzzhost.a $(FUZZ_LIBS)
$(FUZZ_DIR)/obj:
	mkdir -p $@
$(FUZZ_DIR)/seeds/.ok: tests/fuzz/seeds.sh $(BIN)/qkscope
	tests/fuzz/seeds.sh $(BIN)/qkscope $(FUZZ_DIR)/seeds
	touch $@

fuzz-build: $(FUZZ_BINS) $(FUZZ_DIR)/seeds/.ok
fuzz: fuzz-build
	tests/fuzz/campaign.sh $(FUZZ_DIR) $(FUZZ_SECONDS) $(FUZZ_JOBS) $(FUZZ_NAMES)
fuzz-smoke: fuzz-build
	tests/fuzz/smoke.sh $(FUZZ_DIR) $(FUZZ_SMOKE_SECONDS) $(FUZZ_NAMES)

clean:
	rm -rf $(BUILD) $(BIN)

include tests/cudaemu/emu.mk

-include $(HOST_OBJ:.o=.d) $(TEST_OBJ:.o=.d) $(BUILD)/host/cli/main.d $(wildcard $(FUZZ_DIR)/obj/*/*.d)
