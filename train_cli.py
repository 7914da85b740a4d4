#!/usr/bin/env python
"""The original training command line (its flags); training itself comes in deep_speaker.training."""

import argparse
import sys

parser = argparse.ArgumentParser(description="Deep Speaker training (original command line).")
for flag in ("--loss_on_softmax", "--loss_on_embeddings", "--normalize_embeddings", "--freeze_embedding_weights"):
    parser.add_argument(flag, action="store_true")
parser.add_argument("--data_filename", help="training inputs, e.g. $CACHE_DIR/full_inputs.pkl (reads the .npz)")

if __name__ == "__main__":
    parser.parse_args()
    sys.exit("train_cli.py: training is not available yet (it comes in deep_speaker.training)")
