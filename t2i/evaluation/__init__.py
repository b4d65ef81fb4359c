"""Evaluation on the test split: FID, KID, IS and CLIP score (the standard protocol) and the graders' protocol."""
