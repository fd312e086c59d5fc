"""Evaluation (`python -m superres evaluate`): the benchmark sets and peers, quality and identity scores, speed,
and evaluation.json with the tables written from it (results, evaluation_output).

May import superres.runtime, and of superres.training only the degradation chain and the metrics; never
superres.writeup.
"""
