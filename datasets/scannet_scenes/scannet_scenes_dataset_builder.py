"""`Builder` for TFDS's folder convention: `tfds build datasets/scannet_scenes` finds it here.

The builder is `p2p_jax.data.scannet_scenes.ScannetScenes`; this subclass adds only this
folder's README and CITATIONS.bib, and leaves the registered name `scannet_scenes` to the
package's class.
"""

from etils import epath

from p2p_jax.data import scannet_scenes


class Builder(scannet_scenes.ScannetScenes, skip_registration=True):
  """`scannet_scenes`, as TFDS's command line loads it from this folder."""

  pkg_dir_path = epath.Path(__file__).parent  # README.md, CITATIONS.bib
