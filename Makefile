# balsa's one Makefile.
#   make                      build (CPU always; CUDA objects too when nvcc is found)
#   make CUDA=0 / CUDA=1      force CPU-only / require CUDA
#   make test                 build and run every test; last line "N passed, N failed, N skipped"
#   make SANITIZE=address,undefined test    the same under ASan/UBSan, in its own object tree
#   make SANITIZE=thread test TESTS="server reload"   tests/test_server.c and test_reload.c
#                             only (TESTS picks any), under ThreadSanitizer
#   make run                  serve the demo model on port 8080
#   make bench                the kernel benchmark against OpenBLAS
#   make deps                 install the Debian packages balsa needs (as root) or print the command
#   make train                the pruning study (models/train, about 1.5 hours on one core) -> models/train/RESULTS.md

CC      ?= cc
NVCC    ?= $(firstword $(wildcard /usr/local/cuda/bin/nvcc) $(shell command -v nvcc 2>/dev/null))
CUDA    ?= auto
SANITIZE ?=
PORT    ?= 8080

ifeq ($(CUDA),auto)
  ifneq ($(NVCC),)
    USE_CUDA := 1
  else
    USE_CUDA := 0
  endif
else
  USE_CUDA := $(CUDA)
endif
ifeq ($(USE_CUDA),1)
  ifeq ($(NVCC),)
    $(error CUDA=1 but nvcc was not found in /usr/local/cuda/bin or on PATH)
  endif
endif

comma := ,
CONFIG := $(if $(filter 1,$(USE_CUDA)),cuda,cpu)$(if $(SANITIZE),-$(subst $(comma),-,$(SANITIZE)))
B := build/$(CONFIG)

CFLAGS_BASE = -std=c11 -O2 -g -Wall -Wextra -Werror -D_GNU_SOURCE -pthread -MMD -MP \
              -I. -I/usr/include/cjson
LDLIBS = -lmicrohttpd -lgnutls -lcjson -lopenblas -lz -lm -lpthread
ifneq ($(SANITIZE),)
  CFLAGS_BASE += -fsanitize=$(SANITIZE) -fno-omit-frame-pointer -fno-sanitize-recover=all
  LDFLAGS += -fsanitize=$(SANITIZE)
endif

CUDA_SRCS := $(wildcard kernels/cuda/*.cu)
ifeq ($(USE_CUDA),1)
  CUDA_HOME := $(patsubst %/bin/nvcc,%,$(NVCC))
  CFLAGS_BASE += -DBALSA_CUDA -I$(CUDA_HOME)/include
  LDLIBS += -L$(CUDA_HOME)/lib64 -Wl,-rpath,$(CUDA_HOME)/lib64 -lcudart -lcublas -lcusparse
  # sm_90 for H100/H200 plus PTX so newer GPUs can JIT it.
  NVCCFLAGS = -O3 -std=c++17 -I. -gencode arch=compute_90,code=sm_90 \
              -gencode arch=compute_90,code=compute_90 -Werror all-warnings \
              -Xcompiler -Wall,-Wextra,-Werror,-fPIC -MMD -MP
  ifneq ($(SANITIZE),)
    # one -Xcompiler per sanitizer: nvcc splits -Xcompiler arguments at commas
    NVCCFLAGS += $(foreach s,$(subst $(comma), ,$(SANITIZE)),-Xcompiler -fsanitize=$(s)) \
                 -Xcompiler -fno-sanitize-recover=all -Xcompiler -fno-omit-frame-pointer
  endif
endif
CFLAGS = $(CFLAGS_BASE)

LIB_SRCS := $(wildcard kernels/*.c kernels/cpu/*.c engine/*.c models/*.c) \
            $(filter-out server/main.c,$(wildcard server/*.c))
LIB_OBJS := $(LIB_SRCS:%.c=$(B)/%.o) $(if $(filter 1,$(USE_CUDA)),$(CUDA_SRCS:%.cu=$(B)/%.o))
TEST_SRCS := $(wildcard tests/test_*.c)
TEST_BINS := $(TEST_SRCS:tests/%.c=$(B)/tests/%)
BENCH_SRCS := $(wildcard bench/*.c)
BENCH_BINS := $(BENCH_SRCS:bench/%.c=$(B)/bench/%)

# SIMD code lives in files named for their instruction set, compiled with its flags;
# the rest of the program stays portable and chooses at run time.
$(B)/%_avx2.o: CFLAGS = $(CFLAGS_BASE) -mavx2 -mfma
$(B)/%_avx512.o: CFLAGS = $(CFLAGS_BASE) -mavx512f -mavx512bw -mavx512vl -mavx512dq -mfma -mavx2

.PHONY: all announce balsa test run bench deps clean gpu-check-bins container-test train chaos
.SECONDARY:
all: announce $(B)/balsa $(TEST_BINS) $(BENCH_BINS)

announce:
	@echo "balsa build: $(if $(filter 1,$(USE_CUDA)),CPU + CUDA (nvcc: $(NVCC)),CPU only$(if $(filter auto,$(CUDA)), (no nvcc found),)) -> $(B)$(if $(SANITIZE), with -fsanitize=$(SANITIZE))"

# Only the server binary (what the container images build).
balsa: announce $(B)/balsa

$(B)/libbalsa.a: $(LIB_OBJS)
	@mkdir -p $(@D)
	ar rcs $@ $^

$(B)/%.o: %.c
	@mkdir -p $(@D)
	$(CC) $(CFLAGS) -c $< -o $@

$(B)/%.o: %.cu
	@mkdir -p $(@D)
	$(NVCC) $(NVCCFLAGS) -c $< -o $@

# server/openapi.c embeds this file with .incbin, which -MMD cannot see.
$(B)/server/openapi.o: server/openapi.json

$(B)/balsa: $(B)/server/main.o $(B)/libbalsa.a
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS) $(if $(filter 1,$(USE_CUDA)),-lstdc++)

$(B)/tests/%: $(B)/tests/%.o $(B)/libbalsa.a
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS) -lcurl $(if $(filter 1,$(USE_CUDA)),-lstdc++)

$(B)/bench/%: $(B)/bench/%.o $(B)/libbalsa.a
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS) $(if $(filter 1,$(USE_CUDA)),-lstdc++)

# The GPU benchmark (bench/*.cu) and a GPU-only build of tests/test_cuda.c, for
# bench/gpu-check.sh on a GPU machine that may lack the server's libraries: they need only
# CUDA, libc and the kernels, not the CPU backend (OpenBLAS) nor microhttpd/cJSON.
ifeq ($(USE_CUDA),1)
GPU_ONLY_OBJS := $(addprefix $(B)/,kernels/bsmat.o kernels/status.o kernels/cpu/ref.o) \
                 $(CUDA_SRCS:%.cu=$(B)/%.o)
GPU_LDLIBS = -L$(CUDA_HOME)/lib64 -Wl,-rpath,$(CUDA_HOME)/lib64 -lcudart -lcublas -lcusparse \
             -lstdc++ -lm -lpthread
GPU_BENCH_BINS := $(patsubst bench/%.cu,$(B)/bench/%,$(wildcard bench/*.cu))
all: $(GPU_BENCH_BINS)
$(GPU_BENCH_BINS): $(B)/bench/%: $(B)/bench/%.o $(GPU_ONLY_OBJS)
	$(CC) $(LDFLAGS) -o $@ $^ $(GPU_LDLIBS)
$(B)/gpu-only/test_cuda: tests/test_cuda.c $(GPU_ONLY_OBJS)
	@mkdir -p $(@D)
	$(CC) $(CFLAGS) -DBALSA_GPU_ONLY $(LDFLAGS) -o $@ $(filter %.c %.o,$^) $(GPU_LDLIBS)
gpu-check-bins: $(B)/gpu-only/test_cuda $(GPU_BENCH_BINS)
else
gpu-check-bins:
	@echo "gpu-check-bins needs nvcc (CUDA=1)" >&2; exit 1
endif

# TESTS="a b": only the binaries of tests/test_a.c and tests/test_b.c.
TESTS ?=
RUN_BINS := $(if $(TESTS),$(TESTS:%=$(B)/tests/test_%),$(TEST_BINS))

test: deps all
	@BALSA_BIN=$(B)/balsa bash tests/run.sh $(RUN_BINS)

run: deps all
	$(B)/balsa serve --config config/balsa.json --port $(PORT)

bench: deps all
	$(B)/balsa bench kernels

deps:
	@bash tools/deps.sh

# Builds the CPU image with podman from a debootstrap base, runs it and checks it for real.
container-test:
	@bash tests/container/test.sh

# The server under ASan/UBSan, a mixed and misbehaving load, SIGHUP reloads and a SIGTERM
# under load (tests/chaos/run.sh; CHAOS_SECONDS per run).
CHAOS_SECONDS ?= 20
chaos: deps
	@bash tests/chaos/run.sh $(CHAOS_SECONDS)


train: deps
	OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 nice -n 19 /usr/bin/python3 models/train/study.py --out models/train/results --no-report
	OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 nice -n 19 /usr/bin/python3 models/train/study.py --out models/train/results-ft600 \
	    --dense-from models/train/results --ft-steps 600 --levels 0.5,0.8,0.9 --patterns balanced,unstructured --no-report
	/usr/bin/python3 models/train/report.py models/train/results models/train/RESULTS.md models/train/results-ft600

clean:
	rm -rf build

-include $(shell find build -name '*.d' 2>/dev/null)

# Coverage-guided fuzzing of the parsers with clang's libFuzzer (not part of all/test):
# make fuzz FUZZ_SECONDS=600
FUZZ_SECONDS ?= 60
.PHONY: fuzz
fuzz:
	bash tests/fuzz/run.sh $(FUZZ_SECONDS)
