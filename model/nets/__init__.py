"""Networks: the 3D ResNet encoders (MedicalNet names), the heads that sit on them, and strict weight I/O.

They know nothing of stores, loaders or loops: tensors in, tensors out.
"""
