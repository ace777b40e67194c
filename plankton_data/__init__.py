"""plankton_data: turn published plankton image datasets into WebDataset shards and Parquet manifests.

This package must import without torch: data preparation machines often have no deep learning stack.
"""

__version__ = "0.1.0"
