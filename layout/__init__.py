"""Parameter layouts shared by ``reference`` and ``fast``: the modules that hold parameters, written once
(constructors, initialisation, config checks, state_dict keys), with no forward pass. Each implementation
subclasses them and writes only ``forward``; neither imports the other.

- ``mvit.py``  MViT v1 / v2 (torchvision's ``mvit_v1_b`` / ``mvit_v2_s`` keys)
"""
