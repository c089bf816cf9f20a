"""`Builder` for TFDS's folder convention: `tfds build datasets/scannet_frames` finds it here.

The builder is `p2p_jax.data.scannet_frames.ScannetFrames`; this subclass adds only this
folder's README and CITATIONS.bib, and leaves the registered name `scannet_frames` to the
package's class.
"""

from etils import epath

from p2p_jax.data import scannet_frames


class Builder(scannet_frames.ScannetFrames, skip_registration=True):
  """`scannet_frames`, as TFDS's command line loads it from this folder."""

  pkg_dir_path = epath.Path(__file__).parent  # README.md, CITATIONS.bib
