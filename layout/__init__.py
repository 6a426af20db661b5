"""Parameter layouts shared by ``reference`` and ``fast``: the modules that hold parameters, written once
(constructors, initialisation, config checks, state_dict keys), with no forward pass. Each implementation
subclasses them and writes only ``forward``; neither imports the other.

- ``batch_norm.py``  FrozenBatchNorm2d (buffers only; ``num_batches_tracked`` dropped on load)
- ``resnet.py``      ResNet-50 stem, bottleneck blocks and stages, all read from the ResNetConfig given
- ``fpn.py``         FPN P2-P6 (lateral and output convs, the P6 pool) from the FPNConfig given
- ``roi_heads.py``   BoxHead, BoxPredictor and ROIHeads (with the stage's shared control flow)
- ``rcnn.py``        ResNetFPN and the one FasterRCNN meta-architecture, parameterised by its components
- ``mvit.py``        MViT v1 / v2 (torchvision's ``mvit_v1_b`` / ``mvit_v2_s`` keys)
- ``lazy.py``        the lazy attribute loading both implementation packages use

detectron2's checkpoint layout (d2-spec §5.1) is the state_dict of ``layout.rcnn.FasterRCNN``:
``detspec.checkpoints`` builds it on the meta device instead of typing keys.
"""
