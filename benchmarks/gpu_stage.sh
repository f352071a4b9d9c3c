#!/usr/bin/env bash
# Here, before a GPU sitting: stage the wheels the GPU machine lacks and the recorded speech the benchmarks read.
# ../shared/gpu/stage-wheels downloads them (vLLM, Ray Serve and benchmarks/gpu-requirements.txt); they are re-split
# into 50 MiB parts so that seven calls carry them, the last with .bench-audio beside it (each call's limit: 64 MiB,
# the working tree included). Then, on the device, one call per part without a pause:
#   carry .gpu-stage6/qK:  mkdir -p /root/stage && cp .gpu-stage6/qK/part* /root/stage/              (K = 1 .. N-1)
#   carry .gpu-stage6/qN and .bench-audio:
#     cp .gpu-stage6/qN/part* /root/stage/ && bash .gpu-stage6/qN/install.sh && . benchmarks/gpu_env.sh && <run>
set -euo pipefail
top=$(git rev-parse --show-toplevel)
cd "$top"
for p in /.gpu-stage6/ /.bench-audio/; do  # stage-wheels excludes its own /.gpu-stage/
  grep -qx "$p" .git/info/exclude 2>/dev/null || echo "$p" >>.git/info/exclude
done
../shared/gpu/stage-wheels benchmarks/gpu-requirements.txt
rm -rf .gpu-stage6 && mkdir -p .gpu-stage6
cat .gpu-stage/p*/part* | split -b 50M -d -a 2 - .gpu-stage6/part
n=0
for f in .gpu-stage6/part*; do n=$((n + 1)); mkdir -p .gpu-stage6/q$n; mv "$f" .gpu-stage6/q$n/; done
cp .gpu-stage/install.sh .gpu-stage6/q$n/
rm -rf .gpu-stage .bench-audio && cp -r ../shared/audio .bench-audio && chmod -R u+w .bench-audio
echo "staged in $n calls: .gpu-stage6/q1 .. .gpu-stage6/q$n (install.sh and .bench-audio go with the last)"
