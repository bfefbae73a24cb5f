#!/usr/bin/env bash
# Builds gaze with candle's CUDA backend and cuDNN (`--features cudnn`) on a machine that has no
# GPU and no CUDA installation, then assembles gpu-bundle/: the stripped binary, the parity
# fixtures and scripts/gpu_check.sh, everything a GPU machine without Rust needs to check and
# measure gaze (run gpu-bundle/gpu_check.sh there).
#
# The CUDA toolkit comes from PyPI wheels (nvcc, headers, cudart, cuBLAS, cuRAND, NVRTC) installed
# into .cuda-toolchain/ (git-ignored), and so does cuDNN (NVIDIA's nvidia-cudnn-cu13 wheel): by
# default the build has gaze's `cudnn` feature, so GPU convolutions run through cuDNN instead of
# candle's im2col kernels. cuDNN's libraries (about 830 MB) do not go into the bundle: the GPU
# machine needs cuDNN 9.21 or newer beside it, as PyTorch's wheels install it (nvidia/cudnn/lib),
# and gpu_check.sh looks for it there. candle links the CUDA libraries at build time (cudarc's
# `dynamic-linking`), including the driver library libcuda.so, which no wheel ships: like the
# toolkit's own link stub, a stand-in with the driver API's symbols is generated here from
# cudarc's bindings; every function in it returns CUDA_ERROR_STUB_LIBRARY. It is for linking
# only and never goes into the bundle: at run time the GPU machine's driver provides libcuda.so.1.
#
# Settings (environment):
#   CUDA_TOOLKIT_VERSION  PyPI `cuda-toolkit` version (default 13.0.2: CUDA 13.0, which the GPU
#                         machines' driver 580 runs; a newer nvcc writes PTX that an older
#                         driver refuses). Only CUDA 13.x wheels are supported (their one-folder
#                         layout, nvidia/cu13).
#   GAZE_CUDNN            1 (default): build `--features cudnn`; 0: `--features cuda` only, with
#                         candle's im2col convolutions and no cuDNN needed at run time.
#   CUDNN_VERSION         PyPI `nvidia-cudnn-cu13` version (default 9.21.1.3; candle's cudarc
#                         binds the cuDNN 9.21 API, so the GPU machine needs cuDNN 9.21 or newer).
#   CUDA_COMPUTE_CAP      GPU architecture for the kernels (default 90: Hopper, H100/H200).
#   CARGO_TARGET_DIR      cargo's target folder (default target/cuda, apart from CPU builds so
#                         that neither overwrites the other's binary; the cuDNN and im2col
#                         builds share it, their binaries are kept in their bundles).
#   JOBS                  parallel rustc and nvcc jobs (default 1; this is a long build: on a
#                         shared machine run it as `JOBS=1 nice scripts/build_cuda.sh`).
#   GAZE_CUDA_TOOLCHAIN   where the toolkit goes (default .cuda-toolchain).
#   GAZE_GPU_BUNDLE       where the bundle goes (default gpu-bundle, or gpu-bundle-im2col).
#   PYTHON                the Python that runs pip (default python3).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CUDA_TOOLKIT_VERSION=${CUDA_TOOLKIT_VERSION:-13.0.2}
CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP:-90}
GAZE_CUDNN=${GAZE_CUDNN:-1}
CUDNN_VERSION=${CUDNN_VERSION:-9.21.1.3}
JOBS=${JOBS:-1}
TOOLCHAIN=${GAZE_CUDA_TOOLCHAIN:-$ROOT/.cuda-toolchain}
PYTHON=${PYTHON:-python3}
BUNDLE_LIMIT_MIB=64

say() { printf '==> %s\n' "$*" >&2; }
die() { printf 'build_cuda.sh: %s\n' "$*" >&2; exit 1; }

# The im2col build has a bundle of its own, so that both can sit side by side. Both share the
# target folder: the second one to build then compiles only cudarc, candle and gaze again.
case $GAZE_CUDNN in
1) FEATURES=cudnn VARIANT= ;;
0) FEATURES=cuda VARIANT=-im2col ;;
*) die "GAZE_CUDNN=$GAZE_CUDNN: expected 1 or 0" ;;
esac
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target/cuda}
BUNDLE=${GAZE_GPU_BUNDLE:-$ROOT/gpu-bundle$VARIANT}
case $CUDA_TOOLKIT_VERSION in
13.*) ;;
*) die "CUDA_TOOLKIT_VERSION=$CUDA_TOOLKIT_VERSION: only CUDA 13.x wheels are supported" ;;
esac
command -v "$PYTHON" >/dev/null || die "$PYTHON not found (needed to install the CUDA wheels)"
command -v cargo >/dev/null || die "cargo not found"
command -v cc >/dev/null || die "a C compiler (cc) is needed for nvcc and the driver stub"

started=$(date +%s)

# 1. The toolkit from PyPI.
SITE=$TOOLCHAIN/site
STAMP=$SITE/.gaze-cuda-toolkit-$CUDA_TOOLKIT_VERSION
if [[ ! -f $STAMP || ! -x $SITE/nvidia/cu13/bin/nvcc ]]; then
    say "installing cuda-toolkit $CUDA_TOOLKIT_VERSION wheels into $SITE"
    rm -rf "$SITE"
    # --target keeps the wheels apart from the Python installation; pip may warn that a
    # system package (torch) wants another cuda-toolkit: that concerns the system, not $SITE.
    "$PYTHON" -m pip install --quiet --disable-pip-version-check --no-compile \
        --target "$SITE" \
        "cuda-toolkit[nvcc,cudart,cublas,curand,nvrtc,crt,nvvm,cccl]==$CUDA_TOOLKIT_VERSION"
    touch "$STAMP"
fi
# cuDNN, a separate wheel (about 500 MB to download), only for the cuDNN build. It goes into a
# folder of its own: pip's --target would replace the toolkit's nvidia/ folder with cuDNN's.
CUDNN_SITE=$TOOLCHAIN/cudnn-site
CUDNN_STAMP=$CUDNN_SITE/.gaze-cudnn-$CUDNN_VERSION
if ((GAZE_CUDNN)) && [[ ! -f $CUDNN_STAMP ]]; then
    say "installing nvidia-cudnn-cu13 $CUDNN_VERSION into $CUDNN_SITE"
    rm -rf "$CUDNN_SITE"
    "$PYTHON" -m pip install --quiet --disable-pip-version-check --no-compile --no-deps \
        --target "$CUDNN_SITE" "nvidia-cudnn-cu13==$CUDNN_VERSION"
    touch "$CUDNN_STAMP"
fi
CU=$SITE/nvidia/cu13
[[ -x $CU/bin/nvcc ]] || die "$CU/bin/nvcc missing after installing the wheels"
NVCC_VERSION=$("$CU/bin/nvcc" --version | sed -n 's/.*release \([0-9.]*\),.*/\1/p')
say "nvcc $NVCC_VERSION from $CU"

# 2. A CUDA_HOME for the linker: unversioned names for the wheels' libraries, and the driver stub.
HOME_DIR=$TOOLCHAIN/cuda-home
mkdir -p "$HOME_DIR/lib/stubs"
for lib in cudart cublas cublasLt curand nvrtc; do
    real=$(cd "$CU/lib" && ls "lib$lib.so."* 2>/dev/null | grep -E "^lib$lib\.so\.[0-9]+$" | head -n1 || true)
    [[ -n $real ]] || die "lib$lib.so.N not found in $CU/lib"
    ln -sfn "$CU/lib/$real" "$HOME_DIR/lib/lib$lib.so"
done
if ((GAZE_CUDNN)); then
    # cudarc links libcudnn.so, the small front library; it loads cuDNN's engine libraries
    # (libcudnn_engines_*.so.9, the bulk) from its own folder at run time.
    CUDNN_LIB=$CUDNN_SITE/nvidia/cudnn/lib
    [[ -e $CUDNN_LIB/libcudnn.so.9 ]] || die "libcudnn.so.9 missing from $CUDNN_LIB"
    ln -sfn "$CUDNN_LIB/libcudnn.so.9" "$HOME_DIR/lib/libcudnn.so"
else
    rm -f "$HOME_DIR/lib/libcudnn.so"
fi
ln -sfn "$CU/include" "$HOME_DIR/include"
ln -sfn "$CU/bin" "$HOME_DIR/bin"

CUDARC_SRC=$(cd "$ROOT" && cargo metadata --format-version 1 --features "$FEATURES" 2>/dev/null |
    "$PYTHON" -c 'import json, sys, os
meta = json.load(sys.stdin)
paths = [p["manifest_path"] for p in meta["packages"] if p["name"] == "cudarc"]
print(os.path.dirname(paths[0]) if paths else "")')
[[ -n $CUDARC_SRC && -f $CUDARC_SRC/src/driver/sys/mod.rs ]] ||
    die "cudarc's sources not found (run cargo fetch first)"
STUB=$HOME_DIR/lib/stubs/libcuda.so
if [[ ! -f $STUB || $CUDARC_SRC/src/driver/sys/mod.rs -nt $STUB ]]; then
    say "generating the link-time driver stub from $CUDARC_SRC"
    "$PYTHON" - "$CUDARC_SRC/src/driver/sys/mod.rs" "$HOME_DIR/lib/stubs/libcuda_stub.c" <<'EOF'
import re, sys
names = sorted(set(re.findall(r"^pub unsafe fn (cu[A-Za-z0-9_]+)\(", open(sys.argv[1]).read(), re.M)))
if len(names) < 100:
    sys.exit(f"only {len(names)} driver functions found in {sys.argv[1]}")
with open(sys.argv[2], "w") as out:
    out.write("/* Link-time stand-in for libcuda.so.1, generated by scripts/build_cuda.sh. */\n")
    out.write("#define CUDA_ERROR_STUB_LIBRARY 34\n")
    for n in names:
        out.write(f"int {n}(void) {{ return CUDA_ERROR_STUB_LIBRARY; }}\n")
EOF
    cc -shared -fPIC -O1 -Wl,-soname,libcuda.so.1 -o "$STUB" "$HOME_DIR/lib/stubs/libcuda_stub.c"
fi

# 3. candle-kernels without its statically compiled GGUF/MoE kernels. Those 15 sources (quantised
# matrix products for GGUF models and mixture-of-experts layers) take about 25 minutes each to
# compile for sm_90 on two cores; gaze calls none of them (it uses no quantised weights and no
# MoE layers). A copy of candle-kernels, patched in with `--config patch...` so that the
# project's Cargo.toml stays as it is, links a stand-in library instead: each of its functions
# prints which kernel is missing and aborts. The PTX kernels gaze does use (affine, binary, cast,
# conv, fill, indexing, reduce, sort, ternary, unary, and quantized.cu's PTX) are built exactly
# as candle ships them.
KERNELS_SRC=$(cd "$ROOT" && cargo metadata --format-version 1 --features "$FEATURES" 2>/dev/null |
    "$PYTHON" -c 'import json, sys, os
meta = json.load(sys.stdin)
pkgs = [p for p in meta["packages"] if p["name"] == "candle-kernels"]
print(os.path.dirname(pkgs[0]["manifest_path"]) + " " + pkgs[0]["version"] if pkgs else "")')
read -r KERNELS_DIR KERNELS_VERSION <<<"$KERNELS_SRC" || true
[[ -n ${KERNELS_DIR:-} && -f $KERNELS_DIR/src/ffi.rs ]] ||
    die "candle-kernels' sources not found (run cargo fetch first)"
PATCHED=$TOOLCHAIN/candle-kernels-$KERNELS_VERSION-without-gguf-moe
if [[ ! -f $PATCHED/.gaze-patched || $KERNELS_DIR/build.rs -nt $PATCHED/.gaze-patched ]]; then
    say "patching candle-kernels $KERNELS_VERSION: GGUF/MoE kernels replaced by an aborting stand-in"
    rm -rf "$PATCHED"
    cp -r "$KERNELS_DIR" "$PATCHED"
    chmod -R u+w "$PATCHED"
    "$PYTHON" - "$PATCHED" <<'PATCH'
import re, sys, pathlib
root = pathlib.Path(sys.argv[1])
names = sorted(set(re.findall(r"pub fn ([A-Za-z0-9_]+)\(", (root / "src/ffi.rs").read_text())))
if len(names) < 10:
    sys.exit(f"only {len(names)} functions found in candle-kernels' src/ffi.rs")
stub = ["/* Stand-in for candle's GGUF/MoE CUDA kernels, written by scripts/build_cuda.sh. */",
        "#include <stdio.h>", "#include <stdlib.h>",
        "static void missing(const char *name) {",
        '    fprintf(stderr, "gaze: the CUDA kernel %s (GGUF/MoE) is not in this build\\n", name);',
        "    abort();", "}"]
stub += [f'void {n}(void) {{ missing("{n}"); }}' for n in names]
(root / "gguf_moe_stub.c").write_text("\n".join(stub) + "\n")
build = (root / "build.rs").read_text()
call = 'moe_builder.build_lib(out_dir.join("libmoe.a"))?;'
if call not in build:
    sys.exit("candle-kernels' build.rs has changed: cannot find where it builds libmoe.a")
build = build.replace(call, """let _ = moe_builder;
    let stub = env::var("GAZE_GGUF_MOE_STUB").expect("GAZE_GGUF_MOE_STUB (set by build_cuda.sh)");
    std::fs::copy(&stub, out_dir.join("libmoe.a")).expect("copy the GGUF/MoE stand-in library");""")
(root / "build.rs").write_text(build)
PATCH
    cc -c -fPIC -O1 -o "$PATCHED/gguf_moe_stub.o" "$PATCHED/gguf_moe_stub.c"
    ar rcs "$PATCHED/libgguf_moe_stub.a" "$PATCHED/gguf_moe_stub.o"
    touch "$PATCHED/.gaze-patched"
fi
export GAZE_GGUF_MOE_STUB=$PATCHED/libgguf_moe_stub.a

# 4. The build.
export PATH=$CU/bin:$PATH
export CUDA_HOME=$HOME_DIR CUDA_ROOT=$HOME_DIR CUDA_PATH=$HOME_DIR
export CUDA_COMPUTE_CAP CUDAFORGE_THREADS=$JOBS
export CARGO_TARGET_DIR=$TARGET_DIR
say "cargo build --release --features $FEATURES (compute capability $CUDA_COMPUTE_CAP, $JOBS job(s), target $TARGET_DIR)"
build_started=$(date +%s)
# The patch would be written into Cargo.lock: put the project's lock file back afterwards.
cp "$ROOT/Cargo.lock" "$TOOLCHAIN/Cargo.lock.saved"
trap 'cp "$TOOLCHAIN/Cargo.lock.saved" "$ROOT/Cargo.lock"' EXIT
(cd "$ROOT" && cargo build --release --features "$FEATURES" -j "$JOBS" \
    --config "patch.crates-io.candle-kernels.path=\"$PATCHED\"")
build_seconds=$(($(date +%s) - build_started))
BIN=$TARGET_DIR/release/gaze

# 5. The bundle.
say "assembling $BUNDLE"
rm -rf "$BUNDLE"
mkdir -p "$BUNDLE/fixtures/parity" "$BUNDLE/fixtures/efficientnet"
strip -o "$BUNDLE/gaze" "$BIN"
cp "$ROOT/scripts/gpu_check.sh" "$BUNDLE/"
for f in weights.safetensors WORDMAP_parity.json expected.safetensors expected.json \
    bottleneck_encoder.safetensors; do
    cp "$ROOT/tests/fixtures/parity/$f" "$BUNDLE/fixtures/parity/"
done
cp "$ROOT/tests/fixtures/efficientnet/expected.safetensors" "$BUNDLE/fixtures/efficientnet/"
{
    echo "gaze $(cd "$ROOT" && git describe --always --dirty 2>/dev/null || echo unknown) built with --features $FEATURES"
    echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "cuda-toolkit (PyPI): $CUDA_TOOLKIT_VERSION; nvcc $NVCC_VERSION"
    "$PYTHON" -m pip list --path "$SITE" --format freeze 2>/dev/null | grep -E '^nvidia-|^cuda-' | sed 's/^/  /'
    if ((GAZE_CUDNN)); then
        echo "convolutions: cuDNN (nvidia-cudnn-cu13 $CUDNN_VERSION at build time; needs cuDNN 9.21 or newer at run time, not bundled)"
    else
        echo "convolutions: candle's im2col kernels (built without cuDNN)"
    fi
    echo "compute capability: $CUDA_COMPUTE_CAP"
    echo "rustc: $(rustc --version)"
    echo "cargo build: ${build_seconds}s with $JOBS job(s) on $(nproc) core(s)"
    echo "needs at run time:"
    readelf -d "$BUNDLE/gaze" | sed -n 's/.*Shared library: \[\(.*\)\]/  \1/p'
} >"$BUNDLE/BUILD-INFO.txt"
size_kib=$(du -sk "$BUNDLE" | cut -f1)
total_seconds=$(($(date +%s) - started))
cat "$BUNDLE/BUILD-INFO.txt" >&2
say "binary $(du -h "$BIN" | cut -f1) unstripped, $(du -h "$BUNDLE/gaze" | cut -f1) stripped; bundle $((size_kib / 1024)) MiB; ${total_seconds}s in all"
((size_kib < BUNDLE_LIMIT_MIB * 1024)) || die "the bundle is over $BUNDLE_LIMIT_MIB MiB"
