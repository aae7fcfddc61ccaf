"""Datasets in and out of the formats users have: COCO and folders of PNG label maps.

``export``: a dataset's labels (or a prediction run's results) as a zip of its images plus
COCO JSON or PNG label maps with ``classes.json``, written to a temporary file so memory
stays bounded whatever the dataset's size. ``coco``: label maps <-> COCO annotations.
"""

from vplab.dataio.export import EXPORT_FORMATS, ExportSource, export_dataset, parse_source

__all__ = ["EXPORT_FORMATS", "ExportSource", "export_dataset", "parse_source"]
