"""ScanNet scene meshes as a TFDS dataset: the builder lives in `p2p_jax.data.scannet_scenes`.

    python -m datasets.scannet_scenes.build        export -> array_record
"""
