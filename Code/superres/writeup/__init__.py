"""The write-up (`python -m superres report`): the report's and presentations' tables, figures, samples and the
architecture diagram, from evaluation.json, the model card and the networks.

May import every other subpackage; nothing imports it.
"""
