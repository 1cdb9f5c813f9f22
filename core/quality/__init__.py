"""Caption quality: scores from stored teacher embeddings, quality-filtered subsets, statistical audits.

Import from the modules (`store`, `subset`, `acceptance`, ...): the package re-exports nothing, so a training run
that reads quality scores (`store`) does not import scipy.stats through the audit planning (`acceptance`),
seconds of every run's start-up.
"""
