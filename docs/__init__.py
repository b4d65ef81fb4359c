"""The submission's documents (the report, GALIP's description) and their build: `python -m docs.make`."""
