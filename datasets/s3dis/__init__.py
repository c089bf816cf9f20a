"""S3DIS rooms as a TFDS dataset: the builder lives in `p2p_jax.data.s3dis`.

    python -m datasets.s3dis.build        Stanford3dDataset_v1.2_Aligned_Version -> array_record
"""
