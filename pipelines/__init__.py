"""pipelines: orchestrations that combine hedprep and segnet."""
