"""Data: the preprocessing of the raw dataset, the preprocessed zip as a Dataset, and training batches."""
