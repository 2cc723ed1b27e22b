"""Offline FID, KID and Inception Score on pytorch-fid's TF-Inception port.

weights.py finds and checks the weights (never downloading), inception.py builds the network,
features.py runs it in batches, scores.py holds the formulas, real_stats.py caches real-image
features, scoring.py scores a generator with them. The commands are in sagan_plugin/evaluate.py;
mimicry.py is Mimicry's `mmc.metrics.evaluate` call on them (`sagan_plugin.metrics.evaluate`),
and scoring.fid_callback the FID curve during training.
"""


def __getattr__(name: str):
    # `metrics.evaluate`, Mimicry's API, imported on first use: it needs the whole evaluator.
    if name == "evaluate":
        from sagan_plugin.metrics.mimicry import evaluate

        return evaluate
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
