"""Training: one shared layer and the three stages built on it.

    loop         restore or start, step, non-finite check, metrics (JSONL, TensorBoard, tqdm),
                 Orbax checkpoints, SIGTERM: every stage's loop
    state        TrainState, and the optimisers with their schedule (OptimizerConfig)
    parallel     the pmap axis and replication over devices
    contrastive  the shared end of the contrastive steps (loss share, pmean, update, metrics)
    config       config schema checks
    pretrain     PPKT / PointContrast pretraining (`p2p_jax.methods`)
    finetune     3D semantic segmentation: fine-tuning and linear probing
    detection    3D object detection: VoteNet on the student, mAP at IoU 0.25 and 0.5
    teacher      the 2D teacher
"""
