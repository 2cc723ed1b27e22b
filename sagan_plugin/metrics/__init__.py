"""Offline FID, KID and Inception Score on pytorch-fid's TF-Inception port.

weights.py finds and checks the weights (never downloading), inception.py builds the network,
features.py runs it in batches, scores.py holds the formulas, real_stats.py caches real-image
features, files.py writes outputs atomically. The commands are in sagan_plugin/evaluate.py.
"""
