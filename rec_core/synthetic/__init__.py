"""The synthetic world, in the order it is built.

vocabulary (words) -> taxonomy (topics) -> params (sizes, scales) -> population (users,
videos, follows; drawn with sampler) -> interactions (exposure, engagement, counts) ->
text and lake_tables (the four lake tables) -> generator (``generate_world``) ->
truth (the planted structure, on disk) -> commit (``generate_data``: into the lake).
"""
