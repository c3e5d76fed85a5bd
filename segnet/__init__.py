"""segnet: DeepLabV3 variants trained and evaluated from hedprep shards."""
