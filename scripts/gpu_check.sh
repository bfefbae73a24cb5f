#!/usr/bin/env bash
# On a machine with an NVIDIA GPU: checks gaze's CUDA build against the PyTorch parity fixtures
# and measures caption and training throughput on the GPU, then the same on the CPU for
# comparison. Needs no Rust toolchain: it runs the prebuilt binary from scripts/build_cuda.sh.
#
# Usage: gpu_check.sh [--cpu-only] [--quick] [GAZE_BINARY]
#   GAZE_BINARY  default: ./gaze beside this script (the bundle), else target/cuda/release/gaze
#   --cpu-only   skip the GPU half (to try the script on a machine without a GPU)
#   --quick      small sizes everywhere: checks the script's plumbing, not for reporting
# Environment:
#   GAZE_FIXTURES    folder with parity/ (and efficientnet/); default: beside the binary, else
#                    the repository's tests/fixtures
#   GAZE_DEVICE      the GPU to use (default cuda, i.e. cuda:0)
#   GAZE_CPU_BINARY  the binary for the CPU half. Default: GAZE_BINARY; with --cpu-only, where
#                    GAZE_BINARY cannot start (a CUDA build needs the NVIDIA driver's libcuda.so.1
#                    and CUDA 13's libraries even to print its help), a CPU build instead:
#                    target/release/gaze of the repository around the script, if there is one.
#   GAZE_IM2COL_BINARY  a second CUDA build, made with `GAZE_CUDNN=0 scripts/build_cuda.sh`
#                    (convolutions through candle's im2col kernels instead of cuDNN): when
#                    given, the GPU encoder and caption benchmarks run with both builds, one
#                    after the other, so that the log holds cuDNN and im2col figures side by side
#   GAZE_CHECK_LOG   where to write a copy of the output (default $OUT/gpu_check.log when OUT is
#                    set, else gpu_check.log in the current folder)
# Exit status: 0 when every parity check passed and every benchmark ran, 2 otherwise.
set -uo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
CPU_ONLY=0
QUICK=0
BIN=
for arg in "$@"; do
    case $arg in
    --cpu-only) CPU_ONLY=1 ;;
    --quick) QUICK=1 ;;
    -h | --help)
        sed -n '2,24p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
        exit 0
        ;;
    -*)
        echo "gpu_check.sh: unknown option $arg" >&2
        exit 2
        ;;
    *) BIN=$arg ;;
    esac
done
if [[ -z $BIN ]]; then
    for candidate in "$HERE/gaze" "$HERE/../target/cuda/release/gaze"; do
        if [[ -x $candidate ]]; then
            BIN=$candidate
            break
        fi
    done
fi
[[ -n $BIN && -x $BIN ]] || {
    echo "gpu_check.sh: no gaze binary (give its path, or run scripts/build_cuda.sh)" >&2
    exit 2
}
BIN=$(cd "$(dirname "$BIN")" && pwd)/$(basename "$BIN")
FIXTURES=${GAZE_FIXTURES:-}
if [[ -z $FIXTURES ]]; then
    for candidate in "$(dirname "$BIN")/fixtures" "$HERE/../tests/fixtures"; do
        if [[ -f $candidate/parity/expected.safetensors ]]; then
            FIXTURES=$candidate
            break
        fi
    done
fi
[[ -n $FIXTURES && -f $FIXTURES/parity/expected.safetensors ]] || {
    echo "gpu_check.sh: parity fixtures not found (set GAZE_FIXTURES)" >&2
    exit 2
}
GPU=${GAZE_DEVICE:-cuda}
LOG=${GAZE_CHECK_LOG:-${OUT:+$OUT/gpu_check.log}}
LOG=${LOG:-gpu_check.log}
: >"$LOG"

if ((QUICK)); then
    BATCHES=1,8
    IMAGES=8
    CPU_IMAGES=8
    # A small model: --quick checks the plumbing, its figures mean nothing.
    MODEL=(--encoder resnet18 --image-size 128)
    CAPTION=(--vocab 1000 --max-steps 5)
    TRAIN=(--encoder resnet18 --image-size 128 --batch-size 8 --vocab 1000)
    GPU_CAPTIONS=32
    CPU_CAPTIONS=16
else
    BATCHES=1,8,32,64
    IMAGES=64
    CPU_IMAGES=8
    MODEL=()
    CAPTION=()
    TRAIN=()
    GPU_CAPTIONS=640
    CPU_CAPTIONS=64
fi

FAILED=()
say() { printf '\n== %s\n' "$*" | tee -a "$LOG"; }
# Runs a gaze command with binary $1, copying its output to the log; remembers failures.
step_with() {
    local bin=$1 name=$2
    shift 2
    say "$name: gaze $*"
    local started=$SECONDS
    "$bin" --log-level warn "$@" 2>&1 | tee -a "$LOG"
    local rc=${PIPESTATUS[0]}
    echo "($name: exit $rc, $((SECONDS - started)) s)" | tee -a "$LOG"
    ((rc == 0)) || FAILED+=("$name")
}
step() { step_with "$BIN" "$@"; }
cpu_step() { step_with "$CPU_BIN" "$@"; }

# The CUDA libraries the binary links: the NVIDIA driver's libcuda.so.1, CUDA 13's cudart,
# cuBLAS, cuRAND and NVRTC, and for a cuDNN build cuDNN 9's libcudnn.so.9 (which loads its
# engine libraries from its own folder). Where the loader does not find them already, look in
# the usual places, PyTorch's wheels included.
missing_libs() { ldd "${1:-$BIN}" 2>/dev/null | awk '/not found/ {print $1}'; }
find_cuda_libs() {
    local bin=${1:-$BIN} missing dirs dir lib
    missing=$(missing_libs "$bin")
    [[ -z $missing ]] && return 0
    dirs=$(
        {
            python3 - <<'EOF' 2>/dev/null
import glob, os, sys
for p in sys.path:
    for d in glob.glob(os.path.join(p, "nvidia", "*", "lib")) + glob.glob(os.path.join(p, "torch", "lib")):
        print(d)
EOF
            ls -d /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib \
                /usr/local/cuda-13*/lib64 /usr/local/nvidia/lib64 /usr/local/nvidia/lib \
                /usr/lib/x86_64-linux-gnu 2>/dev/null
        } | awk '!seen[$0]++'
    )
    for dir in $dirs; do
        for lib in $missing; do
            if [[ -e $dir/$lib ]]; then
                export LD_LIBRARY_PATH=$dir${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
                break
            fi
        done
        missing=$(missing_libs "$bin")
        [[ -z $missing ]] && return 0
    done
    return 1
}

# The binary for the CPU half (see GAZE_CPU_BINARY above).
CPU_BIN=${GAZE_CPU_BINARY:-}
if [[ -z $CPU_BIN ]]; then
    CPU_BIN=$BIN
    if ((CPU_ONLY)) && [[ -n $(missing_libs "$BIN") ]] && ! find_cuda_libs; then
        CPU_BIN=
        if [[ -x $HERE/../target/release/gaze ]]; then
            CPU_BIN=$(cd "$HERE/../target/release" && pwd)/gaze
        fi
        [[ -n $CPU_BIN ]] || {
            echo "gpu_check.sh: $BIN cannot start here: it needs" $(missing_libs "$BIN") >&2
            echo "(a CUDA build needs the NVIDIA driver); give a CPU build in GAZE_CPU_BINARY" >&2
            exit 2
        }
        echo "gpu_check.sh: $BIN cannot start here (no" $(missing_libs "$BIN")"):" \
            "the CPU half runs $CPU_BIN" >&2
    fi
fi
[[ -x $CPU_BIN ]] || {
    echo "gpu_check.sh: GAZE_CPU_BINARY=$CPU_BIN is not an executable" >&2
    exit 2
}

IM2COL_BIN=${GAZE_IM2COL_BINARY:-}
if [[ -n $IM2COL_BIN ]]; then
    [[ -x $IM2COL_BIN ]] || {
        echo "gpu_check.sh: GAZE_IM2COL_BINARY=$IM2COL_BIN is not an executable" >&2
        exit 2
    }
    IM2COL_BIN=$(cd "$(dirname "$IM2COL_BIN")" && pwd)/$(basename "$IM2COL_BIN")
fi
# The builds the GPU half runs: the bundle's, and the im2col one beside it when given.
GPU_BINS=("$BIN")
[[ -n $IM2COL_BIN ]] && GPU_BINS+=("$IM2COL_BIN")

say "machine"
{
    echo "binary: $BIN"
    [[ $CPU_BIN != "$BIN" ]] && echo "binary for the CPU half: $CPU_BIN"
    [[ -f $(dirname "$BIN")/BUILD-INFO.txt ]] && sed 's/^/  /' "$(dirname "$BIN")/BUILD-INFO.txt"
    [[ -n $IM2COL_BIN ]] && echo "im2col build beside it: $IM2COL_BIN"
    echo "fixtures: $FIXTURES"
    echo "CPU: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //'), $(nproc) threads"
    echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
} | tee -a "$LOG"

if ((!CPU_ONLY)); then
    libs_found=1
    for bin in "${GPU_BINS[@]}"; do
        find_cuda_libs "$bin" || { libs_found=0; break; }
    done
    if ((!libs_found)); then
        {
            echo "gpu_check.sh: the binary needs libraries this machine does not have:"
            for bin in "${GPU_BINS[@]}"; do missing_libs "$bin"; done | sort -u | sed 's/^/  /'
            echo "libcuda.so.1 comes with the NVIDIA driver; libcudnn.so.9 with cuDNN 9.21 or newer"
            echo "(PyTorch's nvidia-cudnn-cu13 wheel); the others with CUDA 13 (a toolkit in"
            echo "/usr/local/cuda, or PyTorch's nvidia-* wheels). Set LD_LIBRARY_PATH to them."
        } | tee -a "$LOG" >&2
        exit 2
    fi
    [[ -n ${LD_LIBRARY_PATH:-} ]] && echo "LD_LIBRARY_PATH=$LD_LIBRARY_PATH" | tee -a "$LOG"
    if command -v nvidia-smi >/dev/null; then
        nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>&1 | tee -a "$LOG"
    fi

    step "parity on the GPU" bench parity --device "$GPU" --fixtures "$FIXTURES"
    for bin in "${GPU_BINS[@]}"; do
        build=
        [[ $bin == "$IM2COL_BIN" ]] && build=", im2col build"
        step_with "$bin" "encoder throughput, GPU$build" bench encoder --device "$GPU" \
            --batch-sizes "$BATCHES" --images "$IMAGES" "${MODEL[@]}"
        step_with "$bin" "caption throughput, GPU$build" bench caption --device "$GPU" \
            --beam-sizes 5 --batch-sizes "$BATCHES" --images "$IMAGES" "${MODEL[@]}" "${CAPTION[@]}"
    done
    step "training, decoder stage, GPU" bench train --device "$GPU" --captions "$GPU_CAPTIONS" \
        "${TRAIN[@]}"
    step "training, fine-tuning, GPU" bench train --device "$GPU" --fine-tune \
        --captions "$GPU_CAPTIONS" "${TRAIN[@]}"
fi

cpu_step "parity on the CPU" bench parity --device cpu --fixtures "$FIXTURES"
cpu_step "caption throughput, CPU" bench caption --device cpu --beam-sizes 5 \
    --batch-sizes "$BATCHES" --images "$CPU_IMAGES" "${MODEL[@]}" "${CAPTION[@]}"
cpu_step "training, decoder stage, CPU" bench train --device cpu --captions "$CPU_CAPTIONS" \
    "${TRAIN[@]}"
cpu_step "training, fine-tuning, CPU" bench train --device cpu --fine-tune \
    --captions "$CPU_CAPTIONS" "${TRAIN[@]}"

say "summary"
if ((${#FAILED[@]})); then
    printf 'failed: %s\n' "${FAILED[@]}" | tee -a "$LOG"
    echo "log: $LOG"
    exit 2
fi
echo "all checks passed; log: $LOG" | tee -a "$LOG"
