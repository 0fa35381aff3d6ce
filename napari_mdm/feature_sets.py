"""The feature sets a user picks from, kept free of torch so the widgets import it at startup."""

FEATURE_SETS = {
    "diffusion+filters": {"diffusion": True, "filters": True},
    "diffusion": {"diffusion": True, "filters": False},
    "filters": {"diffusion": False, "filters": True},
}
"""The feature sets a user picks from (CLI ``--features``, the plugin's "features"), as
:class:`~napari_mdm.features.FeatureConfig` settings."""

DEFAULT_FEATURE_SET = "diffusion+filters"
