"""Training: the PPKT pretraining state and its pmapped step."""
