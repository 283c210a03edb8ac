"""Serving a bundle behind Triton Inference Server: model repositories, a PyTriton server, a load generator."""
