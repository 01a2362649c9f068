#!/usr/bin/env bash
# Every real-data experiment and GPU benchmark in one go on a CUDA machine, within a time budget.
#
#   experiments/run_gpu.sh [cifar10-train.tgz]   # BUDGET_S=3600 CIFAR_EPOCHS=10 TRAIN_S=110 by default
#
# 1. the GPU benchmarks (render, attribution, capture, end-to-end analyze() default vs old options)
#    while the GPU is otherwise idle;
# 2. the CIFAR-10 run and the twelve planted-shortcut configurations (checker / cross / square / line
#    trigger x fractions 0.5 / 0.2 / 0.1, layers 2 and 3, a clean model each) as parallel processes
#    on the one GPU, each with a share of the CPU cores;
# 3. the layout benchmark, if enough of the budget is left.
# Writes reports/cifar10/, reports/planted/ and reports/bench/*.txt.
# Choose parts with BENCH=0, ANALYZE=0, CIFAR=0, PLANTED="checker:0.5 line:0.1" (trigger:fraction pairs),
# LAYOUT_ARGS="..." (arguments of bench_layout.py).
set -u
archive=${1:-../shared/data/cifar10-train.tgz}
budget=${BUDGET_S:-3600}
py=${PYTHON:-python3}
start=$SECONDS
left() { echo $((budget - (SECONDS - start))); }
mkdir -p reports/bench reports/planted
"$py" -c "import sys; from debugatlas.data import unpack_cifar10; unpack_cifar10(sys.argv[1])" "$archive" || exit 1

if [ "${BENCH:-1}" = 1 ]; then
    "$py" experiments/bench_render.py --model resnet --cells 100 --steps 64 --device cuda \
        > reports/bench/render_gpu.txt 2>&1
    "$py" experiments/bench_attribution.py --images 512 --repeats 3 --device cuda \
        > reports/bench/attribution_gpu.txt 2>&1
    "$py" experiments/bench_capture.py --device cuda --repeats 7 --images 8000 \
        > reports/bench/capture_gpu.txt 2>&1
fi
if [ "${ANALYZE:-1}" = 1 ]; then  # writes reports/bench/analyze_cifar_cuda.txt
    timeout "$(left)" "$py" experiments/bench_analyze.py --case cifar-cuda --device cuda --images 2000 \
        --archive "$archive" --timeout "${ANALYZE_VARIANT_S:-900}" > reports/bench/analyze_cifar_cuda_stdout.txt 2>&1
fi

export OMP_NUM_THREADS=3 NUMBA_NUM_THREADS=3
limit=$(( $(left) - ${LAYOUT_RESERVE_S:-0} ))
if [ "${CIFAR:-1}" = 1 ]; then
    timeout "$limit" "$py" experiments/cifar10.py --archive "$archive" --epochs "${CIFAR_EPOCHS:-10}" --n-val 2000 \
        > reports/bench/cifar10_stdout.txt 2>&1 &
fi
export OMP_NUM_THREADS=1 NUMBA_NUM_THREADS=1  # thirteen processes share the 16 cores
for config in ${PLANTED-checker:0.5 checker:0.2 checker:0.1 cross:0.5 cross:0.2 cross:0.1 square:0.5 square:0.2 square:0.1 line:0.5 line:0.2 line:0.1}; do
    trigger=${config%%:*} fraction=${config##*:}
    timeout "$limit" "$py" experiments/planted_shortcut.py --archive "$archive" --triggers "$trigger" \
        --fractions "$fraction" --epochs 30 --train-seconds "${TRAIN_S:-110}" \
        > "reports/bench/planted_${trigger}_${fraction}_stdout.txt" 2>&1 &
done
wait
unset OMP_NUM_THREADS NUMBA_NUM_THREADS

if [ "$(left)" -gt "${LAYOUT_NEEDS_S:-120}" ]; then
    timeout "$(left)" "$py" experiments/bench_layout.py ${LAYOUT_ARGS:---n 200000 --dim 512 --pca-dims 64 --device cuda --baseline-jobs -1} \
        > reports/bench/layout_gpu.txt 2>&1
fi
echo "run_gpu.sh: $((SECONDS - start)) s"
