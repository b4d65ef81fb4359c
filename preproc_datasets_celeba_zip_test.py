"""Preprocess the test split: raw multimodal_celeba_hq.zip -> zip of 256 px PNGs with CLIP embeddings.

python preproc_datasets_celeba_zip_test.py --source=./multimodal_celeba_hq.zip --dest test_data.zip --emb_dim 512 \
    --transform=center-crop --width=256 --height=256
"""
import sys

from preprocess import main

if __name__ == "__main__":
    main(sys.argv[1:], split="test")
