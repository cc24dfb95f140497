"""Bridges from other libraries to attngen kernels (`attngen.integrations.transformers`).

Each integration imports its library lazily: `import attngen` never needs them installed.
"""
