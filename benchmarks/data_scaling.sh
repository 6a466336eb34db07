#!/usr/bin/env bash
# The paper's data-size study on MNIST (README, "The paper's experiments"): ViT vs the BiT-style ResNet
# on 1k-60k labelled images, same recipe and the same 120k images seen per run. Resumable: run it again
# after an interruption and finished cells are kept.
set -euo pipefail
python -m vitkit experiment data-scaling --data "${DATA:-mnist:../shared/data/mnist}" \
    --sizes 1000,5000,20000,60000 --models vit_mnist_patch7_28,resnet_bit_mnist \
    --images-seen 120000 --out "${OUT:-benchmarks/results/data_scaling}" --no-progress "$@"
