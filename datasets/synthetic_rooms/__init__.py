"""Synthetic indoor rooms rendered into the ScanNet export layout; see generate.py and README.md."""
