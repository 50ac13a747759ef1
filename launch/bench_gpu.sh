#!/bin/bash
# The GPU figures of the README's speed section, in one prepared script (about 10 minutes on one H100/H200
# after installation): each line of the output file is one benchmark's JSON, preceded by its command.
#
#   pip install -e ".[cuda]" && bash launch/bench_gpu.sh [out.jsonl]
#
# PEAK_FP32 / PEAK_BF16: the chip's dense peak TFLOP/s for the achieved-share column (defaults: H100/H200
# SXM, 494 TF32 and 989 BF16; XLA runs float32 convolutions in TF32 on these chips by default). Each
# command has its own time limit, so one that fails or runs long does not lose the others' figures.
set -u -o pipefail
OUT_FILE=${1:-bench_gpu.jsonl}
PEAK_FP32=${PEAK_FP32:-494}
PEAK_BF16=${PEAK_BF16:-989}
LIMIT=${LIMIT:-240}
RESENC="--config=configs/default.py --config.data.patch_size=(128,128,128) --config.data.batch_size=2"

run() {
  echo "# $*" | tee -a "$OUT_FILE"
  timeout "$LIMIT" "$@" 2>/dev/null | grep '^{' | tee -a "$OUT_FILE" || echo '{"failed": true}' | tee -a "$OUT_FILE"
}

python -c "import jax; print('# devices:', jax.devices())" | tee -a "$OUT_FILE"
# Train step, ResEnc M at 128^3, batch 2: float32 and bfloat16 compute, synthesis off; then float32 with
# patch-mode synthesis on half the batch and off, interleaved in one process (the synthesizer's share of the step).
run python launch/bench_train.py $RESENC --config.synth.enabled=False --steps=10 --peak_tflops="$PEAK_FP32"
run python launch/bench_train.py $RESENC --config.synth.enabled=False --steps=10 --config.model.dtype=bfloat16 \
    --peak_tflops="$PEAK_BF16"
run python launch/bench_train.py $RESENC --compare_synth --steps=10
# Synthesis alone: 96^3 liver patches at 1 mm, a batch of 16 per call (patches/s = 1000 / jax_per_patch_ms).
# Per-sample texture (the default) and the device texture bank (config.synth.texture=bank).
for size in tiny large mix; do
  run python launch/bench_synthesis.py --size=$size --patch=96 --batch=16 --numpy_repeats=0
  run python launch/bench_synthesis.py --size=$size --patch=96 --batch=16 --numpy_repeats=0 --texture=bank
done
# Sliding window over a 512x512x400 volume: 128^3 windows, overlap 0.5, Gaussian, 4 windows per batch.
run python launch/bench_inference.py --config=configs/default.py --volume=512,512,400 \
    --config.data.patch_size="(128,128,128)" --config.eval.window_batch=4 --config.eval.tta_mirror=False
