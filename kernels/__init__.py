"""Triton kernels for the recursion step, with torch references and dispatch (the kernels issue fills this in)."""
