"""Few-shot segmentation benchmarks of napari-mdm (issue 6); see benchmarks/README.md."""
