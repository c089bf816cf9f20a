"""`Builder` for TFDS's folder convention: `tfds build datasets/s3dis` finds it here.

The builder is `p2p_jax.data.s3dis.S3dis`; this subclass adds only this folder's README and
CITATIONS.bib, and leaves the registered name `s3dis` to the package's class.
"""

from etils import epath

from p2p_jax.data import s3dis


class Builder(s3dis.S3dis, skip_registration=True):
  """`s3dis`, as TFDS's command line loads it from this folder."""

  pkg_dir_path = epath.Path(__file__).parent  # README.md, CITATIONS.bib
