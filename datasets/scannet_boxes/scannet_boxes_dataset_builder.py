"""`Builder` for TFDS's folder convention: `tfds build datasets/scannet_boxes` finds it here.

The builder is `p2p_jax.data.scannet_boxes.ScannetBoxes`; this subclass adds only this
folder's README and CITATIONS.bib, and leaves the registered name `scannet_boxes` to the
package's class.
"""

from etils import epath

from p2p_jax.data import scannet_boxes


class Builder(scannet_boxes.ScannetBoxes, skip_registration=True):
  """`scannet_boxes`, as TFDS's command line loads it from this folder."""

  pkg_dir_path = epath.Path(__file__).parent  # README.md, CITATIONS.bib
