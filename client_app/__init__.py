"""The Flower ClientApp: a thin adapter from Messages to genfl_torch's training code."""
