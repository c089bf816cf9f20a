"""Generates synthetic rooms in the ScanNet export layout (`p2p_jax.data.synthetic`).

    python -m datasets.synthetic_rooms.generate --out DIR --scenes N --frames-per-scene F \
        [--height 240] [--width 320] [--seed 0] [--val-fraction 0.2] [--teacher-fraction 0] \
        [--depth-noise 0] [--depth-holes 0] [--points-per-m2 1000] [--workers W] [--overwrite]
"""

from p2p_jax.data.synthetic import main

if __name__ == "__main__":
  main()
