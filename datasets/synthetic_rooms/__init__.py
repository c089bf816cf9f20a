"""Synthetic indoor rooms in the ScanNet export layout: `generate` is the command line."""
