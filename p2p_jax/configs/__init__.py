"""The config schema of each training stage, with its defaults (ml_collections).

    pretrain   PPKT and PointContrast pretraining (`p2p_jax.train.pretrain`)
    finetune   fine-tuning and linear probing (`p2p_jax.train.finetune`)
    teacher    2D teacher training (`p2p_jax.train.teacher`)

Experiment configs (experiments/configs/) start from these and change values only.
"""
