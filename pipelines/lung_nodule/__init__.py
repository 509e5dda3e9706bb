"""Lung-nodule AI: 3D UNet detection/segmentation, 3D ResNet malignancy, Grad-CAM. Not for diagnostic use."""
