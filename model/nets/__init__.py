"""Networks: the encoder registry (:mod:`model.nets.encoders`) with its families (the 3D ResNets under MedicalNet's
names, nnU-Net's residual encoder), the heads that sit on them, and strict weight I/O.

They know nothing of stores, loaders or loops: tensors in, tensors out.
"""
