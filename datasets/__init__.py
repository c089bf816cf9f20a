"""Dataset builders (TFDS conventions, one folder each) and offline data preparation."""
