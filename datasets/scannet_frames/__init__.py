"""ScanNet RGB-D frames as a TFDS dataset; importing this registers the builder.

    build_frames(manual_dir, data_dir, config)   export -> array_record (or the `build` CLI)
    load_frames(data_dir, split, config)         random-access numpy examples, no TensorFlow
"""

from datasets.scannet_frames.scannet_frames_dataset_builder import (
    ScannetFrames,
    ScannetFramesConfig,
    build_frames,
    load_frames,
)

__all__ = ["ScannetFrames", "ScannetFramesConfig", "build_frames", "load_frames"]
