"""Few-shot segmentation with masked-diffusion features, for napari, Python and the command line.

The core modules never import Qt or napari, and import torch only where they compute:
``import napari_mdm`` stays cheap so napari starts fast with the plugin installed.
"""

__version__ = "0.1.0"
