"""The ranking stage after retrieval: the towers' top N candidates reordered by a learned ranker.

The modules, in the order the data moves: ``events`` (the lake's frames as time-sorted arrays), ``state`` (counts
over the past of an instant t), ``retrieval`` (the towers as of t: candidates, scores, engagement head),
``features`` (named pair features of a block of candidate lists), ``candidates`` (retrieval then features for a
block of users), ``examples`` (training examples with the split's temporal discipline), ``ranker`` (LightGBM, both
objectives, save / load), ``scoring`` (retrieval + ranking as a full-catalogue score function, and the per-block
reordering a feed stage wraps). ``benchmarks/quality.py`` (``make eval``) measures it under both protocols.
"""
