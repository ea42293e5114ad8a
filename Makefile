# nmprune — one Makefile for the tool, the library, the tests and the benchmarks.
# `make help` lists the targets.

CC      ?= cc
NVCC    ?= nvcc
PYTHON  ?= python3
PREFIX  ?= /usr/local
CUDA    ?= auto
BUILD   ?= build

WARN     := -Wall -Wextra -Werror
CSTD     := -std=c11 -D_GNU_SOURCE
OPT      ?= -O2 -g
CPPFLAGS += -Iinclude -Isrc -Ipasses -Ikernels -I$(BUILD)/gen
CFLAGS   += $(OPT) $(CSTD) -pthread -fno-strict-aliasing
LDLIBS   += -lprotobuf-c -ljansson -lz -lpthread -lm -ldl

# CUDA: auto builds kernels/ when nvcc is on the PATH; 0 never; 1 always.
ifeq ($(CUDA),auto)
  HAVE_NVCC := $(shell command -v $(NVCC) >/dev/null 2>&1 && echo 1 || echo 0)
else
  HAVE_NVCC := $(CUDA)
endif

GEN_C   := $(BUILD)/gen/onnx.pb-c.c
GEN_H   := $(BUILD)/gen/onnx.pb-c.h
GEN_O   := $(BUILD)/gen/onnx.pb-c.o

LIB_SRC := $(filter-out src/main.c src/cli.c,$(wildcard src/*.c)) $(wildcard src/cpu/*.c) $(wildcard passes/*.c)
LIB_OBJ := $(patsubst %.c,$(BUILD)/obj/%.o,$(LIB_SRC)) $(GEN_O)
CLI_OBJ := $(BUILD)/obj/src/main.o $(BUILD)/obj/src/cli.o

ifeq ($(HAVE_NVCC)$(if $(wildcard kernels/*.cu),,-none),1)
  CU_SRC   := $(wildcard kernels/*.cu)
  CU_OBJ   := $(patsubst %.cu,$(BUILD)/obj/%.o,$(CU_SRC))
  LIB_OBJ  += $(CU_OBJ)
  CPPFLAGS += -DNMP_WITH_CUDA=1
  CUDA_HOME ?= /usr/local/cuda
  LDLIBS   += -L$(CUDA_HOME)/lib64 -lcudart_static -ldl -lrt -lstdc++
  NVCCFLAGS ?= -O3 -std=c++17 -gencode arch=compute_80,code=sm_80 -gencode arch=compute_90,code=sm_90 \
               -gencode arch=compute_90,code=compute_90
endif

# CUDA=emu: the CUDA backend compiled for the CPU against the CUDA emulator in
# tests/cuda_emu, a test build (make test-cuda-emu) that runs its host code and
# kernels where there is no GPU.
ifeq ($(CUDA),emu)
  EMU      := tests/cuda_emu
  CU_SRC   := $(wildcard kernels/*.cu)
  CU_OBJ   := $(patsubst %.cu,$(BUILD)/obj/%.o,$(CU_SRC)) $(BUILD)/obj/$(EMU)/runtime.o $(BUILD)/obj/$(EMU)/view.o
  LIB_OBJ  += $(CU_OBJ)
  CPPFLAGS += -DNMP_WITH_CUDA=1
  LDLIBS   += -lstdc++ -ldl -Wl,--export-dynamic-symbol=nmp_emu_on_device,--export-dynamic-symbol=nmp_emu_legacy_sync
  # Staging of 4 KiB (32 MiB on a GPU): the tests' tensors cross many pieces of both pinned buffers.
  EMU_CXXFLAGS := $(OPT) -std=c++17 -pthread -fPIC -Wall -Wextra -Werror -Wno-unknown-pragmas \
                  -DNMP_CU_STAGE_BYTES=4096 -I$(EMU) -Iinclude -Isrc -Ikernels
  EMU_DEPS := $(wildcard $(EMU)/*.h $(EMU)/cub/*.cuh kernels/*.h kernels/*.cuh src/*.h)
endif

# Objects built with and without CUDA differ (the stub, -DNMP_WITH_CUDA): a
# stamp named for the setting makes switching rebuild rather than mix them.
CONFIG_STAMP := $(BUILD)/.config-cuda$(if $(CU_OBJ),$(if $(EMU),emu,1),0)

$(CONFIG_STAMP):
	@mkdir -p $(BUILD)
	@rm -f $(BUILD)/.config-cuda*
	@touch $@

TESTS := $(patsubst tests/%.c,$(BUILD)/tests/%,$(wildcard tests/test_*.c))
FAULT_SO := $(BUILD)/tests/fault_inject.so
# The libFuzzer harnesses built as plain programs that replay files (fuzz/replay.c).
FUZZ_REPLAY := $(BUILD)/tests/replay_fuzz_model $(BUILD)/tests/replay_fuzz_parsers $(BUILD)/tests/replay_fuzz_npz \
	$(BUILD)/tests/replay_fuzz_calib

.PHONY: all help deps test test-unit test-e2e test-real test-cuda test-cuda-emu bench-cuda gpu-bundle bench bench-quality bench-large asan test-asan valgrind install clean fuzz fuzz-corpus fuzz-run report-screenshot
.DEFAULT_GOAL := all

all: $(BUILD)/nmprune $(BUILD)/libnmprune.a ## build the tool and the library

help: ## list the targets
	@grep -E '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/' | expand -t 16

# ---- generated protobuf-c code (not our code: exempt from -Werror) ----------
$(GEN_C) $(GEN_H) &: onnx_proto/onnx.proto
	@mkdir -p $(BUILD)/gen
	protoc-c --c_out=$(BUILD)/gen -Ionnx_proto onnx_proto/onnx.proto

$(GEN_O): $(GEN_C) $(GEN_H)
	$(CC) $(OPT) -fPIC -I$(BUILD)/gen -c $< -o $@

# ---- our code ----------------------------------------------------------------
$(BUILD)/obj/%.o: %.c $(GEN_H) $(CONFIG_STAMP) $(wildcard include/*.h src/*.h src/cpu/*.h passes/*.h kernels/*.h)
	@mkdir -p $(dir $@)
	$(CC) $(CPPFLAGS) $(CFLAGS) $(WARN) -fPIC -c $< -o $@

$(BUILD)/obj/%.o: %.cu $(CONFIG_STAMP) $(wildcard kernels/*.h kernels/*.cuh src/*.h)
	@mkdir -p $(dir $@)
	$(NVCC) $(NVCCFLAGS) -Iinclude -Isrc -Ikernels -Xcompiler -fPIC -c $< -o $@

ifeq ($(CUDA),emu)
# CUDA source with its launches rewritten (launches.sed; a #line keeps the file's own lines): $(1) to $(2).
emu_rewrite = { printf '\043line 1 "%s"\n' $(1); sed -E -f $(EMU)/launches.sed $(1); } > $(2)

$(BUILD)/obj/kernels/%.o: kernels/%.cu $(CONFIG_STAMP) $(EMU)/launches.sed $(EMU_DEPS)
	@mkdir -p $(dir $@) $(BUILD)/emu
	$(call emu_rewrite,$<,$(BUILD)/emu/$*.cc)
	$(CXX) $(EMU_CXXFLAGS) -c $(BUILD)/emu/$*.cc -o $@

# The emulator's own tests.
$(BUILD)/tests/emu_selftest: $(EMU)/test_emu.cu $(BUILD)/obj/$(EMU)/runtime.o $(EMU)/launches.sed $(EMU_DEPS)
	@mkdir -p $(dir $@) $(BUILD)/emu
	$(call emu_rewrite,$<,$(BUILD)/emu/test_emu.cc)
	$(CXX) $(EMU_CXXFLAGS) -o $@ $(BUILD)/emu/test_emu.cc $(BUILD)/obj/$(EMU)/runtime.o -lcmocka

$(BUILD)/obj/$(EMU)/%.o: $(EMU)/%.cc $(CONFIG_STAMP) $(EMU_DEPS)
	@mkdir -p $(dir $@)
	$(CXX) $(EMU_CXXFLAGS) -c $< -o $@

$(BUILD)/emu/libcublas.so.13: $(EMU)/cublas.cc $(EMU)/cublas_v2.h
	@mkdir -p $(dir $@)
	$(CXX) $(EMU_CXXFLAGS) -shared -o $@ $< -ldl
endif

$(BUILD)/libnmprune.a: $(LIB_OBJ)
	@rm -f $@
	ar rcs $@ $^

$(BUILD)/nmprune: $(CLI_OBJ) $(BUILD)/libnmprune.a
	$(CC) $(CFLAGS) -o $@ $(CLI_OBJ) $(BUILD)/libnmprune.a $(LDLIBS)

# The mask engine's hot loops are written for the vectorizer.
$(patsubst %.c,$(BUILD)/obj/%.o,$(wildcard src/cpu/*.c)) $(BUILD)/obj/src/permute.o: OPT += -O3

# ---- tests ---------------------------------------------------------------------
# One CMocka binary per module; each links the library (the module under test
# and what it needs) and nothing else.
$(BUILD)/tests/%: tests/%.c $(BUILD)/libnmprune.a tests/testutil.h
	@mkdir -p $(dir $@)
	$(CC) $(CPPFLAGS) -Itests $(CFLAGS) $(WARN) $(TEST_WRAP_$*) -o $@ $< $(BUILD)/libnmprune.a $(LDLIBS) -lcmocka

# The CUDA backend against the CPU backend (built only with CUDA).
$(BUILD)/tests/cuda_backend: tests/cuda/test_cuda_backend.c $(BUILD)/libnmprune.a
	@mkdir -p $(dir $@)
	$(CC) $(CPPFLAGS) $(CFLAGS) $(WARN) -o $@ $< $(BUILD)/libnmprune.a $(LDLIBS) -lcmocka

ifeq ($(CUDA),emu)
$(BUILD)/bench/cuda_bench: bench/cuda_bench.cu $(BUILD)/libnmprune.a $(EMU)/launches.sed $(EMU_DEPS)
	@mkdir -p $(dir $@) $(BUILD)/emu
	$(call emu_rewrite,$<,$(BUILD)/emu/cuda_bench.cc)
	$(CXX) $(EMU_CXXFLAGS) -I$(BUILD)/gen -o $@ $(BUILD)/emu/cuda_bench.cc $(BUILD)/libnmprune.a $(LDLIBS)
else
$(BUILD)/bench/cuda_bench: bench/cuda_bench.cu $(BUILD)/libnmprune.a
	@mkdir -p $(dir $@)
	$(NVCC) $(NVCCFLAGS) -Iinclude -Isrc -Ikernels -I$(BUILD)/gen -o $@ $< $(BUILD)/libnmprune.a \
		-lprotobuf-c -ljansson -lz -lpthread -lm -ldl
endif

$(BUILD)/bench/engine_bench: bench/engine_bench.c $(BUILD)/libnmprune.a
	@mkdir -p $(dir $@)
	$(CC) $(CPPFLAGS) $(CFLAGS) $(WARN) -o $@ $< $(BUILD)/libnmprune.a $(LDLIBS)

$(BUILD)/tests/replay_%: fuzz/%.c fuzz/replay.c $(BUILD)/libnmprune.a
	@mkdir -p $(dir $@)
	$(CC) $(CPPFLAGS) $(CFLAGS) $(WARN) -o $@ fuzz/$*.c fuzz/replay.c $(BUILD)/libnmprune.a $(LDLIBS)

$(FAULT_SO): tests/fault_inject.c
	@mkdir -p $(dir $@)
	$(CC) -O2 -fPIC -shared -Wall -Wextra -Werror -o $@ $< -ldl

$(BUILD)/bench/perm_bench: bench/perm_bench.c $(BUILD)/libnmprune.a
	@mkdir -p $(dir $@)
	$(CC) $(CPPFLAGS) $(CFLAGS) $(WARN) -o $@ $< $(BUILD)/libnmprune.a $(LDLIBS)

deps: ## install what the build and the tests need (apt-get, pip)
	./tools/deps.sh

test: all $(TESTS) test-unit test-e2e ## run every test

test-unit: all $(TESTS) ## run the CMocka unit tests
	@set -e; for t in $(TESTS); do echo "== $$t"; $$t; done

test-cuda: ## the CUDA backend against the CPU backend, and --device cuda = --device cpu end to end (skips without a GPU)
	$(MAKE) CUDA=1 all $(BUILD)/tests/cuda_backend
	$(BUILD)/tests/cuda_backend
	NMPRUNE=$(BUILD)/nmprune $(PYTHON) -m pytest -q -rs tests/cuda

bench-cuda: ## on a GPU: kernel bandwidth beside a device copy, the engine with transfers, prune --device cuda vs cpu
	$(MAKE) CUDA=1 all $(BUILD)/bench/cuda_bench
	NMPRUNE=$(BUILD)/nmprune CUDA_BENCH=$(BUILD)/bench/cuda_bench $(PYTHON) bench/bench_cuda.py

test-cuda-emu: ## test-cuda without a GPU: the CUDA backend's code run on the CPU by tests/cuda_emu, with the sanitizers
	$(MAKE) BUILD=build-emu CUDA=emu OPT="$(ASAN_OPT)" build-emu/nmprune build-emu/tests/cuda_backend \
		build-emu/emu/libcublas.so.13 build-emu/tests/emu_selftest build-emu/bench/cuda_bench
	$(ASAN_ENV) build-emu/tests/emu_selftest
	$(ASAN_ENV) LD_LIBRARY_PATH=build-emu/emu build-emu/tests/cuda_backend
	$(ASAN_ENV) LD_LIBRARY_PATH=build-emu/emu NMPRUNE=build-emu/nmprune $(PYTHON) -m pytest -q -rs tests/cuda
	@echo "== make bench-cuda's code, run small under the emulator (its figures mean nothing)"
	$(ASAN_ENV) LD_LIBRARY_PATH=build-emu/emu NMPRUNE=build-emu/nmprune CUDA_BENCH=build-emu/bench/cuda_bench \
		CUDA_BENCH_SIDE=256 BENCH_CUDA_SMALL=1 BENCH_REPEAT=1 BENCH_DIR=build-emu/bench-out $(PYTHON) bench/bench_cuda.py

gpu-bundle: ## build with CUDA and pack what the GPU machine needs into .gpu/ (tools/gpu-bundle.sh)
	./tools/gpu-bundle.sh

test-e2e: all $(FAULT_SO) $(FUZZ_REPLAY) ## run the end-to-end tests of the command line
	NMPRUNE=$(BUILD)/nmprune FAULT_SO=$(FAULT_SO) $(PYTHON) -m pytest -q -rs tests/e2e

bench: all $(BUILD)/bench/engine_bench $(BUILD)/bench/perm_bench ## benchmarks: ratios against cp and the reference tools, same run
	NMPRUNE=$(BUILD)/nmprune ENGINE_BENCH=$(BUILD)/bench/engine_bench PERM_BENCH=$(BUILD)/bench/perm_bench \
		$(PYTHON) bench/bench.py

bench-large: all ## prune a generated 12 GB fp16 model with external data (not in bench or CI)
	NMPRUNE=$(BUILD)/nmprune $(PYTHON) bench/bench.py large

test-real: all ## the real-model tests alone (models from make deps; part of test-e2e)
	NMPRUNE=$(BUILD)/nmprune $(PYTHON) -m pytest -q -rs tests/e2e/test_real_models.py tests/e2e/test_calibration.py -k "real or Real"

bench-quality: all ## calibrated pruning on real models (wheels from make deps): fidelity, time, memory
	NMPRUNE=$(BUILD)/nmprune $(PYTHON) bench/bench_quality.py

report-screenshot: all ## render an HTML report with headless Chromium into build/report.png
	$(PYTHON) models/make_models.py all $(BUILD)/models >/dev/null
	$(BUILD)/nmprune prune $(BUILD)/models/bert.onnx -o $(BUILD)/report-model.onnx -q \
		--exclude ffn.up --report-html $(BUILD)/report.html
	chromium --headless --no-sandbox --disable-gpu --hide-scrollbars --window-size=1200,900 \
		--screenshot=$(BUILD)/report.png file://$(abspath $(BUILD))/report.html
	@echo "wrote $(BUILD)/report.png"

FUZZ_BUILD := build-fuzz
FUZZ_FLAGS := -O1 -g -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined
FUZZ_TIME ?= 600

fuzz: ## build the libFuzzer harnesses (clang) into build-fuzz/; FUZZ_TIME=s make fuzz-run runs each
	$(MAKE) BUILD=$(FUZZ_BUILD) CC=clang CUDA=0 OPT="$(FUZZ_FLAGS) -fsanitize=fuzzer-no-link" $(FUZZ_BUILD)/libnmprune.a
	for h in fuzz_model fuzz_parsers fuzz_npz fuzz_calib; do \
		clang $(CPPFLAGS:$(BUILD)/gen=$(FUZZ_BUILD)/gen) -I$(FUZZ_BUILD)/gen $(CSTD) $(FUZZ_FLAGS) -fsanitize=fuzzer \
			-o $(FUZZ_BUILD)/$$h fuzz/$$h.c $(FUZZ_BUILD)/libnmprune.a $(LDLIBS) || exit 1; done

fuzz-corpus: ## seed corpora from models/, the generated models and ONNX's backend test data
	mkdir -p $(FUZZ_BUILD)/corpus/model $(FUZZ_BUILD)/corpus/parsers $(FUZZ_BUILD)/corpus/npz $(FUZZ_BUILD)/corpus/calib
	$(PYTHON) fuzz/npz_seeds.py $(FUZZ_BUILD)/corpus/npz
	$(PYTHON) fuzz/calib_seeds.py $(FUZZ_BUILD)/corpus/calib
	$(PYTHON) models/make_models.py all $(FUZZ_BUILD)/models >/dev/null
	cp models/demo.onnx $(FUZZ_BUILD)/corpus/model/
	for f in $(FUZZ_BUILD)/models/*.onnx; do cp $$f $(FUZZ_BUILD)/corpus/model/; done
	i=0; for f in $$(find /usr/share/libonnx-testdata -name model.onnx | head -400); do \
		i=$$((i+1)); cp $$f $(FUZZ_BUILD)/corpus/model/backend-$$i.onnx; done
	cp tests/fuzz-regressions/*.onnx $(FUZZ_BUILD)/corpus/model/ 2>/dev/null || true
	for p in 2:4 1:4@v4 16:32@b2x8 2:4@t 50% 12.5%@v8 m4n2_2d_best m32n8v4_2d_greedy; do \
		printf '\001%s' "$$p" > $(FUZZ_BUILD)/corpus/parsers/p-$$(echo $$p | tr -c 'a-z0-9' _); done
	printf '\000[{"match": "W", "pattern": "2:4"}, {"match": ".*", "dense": true}]' > $(FUZZ_BUILD)/corpus/parsers/rules-1

# The model harness's channel search takes about 100 times as long under the sanitizers and coverage as in a
# release build (14 s on the generated BERT block, 0.14 s released): its timeout is 60 s.
fuzz-run: fuzz fuzz-corpus ## run each harness for FUZZ_TIME seconds (default 600)
	$(FUZZ_BUILD)/fuzz_model -max_total_time=$(FUZZ_TIME) -rss_limit_mb=2048 -timeout=60 \
		-artifact_prefix=$(FUZZ_BUILD)/crash-model- $(FUZZ_BUILD)/corpus/model
	$(FUZZ_BUILD)/fuzz_parsers -max_total_time=$(FUZZ_TIME) -rss_limit_mb=2048 -timeout=10 \
		-artifact_prefix=$(FUZZ_BUILD)/crash-parsers- $(FUZZ_BUILD)/corpus/parsers
	$(FUZZ_BUILD)/fuzz_npz -max_total_time=$(FUZZ_TIME) -rss_limit_mb=2048 -timeout=10 \
		-artifact_prefix=$(FUZZ_BUILD)/crash-npz- $(FUZZ_BUILD)/corpus/npz
	$(FUZZ_BUILD)/fuzz_calib -max_total_time=$(FUZZ_TIME) -rss_limit_mb=2048 -timeout=10 \
		-artifact_prefix=$(FUZZ_BUILD)/crash-calib- $(FUZZ_BUILD)/corpus/calib

ASAN_OPT := -O1 -g -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined
# The fault-injection shim is preloaded ahead of the sanitizer runtime; that is fine for these tests.
ASAN_ENV := ASAN_OPTIONS=detect_leaks=1:verify_asan_link_order=0:abort_on_error=0 UBSAN_OPTIONS=print_stacktrace=1

asan: ## build the tool and the unit tests with AddressSanitizer and UBSan into build-asan/
	$(MAKE) BUILD=build-asan CUDA=0 OPT="$(ASAN_OPT)" all $(patsubst $(BUILD)/%,build-asan/%,$(TESTS)) \
		build-asan/tests/fault_inject.so

test-asan: asan ## run every test against the sanitized build
	$(ASAN_ENV) $(MAKE) BUILD=build-asan CUDA=0 OPT="$(ASAN_OPT)" test-unit test-e2e

valgrind: all $(TESTS) ## run the unit tests under valgrind (memcheck, leaks are errors)
	@set -e; for t in $(TESTS); do echo "== valgrind $$t"; \
		valgrind -q --error-exitcode=1 --leak-check=full --errors-for-leak-kinds=definite,indirect $$t; done

VERSION := $(shell sed -n 's/^#define NMP_VERSION "\(.*\)"/\1/p' src/version.h)

install: all ## install binary, header, library and pkg-config file under PREFIX
	install -d $(DESTDIR)$(PREFIX)/bin $(DESTDIR)$(PREFIX)/lib/pkgconfig $(DESTDIR)$(PREFIX)/include
	install -m 755 $(BUILD)/nmprune $(DESTDIR)$(PREFIX)/bin/
	install -m 644 $(BUILD)/libnmprune.a $(DESTDIR)$(PREFIX)/lib/
	install -m 644 include/nmprune.h $(DESTDIR)$(PREFIX)/include/
	sed -e 's|@PREFIX@|$(PREFIX)|' -e 's|@VERSION@|$(VERSION)|' \
	    -e 's|@CUDA_LIBS@|$(if $(CU_OBJ),-L$(CUDA_HOME)/lib64 -lcudart_static -ldl -lrt -lstdc++,)|' \
	    nmprune.pc.in > $(DESTDIR)$(PREFIX)/lib/pkgconfig/nmprune.pc

clean: ## remove build outputs
	rm -rf build build-asan build-emu
