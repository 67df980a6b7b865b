"""Datasets in the official TRM layout: building them (`engine-data`) and reading them back."""


class DatasetError(ValueError):
    """Malformed dataset input or layout. The message names the file, and the task or example, at fault."""
