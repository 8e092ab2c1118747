"""Differentiable image augmentation used where gradients must flow into the images themselves.

``shared.augment.dsa`` holds DSA, the differentiable *siamese* augmentation of dataset condensation: one
sampled transform applied alike to a real and a synthetic batch (Zhao & Bilen, ICML 2021).
"""
