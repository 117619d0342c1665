#!/bin/sh
# Regenerate the pictures of docs/graphs.md (docs/img/*.svg).
# Run from the repository root:   sh docs/make_graphs.sh
# Needs Graphviz's `dot`:         apt-get install -y graphviz   (brew/conda install graphviz)
set -e
PY=${PYTHON:-python}
$PY -m tinygrad_cnn.viz models.seed_cnn:SeedCNN --input-shape 1,3,32,32 --out docs/img/seed_cnn.svg
$PY -m tinygrad_cnn.viz models.fc_baseline:FCBaseline --input-shape 1,3,32,32 --out docs/img/fc_baseline.svg
$PY -m tinygrad_cnn.viz models.seed_cnn:SeedCNN --input-shape 1,3,32,32 --grad --randn --out docs/img/seed_cnn_grad.svg
$PY -m tinygrad_cnn.viz models.fast_cnn:FastCNN --input-shape 1,3,32,32 --collapse --out docs/img/fast_cnn_collapsed.svg
