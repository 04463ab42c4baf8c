"""Flower aggregation logic for GenFL: sees ArrayRecords and MetricRecords, never PyTorch or diffusers."""
