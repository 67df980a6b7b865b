"""engine-train: the TRM/GRAM training subpackage."""
