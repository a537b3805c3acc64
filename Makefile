# qkscope build.  `make` builds bin/qkscope (CPU backend, plus the CUDA backend when nvcc is on
# PATH); `make CUDA=0` builds CPU only; `make test` runs the Criterion suites, then executes the
# notebook against the demo's output (`make test-notebook`); `make test-slurm` runs a sweep on a
# real single-node Slurm cluster (root, slurm-wlm + munge); `make reference` regenerates the
# committed reference values from the real Python libraries.

CC      ?= gcc
ARCH    ?= -march=native
CFLAGS  ?= -O3 $(ARCH)
CFLAGS  += -std=c11 -Wall -Wextra -fopenmp -D_GNU_SOURCE -Ihost -MMD -MP
LDFLAGS += -fopenmp

# OpenBLAS: the OpenMP build, so a GEMM called inside an OpenMP region runs on the calling thread
# (the bilinear top-k relies on that) and a GEMM outside uses all OMP_NUM_THREADS.
OPENBLAS_LIB ?= /usr/lib/x86_64-linux-gnu/openblas-openmp
OPENBLAS_INC ?= /usr/include/x86_64-linux-gnu/openblas-openmp
PKGS    := hdf5 libcjson zlib libzstd inih libdeflate
CFLAGS  += $(shell pkg-config --cflags $(PKGS)) -I$(OPENBLAS_INC)
LIBS    := $(shell pkg-config --libs $(PKGS)) -lhdf5_hl -L$(OPENBLAS_LIB) -Wl,-rpath,$(OPENBLAS_LIB) -lopenblas -lm -lpthread

# CUDA: on when nvcc is found, unless CUDA=0.
NVCC      ?= $(shell command -v nvcc 2>/dev/null)
CUDA      ?= $(if $(NVCC),1,0)
CUDA_HOME ?= $(if $(NVCC),$(patsubst %/bin/nvcc,%,$(NVCC)),/usr/local/cuda)
NVCCFLAGS_ARCH ?= -gencode arch=compute_80,code=sm_80 -gencode arch=compute_90,code=sm_90
NVCCFLAGS ?= -O3 -std=c++17 -Ihost -Xcompiler -Wall,-Wextra $(NVCCFLAGS_ARCH)

BUILD ?= build
BIN   ?= bin

HOST_SRC := $(filter-out host/main.c,$(wildcard host/*.c))
HOST_OBJ := $(HOST_SRC:host/%.c=$(BUILD)/host/%.o)
TEST_SRC := $(wildcard tests/test_*.c)
TEST_OBJ := $(TEST_SRC:tests/%.c=$(BUILD)/tests/%.o)
# NCCL (multi-GPU runs, kernels/comm_nccl.cu): with CUDA, when nccl.h is found; NCCL=0 leaves it out.
NCCL      ?= $(if $(wildcard $(CUDA_HOME)/include/nccl.h /usr/include/nccl.h),1,0)
ifeq ($(CUDA),1)
CU_SRC   := $(wildcard kernels/*.cu)
ifneq ($(NCCL),1)
CU_SRC   := $(filter-out kernels/comm_nccl.cu,$(CU_SRC))
endif
CU_OBJ   := $(CU_SRC:kernels/%.cu=$(BUILD)/kernels/%.o)
CFLAGS   += -DQK_HAVE_CUDA=1 $(if $(filter 1,$(NCCL)),-DQK_HAVE_NCCL=1)
LIBS     += -L$(CUDA_HOME)/lib64 -Wl,-rpath,$(CUDA_HOME)/lib64 $(if $(filter 1,$(NCCL)),-lnccl) -lcublasLt -lcublas -lcudart -lstdc++
endif

.PHONY: all demo test test-notebook test-gpu test-scripts test-slurm reference trained-reference ground-truth bench-forward bench-topk bench-tokenize bench-run bench-pipeline bench-gpu fuzz clean
all: $(BIN)/qkscope

$(BIN)/qkscope: $(BUILD)/host/main.o $(BUILD)/libqkscope.a | $(BIN)
	$(CC) $(LDFLAGS) -o $@ $^ $(LIBS)

$(BUILD)/libqkscope.a: $(HOST_OBJ) $(CU_OBJ)
	@rm -f $@
	ar rcs $@ $(filter %.o,$^)

# Objects depend on the flags they were built with: switching CUDA=0/1 or CFLAGS rebuilds.
FLAGS_STAMP := $(BUILD)/flags.$(shell echo '$(CC) $(CFLAGS) $(CUDA) $(NCCL) $(NVCCFLAGS)' | md5sum | cut -c1-12)
$(FLAGS_STAMP): | $(BUILD)/host
	rm -f $(BUILD)/flags.*
	touch $@

$(BUILD)/host/%.o: host/%.c $(FLAGS_STAMP) | $(BUILD)/host
	$(CC) $(CFLAGS) -c -o $@ $<

$(BUILD)/tests/%.o: tests/%.c $(FLAGS_STAMP) | $(BUILD)/tests
	$(CC) $(CFLAGS) $(shell pkg-config --cflags criterion) -c -o $@ $<

$(BUILD)/kernels/%.o: kernels/%.cu $(wildcard kernels/*.h) $(FLAGS_STAMP) | $(BUILD)/kernels
	$(NVCC) $(NVCCFLAGS) -c -o $@ $<

$(BIN)/test_qkscope: $(TEST_OBJ) $(BUILD)/libqkscope.a | $(BIN)
	$(CC) $(LDFLAGS) -o $@ $^ $(shell pkg-config --libs criterion) $(LIBS)

$(BIN) $(BUILD)/host $(BUILD)/tests $(BUILD)/kernels:
	mkdir -p $@

# The README's main command: offline, on a SYNTHETIC model with planted circuits.  Writes the
# model, SAEs and corpus, runs the analysis and the weights-only maps, prints the per-head
# summary, and checks that every planted circuit is ranked first.
DEMO ?= build/demo
demo: $(BIN)/qkscope
	@echo "== qkscope demo: the model below is SYNTHETIC (qkscope planted), not GPT-2; it has planted circuits"
	$(BIN)/qkscope planted --out $(DEMO)
	$(BIN)/qkscope run configs/demo.ini --set model.dir=$(DEMO)/model --set sae.layer.0=$(DEMO)/sae/layer_0 \
	    --set sae.layer.1=$(DEMO)/sae/layer_1 --set corpus.paths=$(DEMO)/corpus.npy -o $(DEMO)/run.h5
	$(BIN)/qkscope static -q configs/demo.ini --set model.dir=$(DEMO)/model --set sae.layer.0=$(DEMO)/sae/layer_0 \
	    --set sae.layer.1=$(DEMO)/sae/layer_1 -o $(DEMO)/static.h5
	@echo "== were the planted circuits found?"
	$(BIN)/qkscope planted --out $(DEMO) --check-run $(DEMO)/run.h5 --check-static $(DEMO)/static.h5
	@echo "== outputs: $(DEMO)/run.h5 $(DEMO)/static.h5 (layout: docs/FORMAT.md; notebooks/explore.ipynb opens them)"

# The README's test command.  Suites that need a GPU skip themselves, saying why.  The notebook
# runs after the suites (a sub-make, so -j does not interleave them).
test: $(BIN)/test_qkscope $(BIN)/qkscope
	QK_BACKEND=cpu $(BIN)/test_qkscope --jobs 1
	$(MAKE) --no-print-directory test-notebook

# notebooks/explore.ipynb executed headless (nbconvert) against a small synthetic demo run; its
# asserts fail the target on a broken file.  The virtualenv comes from PyPI, pinned in
# notebooks/requirements.txt; JUPYTER_PATH makes its own python3 kernel the one that runs.
NB_VENV ?= .venv-nb
NB_DEMO := $(BUILD)/demo-test
NB_SETS := --set model.dir=$(NB_DEMO)/model --set sae.layer.0=$(NB_DEMO)/sae/layer_0 \
           --set sae.layer.1=$(NB_DEMO)/sae/layer_1 --set corpus.paths=$(NB_DEMO)/corpus.npy
$(NB_VENV)/.ok: notebooks/requirements.txt
	python3 -m venv $(NB_VENV)
	$(NB_VENV)/bin/pip install -q -r notebooks/requirements.txt
	touch $@
test-notebook: $(BIN)/qkscope $(NB_VENV)/.ok
	$(BIN)/qkscope planted --out $(NB_DEMO) --tokens 1024 -q
	$(BIN)/qkscope run configs/demo.ini $(NB_SETS) -q -o $(NB_DEMO)/run.h5
	$(BIN)/qkscope static configs/demo.ini $(NB_SETS) -q -o $(NB_DEMO)/static.h5
	QK_RUN=$(abspath $(NB_DEMO)/run.h5) QK_STATIC=$(abspath $(NB_DEMO)/static.h5) \
	JUPYTER_PATH=$(abspath $(NB_VENV))/share/jupyter $(NB_VENV)/bin/jupyter nbconvert --to notebook --execute \
	    --ExecutePreprocessor.timeout=60 --output $(abspath $(BUILD)/explore.executed.ipynb) notebooks/explore.ipynb

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
GT_DIR := $(BUILD)/ground-truth
ground-truth: $(BIN)/qkscope
	@mkdir -p $(GT_DIR)
	$(BIN)/qkscope run configs/trained.ini -o $(GT_DIR)/run.h5 --set run.backend=cpu
	$(BIN)/qkscope static configs/trained.ini -o $(GT_DIR)/static.h5 --set run.backend=cpu
	$(BIN)/qkscope probe score $(GT_DIR)/run.h5 --probe tests/reference/data/trained/probe \
	    --labels tests/reference/data/trained/labels --static $(GT_DIR)/static.h5 \
	    --expect "$$(python3 -c 'import json; print(",".join(json.load(open("tests/reference/data/trained/ground_truth.json"))["induction_heads"]))')" \
	    --json $(GT_DIR)/score.json
	python3 scripts/ground_truth_report.py $(GT_DIR)/score.json > results/ground_truth.md

BENCH_THREADS ?= $(shell nproc)
$(BIN)/bench_%: bench/bench_%.c $(BUILD)/libqkscope.a $(FLAGS_STAMP) | $(BIN)
	$(CC) $(filter-out -MMD -MP,$(CFLAGS)) $(LDFLAGS) -o $@ $< $(BUILD)/libqkscope.a $(LIBS)

bench-forward: $(BIN)/bench_forward $(VENV)/.ok
	OMP_NUM_THREADS=$(BENCH_THREADS) $(VENV)/bin/python bench/bench_forward.py --threads $(BENCH_THREADS)
bench-topk: $(BIN)/bench_topk $(VENV)/.ok
	OMP_NUM_THREADS=$(BENCH_THREADS) $(VENV)/bin/python bench/bench_topk.py --threads $(BENCH_THREADS)
# qkscope run (CPU) vs the seed's route in PyTorch; BENCH_RUN_ARGS="--layers all" for all 144 heads.
bench-run: $(BIN)/qkscope $(VENV)/.ok
	OMP_NUM_THREADS=$(BENCH_THREADS) $(VENV)/bin/python bench/bench_run.py --threads $(BENCH_THREADS) $(BENCH_RUN_ARGS)
# qkscope run on 1 GPU and on all GPUs (NCCL), scaling efficiency; says so and measures nothing
# without a GPU (BENCH_CPU_RANKS=N exercises it with CPU ranks).  No Python: inputs from `qkscope random`.
bench-gpu: $(BIN)/qkscope
	QK=$(BIN)/qkscope bench/bench_gpu.sh
bench-pipeline: $(BIN)/qkscope
	python3 bench/bench_pipeline.py --threads $(BENCH_THREADS)
bench-tokenize: $(BIN)/qkscope $(BIN)/bench_tokenize $(VENV)/.ok
	$(VENV)/bin/python bench/bench_tokenize.py


# libFuzzer + ASan/UBSan on the untrusted-input parsers (clang); FUZZ_SECONDS per target.
FUZZ_SECONDS ?= 60
FUZZ_CFLAGS := -D_GNU_SOURCE -g -O1 -fsanitize=fuzzer,address,undefined -Ihost $(shell pkg-config --cflags libcjson)
fuzz:
	mkdir -p $(BUILD)/fuzz/corpus-loaders $(BUILD)/fuzz/corpus-bpe
	clang $(FUZZ_CFLAGS) tests/fuzz/fuzz_loaders.c host/safetensors.c host/npy.c host/util.c -lcjson -o $(BUILD)/fuzz/loaders
	clang $(FUZZ_CFLAGS) tests/fuzz/fuzz_bpe.c host/bpe.c host/unicode_classes.c host/util.c -lcjson -lpthread -o $(BUILD)/fuzz/bpe
	cp tests/reference/data/gpt2_tiny_b/model.safetensors $(BUILD)/fuzz/corpus-loaders/
	head -c 2000 ../shared/data/text/utf8-demo.txt > $(BUILD)/fuzz/corpus-bpe/utf8
	$(BUILD)/fuzz/loaders -max_total_time=$(FUZZ_SECONDS) -max_len=4096 $(BUILD)/fuzz/corpus-loaders
	$(BUILD)/fuzz/bpe -max_total_time=$(FUZZ_SECONDS) -max_len=2048 $(BUILD)/fuzz/corpus-bpe

clean:
	rm -rf $(BUILD) $(BIN)

-include $(HOST_OBJ:.o=.d) $(TEST_OBJ:.o=.d) $(BUILD)/host/main.d
