"""Data: the on-disk layouts, preparation, and the input pipelines (numpy in, numpy out).

    prepare          everything written before a run (datasets, the teacher's export)
    scannet          the ScanNet export layout: read and write frames, intrinsics, meshes
    export           the scenes of each split of an export, and the tally of skipped files
    scannet_frames   RGB-D frames as a TFDS dataset (array_record, read without TensorFlow)
    scannet_scenes   scene point clouds with ScanNet-20 labels as a TFDS dataset
    scannet_boxes    scene point clouds with instances and the boxes of the 18 detection
                     classes (after the scene's axis alignment) as a TFDS dataset
    s3dis            S3DIS rooms with their 13 classes as a TFDS dataset, one split per area
    labels           NYU40 ids and the 20 ScanNet benchmark classes
    frames           what both pretraining pipelines share: frame fields, depth range, colour
                     lookup, the Grain dataset
    pipeline         frames -> fixed-shape pixel-point batches (PPKT)
    frame_pairs      overlapping frame pairs and their matches (PointContrast)
    teacher_cache    the frozen teacher's features of fixed views, stored once
    teacher_frames   the 2D teacher's scenes and frames
    synthetic        procedural rooms in the ScanNet export layout (and the S3DIS layout)
"""
