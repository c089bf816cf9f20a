"""ScanNet 3D detection boxes as a TFDS dataset: the builder lives in `p2p_jax.data.scannet_boxes`.

    python -m datasets.scannet_boxes.build         export -> array_record
"""
