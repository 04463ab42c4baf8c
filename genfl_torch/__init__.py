"""Plain-PyTorch core of the app: model, data sets, partitioning and training loops. No Flower here."""
