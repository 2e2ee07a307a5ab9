"""The feed's eligibility rules, one small file each; :mod:`rec_core.feed.pipeline` declares their order."""

from rec_core.feed.filters.duplicates import Duplicates
from rec_core.feed.filters.own_videos import OwnVideos
from rec_core.feed.filters.seen import Seen

__all__ = ["Duplicates", "OwnVideos", "Seen"]
