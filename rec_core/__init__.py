"""The recommender's library: schemas, lake, data, models, feeds.

Never imports Airflow or Litestar (see docs/architecture.md).
"""
