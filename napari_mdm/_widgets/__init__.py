"""Dock widgets: the only modules that import Qt or napari."""
