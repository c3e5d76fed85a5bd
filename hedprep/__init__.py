"""hedprep: Cityscapes frames -> pretrained HED edges -> HDF5 shards."""

__version__ = "0.1.0"
