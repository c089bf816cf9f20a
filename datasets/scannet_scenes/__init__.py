"""ScanNet scene meshes with ScanNet-20 labels as a TFDS dataset; importing this registers it.

    build_scenes(manual_dir, data_dir)   export -> array_record (or the `build` CLI)
    load_scenes(data_dir, split)         random-access numpy examples, no TensorFlow
"""

from datasets.scannet_scenes.scannet_scenes_dataset_builder import (
    ScannetScenes,
    build_scenes,
    load_scenes,
)

__all__ = ["ScannetScenes", "build_scenes", "load_scenes"]
