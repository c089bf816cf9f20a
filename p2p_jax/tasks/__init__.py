"""Downstream tasks of the pretrained 3D student, one module each: its data, its model heads
and its evaluator.

    segmentation   3D semantic segmentation of scene point clouds (ScanNet-20, S3DIS)
    detection      3D object detection with VoteNet (the 18 ScanNet benchmark classes)

A new task is one new file here; its training run lives in `p2p_jax.train`.
"""
