"""Flax linen networks; one file per network, each `__call__` returns `(output, aux)`.

    resnet      the frozen 2D teacher (torchvision layout) and its ImageNet preprocessing
    convert     torchvision / timm ResNet weights (.pth or .safetensors) -> Flax variables
    projector   PPKT's upsampling feature projection layer (UPL)
    pointnet2   the PointNet++ 3D student and its heads
"""
