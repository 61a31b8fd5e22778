"""dataassess: rank training-data mixtures by merging unit models (Na et al. 2024, arXiv 2410.15661).

Importing it sets nothing: no files, no environment, no torch or logging settings.
"""

__version__ = "0.1.0"
