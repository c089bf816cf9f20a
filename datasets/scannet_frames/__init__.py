"""ScanNet RGB-D frames as a TFDS dataset: the builder lives in `p2p_jax.data.scannet_frames`.

    python -m datasets.scannet_frames.build        export -> array_record
    python -m datasets.scannet_frames.make_pairs   overlapping frame pairs, for PointContrast
"""
