"""Offline data for btembed's development: the unlabeled training pool, the labeled dev set and its evaluation.

Built from allowed Debian packages and the pictures bundled in PyPI wheels, without network beyond `apt-get`:
`python -m devdata.pool OUT` (training images), `python -m devdata.devset DEV` (labeled class folders),
`python -m devdata.evaluate MODEL --dev DEV` (probe accuracy vs random init and raw pixels).
Training only reads the folder `devdata.pool` writes; it never imports this package.
"""
