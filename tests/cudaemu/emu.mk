# tests/cudaemu/emu.mk (included by the Makefile): the emulated CUDA device (tests/cudaemu/README.md).
#
#   make test-emu        kernels/ compiled as C++ with the emulation headers (tests/cudaemu/include,
#                        never the toolkit's), linked with the emulated runtime, cuBLAS(Lt), CUB and
#                        NCCL instead of libcudart & co., in build/emu; then the emulator's own suite
#                        (test_cudaemu) and every backend-dependent Criterion suite with
#                        QK_BACKEND=cuda on the emulated H100 and A100 (QK_EMU_DEVICE), and the
#                        CPU-vs-CUDA comparisons (tests/cudaemu/compare.sh)
#   make test-emu-asan   the same under AddressSanitizer + UBSan (build/emu-asan): out-of-bounds
#                        device accesses are reported, like compute-sanitizer's memcheck
#   EMU_DEVICES="h100"   the profiles to run (default h100 a100); EMU_SEEDS="1 2 3" the schedules
#   make test-emu-cov    test-emu with gcov over kernels/: results/emu_coverage.md
#
# The build is a sub-make with EMU=1 (the Makefile's kernel and library rules switch on it).

EMU_SEEDS   ?= 1
EMU_DEVICES ?= h100 a100
EMU_SUITES  := @(forward|analysis|analysis_batch|analysis_gpu|planted|comm_nccl|topk_gpu|robust|cache_sae)/*
EMU_EXTRA   := @(run/planted_circuits_found_by_run_and_static|ranks/gpus*)
EMU_PYTHON  ?= python3

ifeq ($(EMU),1)
EMU_SRC      := $(BUILD)/src
EMU_CXX      ?= g++
EMU_OPT      ?= -O1 -g
EMU_CXXFLAGS := -std=c++17 $(EMU_OPT) $(EMU_SAN) -ffp-contract=off $(ARCH) -fopenmp -D_GNU_SOURCE -Wall -Wextra \
                -Wno-unknown-pragmas -Wno-psabi -Wno-sign-compare -Itests/cudaemu/include -Itests/cudaemu -I$(EMU_SRC)/kernels -Ihost \
                $(shell pkg-config --cflags-only-I hdf5) $(BLAS_CFLAGS) -MMD -MP
EMU_RT_OBJ   := $(addprefix $(BUILD)/cudaemu/,runtime.o fiber.o fiber_switch_x86_64.o cublas.o nccl.o)
EMU_KSRC     := $(wildcard kernels/*.cu kernels/*/*.cu kernels/*.cuh kernels/*/*.cuh kernels/*.h kernels/*/*.h)
EMU_TEST_CU  := $(wildcard tests/cudaemu/test_*.cu)
EMU_TEST_CPP := $(wildcard tests/cudaemu/test_*.cpp)
EMU_TEST_OBJ := $(EMU_TEST_CU:tests/cudaemu/%.cu=$(BUILD)/cudaemu/%.o) $(EMU_TEST_CPP:tests/cudaemu/%.cpp=$(BUILD)/cudaemu/%.o)
# A real CUDA header in an object's dependencies means an emulation header is missing.
EMU_NO_TOOLKIT = ! grep -qE '(^| )/[^ ]*(cuda|cublas|nccl|/cub/|/crt/)' $(@:.o=.d) || \
                 { echo "$@: includes the CUDA toolkit's headers:"; grep -oE '(^| )/[^ ]*(cuda|cublas|nccl|/cub/|/crt/)[^ ]*' $(@:.o=.d) | sort -u; rm -f $@; exit 1; }

# kernels/ (and the emulator's kernel tests) rewritten line for line for the host compiler.
$(EMU_SRC)/.stamp: $(EMU_KSRC) $(EMU_TEST_CU) tests/cudaemu/rewrite.py | $(BUILD)/host
	$(EMU_PYTHON) tests/cudaemu/rewrite.py . $(EMU_SRC) $(EMU_KSRC) $(EMU_TEST_CU)
	touch $@

$(BUILD)/kernels/%.o: $(EMU_SRC)/.stamp $(FLAGS_STAMP) | $(BUILD)/kernels
	@mkdir -p $(@D)
	$(EMU_CXX) $(EMU_CXXFLAGS) -x c++ -c -o $@ $(EMU_SRC)/kernels/$*.cu
	@$(EMU_NO_TOOLKIT)
# The emulator itself (runtime, fibers, libraries) optimised whatever EMU_OPT says (the kernels'
# flags are for their coverage and debugging; the emulator's own code is not measured).
$(BUILD)/cudaemu/%.o: tests/cudaemu/%.cpp $(FLAGS_STAMP) | $(BUILD)/host
	@mkdir -p $(@D)
	$(EMU_CXX) $(EMU_CXXFLAGS) -O2 -c -o $@ $<
	@$(EMU_NO_TOOLKIT)
$(BUILD)/cudaemu/%.o: $(EMU_SRC)/.stamp $(FLAGS_STAMP) | $(BUILD)/host
	@mkdir -p $(@D)
	$(EMU_CXX) $(EMU_CXXFLAGS) -x c++ -c -o $@ $(EMU_SRC)/tests/cudaemu/$*.cu
	@$(EMU_NO_TOOLKIT)
$(BUILD)/cudaemu/fiber_switch_x86_64.o: tests/cudaemu/fiber_switch_x86_64.S | $(BUILD)/host
	@mkdir -p $(@D)
	$(CC) -c -o $@ $<

$(BIN)/test_cudaemu: $(EMU_TEST_OBJ) $(BUILD)/libqkscope.a | $(BIN)
	$(EMU_CXX) $(LDFLAGS) $(EMU_SAN) -o $@ $^ $(shell pkg-config --libs criterion) $(LIBS)

# (the .d files have no rule: make must not derive them from %.o through its built-in link rule)
$(CU_OBJ:.o=.d) $(EMU_TEST_OBJ:.o=.d): ;
-include $(CU_OBJ:.o=.d) $(EMU_TEST_OBJ:.o=.d)
endif

# The sub-make: BUILD, BIN and the sanitizer or coverage flags of one flavour of the emulated build.
EMU_MAKE = $(MAKE) --no-print-directory EMU=1 CUDA=1 NCCL=1 BUILD=$(1) BIN=$(1)/bin $(2) \
           $(1)/bin/qkscope $(1)/bin/test_qkscope $(1)/bin/test_cudaemu $(1)/bin/h5compare
# A root whose bin/ is the emulated build (the suites start ./bin/qkscope), as test-asan's.
EMU_ROOT = mkdir -p $(1)/root && ln -sfn $(abspath tests) $(1)/root/tests && ln -sfn $(abspath configs) $(1)/root/configs && \
           ln -sfn $(abspath $(1)/bin) $(1)/root/bin && ln -sfn $(abspath ../shared) $(1)/shared && ln -sfn $(abspath slurm) $(1)/slurm
# The suites on each emulated device; QK_EMU_DEVICES=2 so that the multi-GPU suites run.
EMU_RUN = cd $(1)/root && for dev in $(EMU_DEVICES); do for seed in $(EMU_SEEDS); do \
            echo "== emulated $$dev, QK_EMU_SEED=$$seed: the emulator's own suite, then the GPU suites (QK_BACKEND=cuda)"; \
            $(2) QK_EMU_DEVICE=$$dev QK_EMU_SEED=$$seed ./bin/test_cudaemu --jobs 1 || exit 1; \
            $(2) QK_EMU_DEVICE=$$dev QK_EMU_SEED=$$seed QK_EMU_DEVICES=2 QK_EMU_ABORT=1 QK_BACKEND=cuda ./bin/test_qkscope --jobs 1 \
                --filter '$(EMU_SUITES)' || exit 1; \
            $(2) QK_EMU_DEVICE=$$dev QK_EMU_SEED=$$seed QK_EMU_DEVICES=2 QK_EMU_ABORT=1 QK_BACKEND=cuda ./bin/test_qkscope --jobs 1 \
                --filter '$(EMU_EXTRA)' || exit 1; \
            $(2) QK_EMU_DEVICE=$$dev QK_EMU_SEED=$$seed QK_EMU_ABORT=1 bash $(abspath tests/cudaemu/compare.sh) ./bin || exit 1; \
          done; done

.PHONY: test-emu test-emu-asan test-emu-cov
test-emu:
	@$(call EMU_MAKE,build/emu,)
	@$(call EMU_ROOT,build/emu)
	$(call EMU_RUN,build/emu,)

EMU_ASAN_FLAGS := -O1 -g -fno-omit-frame-pointer -fsanitize=address,undefined -fno-sanitize-recover=undefined
test-emu-asan:
	@CFLAGS="$(EMU_ASAN_FLAGS)" LDFLAGS="-fsanitize=address,undefined" $(call EMU_MAKE,build/emu-asan,EMU_OPT= EMU_SAN="$(EMU_ASAN_FLAGS)")
	@$(call EMU_ROOT,build/emu-asan)
	$(call EMU_RUN,build/emu-asan,$(ASAN_ENV))

test-emu-cov:
	@LDFLAGS=--coverage $(call EMU_MAKE,build/emu-cov,EMU_OPT="-O1 -g --coverage")
	find build/emu-cov -name '*.gcda' -delete
	@$(call EMU_ROOT,build/emu-cov)
	$(call EMU_RUN,build/emu-cov,)
	$(EMU_PYTHON) tests/cudaemu/coverage.py build/emu-cov > results/emu_coverage.md
