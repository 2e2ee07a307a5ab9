"""The recommender's library: schemas, lake, data, models, feeds.

Never imports Airflow or Litestar (see docs/architecture.md).
"""

import os

# torch's CPU tensors of 2 MB and more on transparent huge pages (its allocator reads this once, at its first
# allocation; numpy does the same for its large arrays by default). The evaluations and embeddings make fresh
# matrices of a few GB per batch at the large scale, and faulting them in 4 kB pages cost more than the arithmetic:
# a product, a NaN pass and a masked copy of 1,024 x 495,000 scores took 3.1-3.3 s a batch on 4 kB pages and
# 1.0-1.4 s on 2 MB ones (docs/performance.md). An operator's own value, 0 included, stands.
os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")
