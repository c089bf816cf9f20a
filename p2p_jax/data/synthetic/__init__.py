"""Procedural indoor rooms rendered into the ScanNet export layout (the project's own data).

    furniture    class ids and furniture built from trimesh primitives
    layout       floor polygons, walls, and furniture placed by rejection sampling
    appearance   per-instance colours and procedural solid textures
    render       room meshes, camera paths, ray-cast frames, surface samples
    writer       scenes written as a ScanNet export; `generate`, `generate_if_asked` (its
                 marker, `MARKER`, tells a finished generation from a killed one), and the
                 command line

The command line is `python -m datasets.synthetic_rooms.generate` (see `writer`).
"""

from p2p_jax.data.synthetic.furniture import CEILING, FLOOR, LABEL_MAP, ROOM_TYPES
from p2p_jax.data.synthetic.render import (
    CAMERA_CLEARANCE,
    GRID,
    Room,
    build_room,
    camera_trajectory,
    intrinsics_for,
    render,
    sample_surface,
)
from p2p_jax.data.synthetic.writer import (
    AGGREGATION_SUFFIX,
    FRAME_STEP,
    MARKER,
    SEGS_SUFFIX,
    generate,
    generate_if_asked,
    main,
    read_marker,
    scene_name,
    scene_room,
)

__all__ = [
    "AGGREGATION_SUFFIX", "CAMERA_CLEARANCE", "CEILING", "FLOOR", "FRAME_STEP", "GRID",
    "LABEL_MAP", "MARKER", "ROOM_TYPES", "SEGS_SUFFIX", "Room", "build_room",
    "camera_trajectory", "generate", "generate_if_asked", "intrinsics_for", "main",
    "read_marker", "render", "sample_surface", "scene_name", "scene_room",
]
