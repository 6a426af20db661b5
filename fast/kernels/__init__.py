"""Triton kernels for the fast (non-reference) code paths of detspec."""
