"""The Flower ClientApp: a thin adapter from Messages to torchcore's training code."""
