"""The synthetic world: a small short-video platform with structure a model can learn.

Nothing here is uniform noise. The generator plants a ground truth and derives
every table from it:

* a taxonomy of topics and sub-topics with a real-word vocabulary, so captions
  and hashtags of one sub-topic sit near each other for a text encoder;
* a latent space: every sub-topic has a unit vector (siblings in one topic are
  close), every video is its sub-topic's vector plus noise, every user is the
  mixture of 2-4 interest sub-topics (Dirichlet weights) plus noise. The planted
  user-video *affinity* is the cosine of the two vectors;
* creators are users who post mostly (about 80%) in their one or two home
  sub-topics, which are their own first interests;
* popularity is heavy-tailed (Pareto creator popularity times log-normal video
  quality) and user activity is log-normal;
* exposure favours a user's interests (plus followed creators and a share of
  popularity-driven exploration); engagement (completion, like, share, comment)
  rises with affinity and quality;
* time: eight weeks of interactions; a video is only watched after it was posted,
  mostly soon after, so late videos have few interactions, and a few percent of
  videos are posted after the last interaction (cold items).

:func:`generate_world` returns the four lake tables plus a :class:`Truth`;
:func:`write_truth` / :func:`load_truth` keep that truth beside the lake so tests
can check that a trained model recovers it. Everything is vectorised numpy and a
pure function of ``(WorldParams, seed)``: the same seed gives byte-identical tables.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from rec_core.atomic import fsync_dir
from rec_core.data.tables import TS
from rec_core.progress import Progress

log = logging.getLogger(__name__)

MS_PER_DAY = 86_400_000
MAX_INTERESTS = 4
MAX_HOMES = 2
OVERSAMPLE = 1.4  # exposures drawn per wanted interaction, to make up for dropped repeats

# --------------------------------------------------------------------------------------------------------------------
# Taxonomy
# --------------------------------------------------------------------------------------------------------------------

# topic -> (topic words, topic hashtags, {subtopic: (words, hashtags)}), comma separated. Words are real English
# (or well-known names) so that a sentence encoder places captions of one sub-topic together.
_VOCAB: dict[str, tuple[str, str, dict[str, tuple[str, str]]]] = {
    "cooking": (
        "recipe, kitchen, dinner, homemade, delicious, chef, cooking, food",
        "cooking, foodtok",
        {
            "baking": (
                "sourdough, bread, croissant, cake, cookies, frosting, oven, flour, butter, dough, pastry, "
                "cinnamon rolls, brownies, muffins",
                "baking, sourdough, cakedecorating, pastry",
            ),
            "streetfood": (
                "tacos, ramen, dumplings, noodles, skewers, food truck, night market, spicy, burrito, kebab, "
                "pad thai, bao buns, fried chicken",
                "streetfood, foodie, ramen, tacos",
            ),
            "mealprep": (
                "meal prep, salad, quinoa, chicken breast, protein bowl, avocado, vegetables, smoothie, oats, "
                "lentils, lunch box, macros, tofu",
                "mealprep, healthyeating, highprotein, vegan",
            ),
            "bbq": (
                "barbecue, brisket, grill, smoker, ribs, steak, charcoal, burgers, pulled pork, marinade, sausages, "
                "wood fire",
                "bbq, grilling, brisket, steak",
            ),
        },
    ),
    "fitness": (
        "workout, gym, fitness, training, strength, sweat, exercise, gains",
        "fitness, gymtok",
        {
            "yoga": (
                "yoga, stretching, flexibility, meditation, breathing, yoga mat, downward dog, mindfulness, balance, "
                "pilates, vinyasa flow, calm",
                "yoga, stretching, mindfulness, pilates",
            ),
            "weightlifting": (
                "deadlift, squat, bench press, barbell, dumbbells, personal record, powerlifting, bulking, "
                "protein shake, muscle, hypertrophy, heavy reps",
                "powerlifting, deadlift, bodybuilding, gymmotivation",
            ),
            "running": (
                "running, marathon, sprint, trail run, pace, sneakers, half marathon, 5k, cardio, endurance, "
                "race day, treadmill",
                "running, marathon, runner, cardio",
            ),
            "calisthenics": (
                "pull ups, push ups, handstand, muscle up, home workout, plank, core, abs, bodyweight, "
                "resistance bands, burpees",
                "calisthenics, homeworkout, abs, pullups",
            ),
        },
    ),
    "gaming": (
        "gaming, gamer, controller, console, level, boss fight, gameplay, stream",
        "gaming, gamer",
        {
            "speedrun": (
                "speedrun, world record, glitch, any percent, splits, skip, frame perfect, mario, zelda, timer, "
                "route, sequence break",
                "speedrun, worldrecord, glitch, speedrunning",
            ),
            "minecraft": (
                "minecraft, survival, redstone, creeper, diamonds, build, village, castle, mods, server, blocks, "
                "nether",
                "minecraft, minecraftbuilds, redstone, survival",
            ),
            "esports": (
                "esports, tournament, clutch, headshot, valorant, league of legends, ranked, aim, team fight, fps, "
                "competitive, pro player",
                "esports, valorant, clutch, fps",
            ),
            "retro": (
                "retro games, arcade, nintendo, cartridge, pixel art, sega, handheld, emulator, nostalgia, 8-bit, "
                "game boy, collection",
                "retrogaming, nintendo, arcade, pixelart",
            ),
        },
    ),
    "pets": (
        "pets, cute, animals, adorable, furry, rescue, vet, pet owner",
        "pets, petsoftiktok",
        {
            "cats": (
                "cat, kitten, meow, purring, litter box, catnip, whiskers, cat tree, tabby, zoomies, scratching post, "
                "cat food",
                "cats, catsoftiktok, kitten, catlover",
            ),
            "dogs": (
                "dog, puppy, golden retriever, leash, fetch, dog park, treats, bark, corgi, tricks, walkies, tail wag",
                "dogs, puppy, dogsoftiktok, goldenretriever",
            ),
            "birds": (
                "parrot, budgie, cockatiel, feathers, talking bird, perch, seeds, chirping, birdcage, macaw, flock, "
                "wings",
                "birds, parrot, budgie, birdlover",
            ),
            "aquarium": (
                "aquarium, fish tank, goldfish, betta, coral reef, shrimp, aquascape, water plants, filter, guppies, "
                "clownfish, algae",
                "aquarium, fishtank, aquascape, betta",
            ),
        },
    ),
    "travel": (
        "travel, trip, vacation, adventure, explore, destination, passport, journey",
        "travel, wanderlust",
        {
            "hiking": (
                "hiking, mountain, trail, summit, backpack, waterfall, camping, forest, national park, tent, sunrise, "
                "alpine lake",
                "hiking, camping, mountains, outdoors",
            ),
            "beaches": (
                "beach, island, ocean, sunset, snorkeling, palm trees, resort, sand, turquoise water, lagoon, boat, "
                "paradise",
                "beach, islandlife, ocean, summer",
            ),
            "citytrips": (
                "city break, museum, cafe, old town, skyline, metro, street art, rooftop, cathedral, walking tour, "
                "paris, tokyo",
                "citytrip, paris, tokyo, streetphotography",
            ),
            "vanlife": (
                "van life, campervan, road trip, van build, off grid, solar panel, highway, desert, campsite, nomad, "
                "converted van",
                "vanlife, roadtrip, campervan, offgrid",
            ),
        },
    ),
    "music": (
        "music, song, musician, cover, live, melody, tune, playlist",
        "music, musician",
        {
            "guitar": (
                "guitar, acoustic, electric guitar, riff, fingerstyle, chords, strumming, guitar solo, amp, pedal, "
                "fretboard, capo",
                "guitar, guitarist, acoustic, guitarcover",
            ),
            "piano": (
                "piano, keys, sheet music, classical, chopin, grand piano, sonata, pianist, arpeggio, beethoven, "
                "nocturne, scales",
                "piano, pianist, classicalmusic, pianocover",
            ),
            "singing": (
                "singing, vocals, high notes, harmony, acapella, karaoke, vocal coach, choir, falsetto, ballad, "
                "voice, duet",
                "singing, vocals, singer, acapella",
            ),
            "beats": (
                "beat making, producer, hip hop, 808, drum kit, sampling, studio, mixing, synth, trap beat, lofi, "
                "bassline",
                "producer, beatmaker, hiphop, lofi",
            ),
        },
    ),
    "dance": (
        "dance, choreography, moves, dancer, routine, dance challenge, stage, rhythm",
        "dance, dancechallenge",
        {
            "streetdance": (
                "hip hop dance, breakdance, freestyle, popping, locking, krump, dance crew, dance battle, b-boy, "
                "street dance, cypher, grooves",
                "hiphopdance, breakdance, freestyle, streetdance",
            ),
            "ballet": (
                "ballet, pointe shoes, ballerina, pirouette, plie, barre, tutu, grace, arabesque, recital, swan lake, "
                "leotard",
                "ballet, ballerina, pointe, balletdancer",
            ),
            "kpop": (
                "kpop, idol, dance cover, bts, blackpink, fancam, comeback, mirrored, lightstick, chorus, "
                "group formation",
                "kpop, kpopdance, dancecover, bts",
            ),
            "latin": (
                "salsa, bachata, latin dance, dance partner, spins, tango, merengue, social dance, cuban, footwork, "
                "lead and follow, dance floor",
                "salsa, bachata, latindance, tango",
            ),
        },
    ),
    "beauty": (
        "beauty, glow, look, style, aesthetic, tutorial, products, routine",
        "beauty, beautytok",
        {
            "makeup": (
                "makeup, eyeliner, foundation, lipstick, contour, eyeshadow, mascara, blush, concealer, "
                "makeup brushes, glam, highlighter",
                "makeup, makeuptutorial, eyeliner, glam",
            ),
            "skincare": (
                "skincare, serum, moisturizer, sunscreen, acne, retinol, cleanser, glowing skin, face mask, "
                "hyaluronic acid, toner, pores",
                "skincare, skincareroutine, glowingskin, acne",
            ),
            "fashion": (
                "outfit, streetwear, thrift haul, vintage, denim, hoodie, leather jacket, lookbook, accessories, "
                "capsule wardrobe, designer bag, fit check",
                "ootd, fashion, streetwear, thrifting",
            ),
            "nails": (
                "nails, nail art, manicure, gel polish, acrylics, chrome nails, french tips, cuticles, nail salon, "
                "press ons, glitter, pastel",
                "nails, nailart, manicure, gelnails",
            ),
        },
    ),
    "tech": (
        "tech, technology, review, setup, device, specs, upgrade, features",
        "tech, techtok",
        {
            "smartphones": (
                "smartphone, iphone, android, camera test, battery life, screen, foldable, fast charger, unboxing, "
                "pixel phone, phone case, 5g",
                "iphone, android, smartphone, unboxing",
            ),
            "pcbuild": (
                "pc build, graphics card, gpu, cpu, motherboard, rgb, water cooling, gaming pc, desk setup, "
                "mechanical keyboard, monitor, cable management",
                "pcbuild, gamingpc, desksetup, rgb",
            ),
            "coding": (
                "coding, python, javascript, programmer, software, debugging, algorithm, terminal, web app, "
                "developer, code review, open source",
                "coding, programming, python, developer",
            ),
            "gadgets": (
                "gadgets, smart home, drone, robot vacuum, smartwatch, earbuds, vr headset, 3d printer, kickstarter, "
                "tech gift, projector, wireless charger",
                "gadgets, smarthome, drone, 3dprinting",
            ),
        },
    ),
    "diy": (
        "diy, project, handmade, home, tools, build, makeover, maker",
        "diy, homeproject",
        {
            "woodworking": (
                "woodworking, table saw, oak, carpentry, workbench, chisel, plywood, sanding, walnut, joinery, "
                "cutting board, epoxy",
                "woodworking, woodwork, carpentry, maker",
            ),
            "gardening": (
                "gardening, tomatoes, seedlings, compost, houseplants, raised bed, harvest, succulents, soil, "
                "pruning, greenhouse, flowers",
                "gardening, plants, houseplants, growyourown",
            ),
            "interior": (
                "interior design, living room, decor, paint, wallpaper, renovation, bedroom makeover, cozy, "
                "minimalist, shelves, lighting, rug",
                "interiordesign, homedecor, renovation, roommakeover",
            ),
            "crafts": (
                "knitting, crochet, yarn, embroidery, sewing, quilting, pottery, clay, candle making, scrapbook, "
                "beads, watercolor",
                "crochet, knitting, pottery, crafts",
            ),
        },
    ),
    "science": (
        "science, learn, facts, education, explained, curious, research, teacher",
        "science, learnontiktok",
        {
            "space": (
                "space, planets, black hole, nasa, galaxy, telescope, rocket launch, mars, astronaut, stars, moon, "
                "nebula",
                "space, astronomy, nasa, universe",
            ),
            "chemistry": (
                "chemistry, experiment, chemical reaction, molecules, lab, elements, periodic table, acid, crystals, "
                "explosion, beaker, liquid nitrogen",
                "chemistry, experiment, sciencelab, stem",
            ),
            "history": (
                "history, ancient rome, medieval, empire, pyramids, world war, archaeology, kings, castles, egypt, "
                "vikings, historical facts",
                "history, historytok, ancientrome, archaeology",
            ),
            "languages": (
                "language learning, spanish, japanese, vocabulary, grammar, pronunciation, french, fluent, "
                "flashcards, accent, polyglot, duolingo",
                "languagelearning, spanish, japanese, polyglot",
            ),
        },
    ),
    "sports": (
        "sports, athlete, match, game day, team, score, season, championship",
        "sports, athlete",
        {
            "soccer": (
                "soccer, football, goal, free kick, striker, penalty, dribbling, world cup, stadium, messi, ronaldo, "
                "goalkeeper",
                "soccer, football, goals, worldcup",
            ),
            "basketball": (
                "basketball, dunk, three pointer, nba, crossover, hoops, court, buzzer beater, layup, rebound, "
                "jersey, streetball",
                "basketball, nba, hoops, dunk",
            ),
            "skateboarding": (
                "skateboarding, kickflip, skatepark, ollie, grind, halfpipe, skate deck, trucks, handrail, heelflip, "
                "longboard, street skating",
                "skateboarding, skate, kickflip, skatepark",
            ),
            "surfing": (
                "surfing, waves, surfboard, barrel, swell, wetsuit, paddle out, wipeout, reef break, big wave, tide, "
                "surf trip",
                "surfing, surf, waves, surflife",
            ),
        },
    ),
}


def _split(words: str, sep: str = ",") -> tuple[str, ...]:
    return tuple(w.strip() for w in words.split(sep))


# Caption templates: {a} and {b} are two different sub-topic words, {t} a topic word, {o} an opener, {g} a tail.
_TEMPLATES = (
    "{o} {a} {g}",
    "{a} and {b} {g}",
    "{o} {a} with {b}",
    "{a} {t} {g}",
    "{o} {t}: {a} edition",
    "my {a} {t} {g}",
    "{a} vs {b}, which one wins?",
    "{o} {a}, {b} and more {t}",
    "can't stop thinking about this {a}",
    "{t} tip: {a} + {b}",
    "rating every {a} {g}",
    "{a} {b} {g}",
    "when the {a} hits different {g}",
    "{o} {b} {a} {t}",
)
_OPENERS = _split(
    "POV:|day 12 of|quick|trying|the best|storytime:|how to nail|watch this|underrated|first time|testing|easy|"
    "3 tips for|beginner|my honest take on|ultimate|weekend",
    "|",
)
_TAILS = _split(
    "you need to try this|wait for the end|part 2|no way|so satisfying|thoughts?|for beginners|in 60 seconds|"
    "this changed everything|honest review|do you agree?|follow for more|save this for later|10/10|at 3am|",
    "|",
)  # the empty last tail: many captions have none
_GENERIC_TAGS = ("fyp", "foryou", "viral", "trending", "foryoupage", "explore")


@dataclass(frozen=True, slots=True)
class Subtopic:
    name: str  # "topic/sub", e.g. "cooking/baking"
    topic: str
    words: tuple[str, ...]
    hashtags: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Topic:
    name: str
    words: tuple[str, ...]
    hashtags: tuple[str, ...]
    subtopics: tuple[Subtopic, ...]


@dataclass(frozen=True, slots=True)
class Taxonomy:
    topics: tuple[Topic, ...]

    @property
    def subtopics(self) -> tuple[Subtopic, ...]:
        """All sub-topics in index order: the index is what the truth arrays store."""
        return tuple(s for t in self.topics for s in t.subtopics)

    @property
    def subtopic_names(self) -> list[str]:
        return [s.name for s in self.subtopics]

    @property
    def topic_of(self) -> np.ndarray:
        """Topic index of every sub-topic."""
        return np.repeat(np.arange(len(self.topics)), [len(t.subtopics) for t in self.topics])

    def to_json(self) -> dict[str, Any]:
        return {
            "topics": [
                {
                    "name": t.name,
                    "words": list(t.words),
                    "hashtags": list(t.hashtags),
                    "subtopics": [
                        {"name": s.name, "words": list(s.words), "hashtags": list(s.hashtags)} for s in t.subtopics
                    ],
                }
                for t in self.topics
            ],
            "subtopics": self.subtopic_names,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Taxonomy:
        topics = tuple(
            Topic(
                t["name"],
                tuple(t["words"]),
                tuple(t["hashtags"]),
                tuple(Subtopic(s["name"], t["name"], tuple(s["words"]), tuple(s["hashtags"])) for s in t["subtopics"]),
            )
            for t in data["topics"]
        )
        return cls(topics)


def default_taxonomy() -> Taxonomy:
    topics = []
    for name, (words, tags, subs) in _VOCAB.items():
        subtopics = tuple(Subtopic(f"{name}/{s}", name, _split(w), _split(h)) for s, (w, h) in subs.items())
        topics.append(Topic(name, _split(words), _split(tags), subtopics))
    return Taxonomy(tuple(topics))


# --------------------------------------------------------------------------------------------------------------------
# Parameters
# --------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Engagement:
    """Logit coefficients of the engagement model; affinity is the planted cosine in [-1, 1]."""

    completion_bias: float = -1.0
    completion_affinity: float = 2.6
    completion_quality: float = 0.35
    completion_duration: float = -0.5  # per log(duration / 20 s): long videos are finished less often
    completion_noise: float = 0.8
    like_bias: float = -5.2
    like_affinity: float = 3.0
    like_completion: float = 1.6
    like_quality: float = 0.3
    share_bias: float = -7.2
    share_affinity: float = 2.5
    share_completion: float = 1.0
    share_quality: float = 0.5
    comment_bias: float = -6.4
    comment_affinity: float = 2.0
    comment_completion: float = 0.8
    comment_quality: float = 0.4


@dataclass(frozen=True, slots=True)
class WorldParams:
    users: int
    videos: int
    interactions_per_user: float = 100.0  # mean over users active the whole window
    creator_share: float = 0.2  # share of users who post
    latent_dim: int = 32
    # A fixed start (not "now") so the same seed gives the same bytes on any day.
    start: str = "2025-01-06T00:00:00+00:00"
    weeks: int = 8
    backlog_days: float = 14.0  # videos already online when the interaction log starts
    cold_share: float = 0.04  # videos posted after the last interaction
    cold_days: float = 2.0
    home_share: float = 0.8  # creators' videos in their home sub-topics
    sibling_tightness: float = 0.8  # noise of a sub-topic vector around its topic's (smaller: closer siblings)
    video_noise: float = 0.45
    user_noise: float = 0.35
    interest_alpha: float = 1.0  # Dirichlet concentration of interest weights
    activity_sigma: float = 1.4  # log-normal user activity
    creator_pareto: float = 1.2  # Pareto shape of creator popularity
    quality_sigma: float = 1.0  # log-normal video quality
    p_interest: float = 0.62  # exposure channels: interest sub-topics, followed creators, popularity exploration
    p_follow: float = 0.12
    p_sibling: float = 0.15  # share of interest exposures that drift to a sibling sub-topic of the same topic
    interest_pop_power: float = 0.7  # popularity matters less inside an interest than in exploration
    decay_days: float = 6.0  # views of a video decay after posting ...
    evergreen_share: float = 0.3  # ... except an evergreen share spread evenly over the window
    follows_per_user: float = 8.0
    p_follow_interest: float = 0.75
    platform_scale: float = 50.0  # platform users per lake user: lifetime video counts are this much larger
    engagement: Engagement = field(default_factory=Engagement)

    def __post_init__(self) -> None:
        if self.users < 1:
            raise ValueError(f"users must be at least 1, got {self.users}")
        if self.videos < 1:
            raise ValueError(f"videos must be at least 1, got {self.videos}")

    @property
    def start_ms(self) -> int:
        return int(dt.datetime.fromisoformat(self.start).timestamp() * 1000)

    @property
    def end_ms(self) -> int:
        """End of the interaction window (exclusive)."""
        return self.start_ms + self.weeks * 7 * MS_PER_DAY


SCALES: dict[str, WorldParams] = {
    "tiny": WorldParams(users=300, videos=1_500, interactions_per_user=130.0),
    "default": WorldParams(users=10_000, videos=50_000, interactions_per_user=115.0),
    "large": WorldParams(users=100_000, videos=500_000, interactions_per_user=115.0),
}


def params_for(scale: str, users: int | None = None, videos: int | None = None) -> WorldParams:
    """The parameters of a named scale, optionally with other user / video counts."""
    if scale not in SCALES:
        raise ValueError(f"unknown scale {scale!r}; known: {', '.join(SCALES)}")
    base = SCALES[scale]
    return dataclasses.replace(
        base, users=base.users if users is None else users, videos=base.videos if videos is None else videos
    )


# --------------------------------------------------------------------------------------------------------------------
# Ground truth
# --------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, eq=False)
class Truth:
    """The planted structure behind the lake tables; row i of a user array belongs to ``user_ids[i]``."""

    taxonomy: Taxonomy
    params: dict[str, Any]  # WorldParams as a dict plus seed, window and (once written) the lake it belongs to
    subtopic_latent: np.ndarray  # [S, d] unit vectors
    user_ids: np.ndarray  # [U] sorted id strings
    user_latent: np.ndarray  # [U, d] unit vectors
    user_interests: np.ndarray  # [U, 4] sub-topic indices, -1 padded, strongest first
    user_interest_weights: np.ndarray  # [U, 4] Dirichlet weights, 0 where padded
    user_activity: np.ndarray  # [U] relative activity (mean 1)
    creator_home: np.ndarray  # [U, 2] home sub-topics of creators, -1 for non-creators / no second home
    video_ids: np.ndarray  # [V] sorted id strings
    video_subtopic: np.ndarray  # [V]
    video_latent: np.ndarray  # [V, d] unit vectors
    video_quality: np.ndarray  # [V] log quality
    video_popularity: np.ndarray  # [V] creator popularity x quality

    def user_index(self, user_ids: Sequence[str] | np.ndarray) -> np.ndarray:
        return _lookup(self.user_ids, user_ids, "user")

    def video_index(self, video_ids: Sequence[str] | np.ndarray) -> np.ndarray:
        return _lookup(self.video_ids, video_ids, "video")

    def affinity(self, user_ids: Sequence[str] | np.ndarray, video_ids: Sequence[str] | np.ndarray) -> np.ndarray:
        """Planted affinity matrix ``[len(user_ids), len(video_ids)]``: cosine of the latent vectors, in [-1, 1]."""
        u = self.user_latent[self.user_index(user_ids)]
        v = self.video_latent[self.video_index(video_ids)]
        return u @ v.T

    def pair_affinity(self, user_ids: Sequence[str] | np.ndarray, video_ids: Sequence[str] | np.ndarray) -> np.ndarray:
        """Planted affinity of aligned pairs ``(user_ids[i], video_ids[i])``."""
        u = self.user_latent[self.user_index(user_ids)]
        v = self.video_latent[self.video_index(video_ids)]
        return np.einsum("ij,ij->i", u, v)


def _lookup(
    sorted_ids: np.ndarray, ids: Sequence[str] | np.ndarray | pa.Array | pa.ChunkedArray, what: str
) -> np.ndarray:
    if isinstance(ids, pa.Array | pa.ChunkedArray):
        ids = ids.to_numpy(zero_copy_only=False)
    # No fixed width here: a cast to the stored width would cut an overlong unknown id into a known one.
    query = np.asarray(ids).astype(str)
    if query.size == 0:
        return np.zeros(0, dtype=np.int64)
    idx = np.searchsorted(sorted_ids, query)
    idx_clipped = np.minimum(idx, len(sorted_ids) - 1)
    missing = sorted_ids[idx_clipped] != query
    if missing.any():
        raise KeyError(f"unknown {what} id(s): {query[missing][:5].tolist()}")
    return idx_clipped.astype(np.int64)


TRUTH_FILES = ("taxonomy.json", "params.json", "subtopics.parquet", "users.parquet", "videos.parquet")


def write_truth(truth: Truth, truth_dir: Path, extra_params: dict[str, Any] | None = None) -> None:
    """Write ``truth`` to ``truth_dir`` as a whole: a reader sees the old folder or the new one."""
    truth_dir = Path(truth_dir)
    truth_dir.parent.mkdir(parents=True, exist_ok=True)
    stage = truth_dir.parent / f".{truth_dir.name}-staging-{os.getpid()}"
    shutil.rmtree(stage, ignore_errors=True)
    stage.mkdir()
    try:
        params = {**truth.params, **(extra_params or {})}
        (stage / "taxonomy.json").write_text(json.dumps(truth.taxonomy.to_json(), indent=2))
        (stage / "params.json").write_text(json.dumps(params, indent=2, sort_keys=True))
        pq.write_table(_subtopic_table(truth), stage / "subtopics.parquet")
        pq.write_table(_user_truth_table(truth), stage / "users.parquet", compression="zstd")
        pq.write_table(_video_truth_table(truth), stage / "videos.parquet", compression="zstd")
        for f in stage.iterdir():
            with f.open("rb") as fh:
                os.fsync(fh.fileno())
        fsync_dir(stage)
        # A directory cannot be renamed over a non-empty one, so the old truth steps aside first.
        old = truth_dir.parent / f".{truth_dir.name}-old-{os.getpid()}"
        if truth_dir.exists():
            shutil.rmtree(old, ignore_errors=True)
            os.replace(truth_dir, old)
        os.replace(stage, truth_dir)
        fsync_dir(truth_dir.parent)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def load_truth(truth_dir: Path) -> Truth:
    """Read the planted truth written by :func:`write_truth`."""
    truth_dir = Path(truth_dir)
    if missing := [f for f in TRUTH_FILES if not (truth_dir / f).is_file()]:
        raise FileNotFoundError(
            f"no synthetic ground truth at {truth_dir} (missing {', '.join(missing)}): "
            "run `python -m jobs.generate_data` first"
        )
    taxonomy = Taxonomy.from_json(json.loads((truth_dir / "taxonomy.json").read_text()))
    params = json.loads((truth_dir / "params.json").read_text())
    subs = pq.read_table(truth_dir / "subtopics.parquet")
    users = pq.read_table(truth_dir / "users.parquet")
    videos = pq.read_table(truth_dir / "videos.parquet")
    return Truth(
        taxonomy=taxonomy,
        params=params,
        subtopic_latent=_matrix(subs["latent"]),
        user_ids=users["user_id"].to_numpy(zero_copy_only=False).astype(str),
        user_latent=_matrix(users["latent"]),
        user_interests=_matrix(users["interests"]).astype(np.int16),
        user_interest_weights=_matrix(users["interest_weights"]),
        user_activity=users["activity"].to_numpy(),
        creator_home=_matrix(users["creator_home"]).astype(np.int16),
        video_ids=videos["video_id"].to_numpy(zero_copy_only=False).astype(str),
        video_subtopic=videos["subtopic"].to_numpy().astype(np.int16),
        video_latent=_matrix(videos["latent"]),
        video_quality=videos["quality"].to_numpy(),
        video_popularity=videos["popularity"].to_numpy(),
    )


def _fixed_list(matrix: np.ndarray) -> pa.FixedSizeListArray:
    flat = np.ascontiguousarray(matrix).reshape(-1)
    return pa.FixedSizeListArray.from_arrays(pa.array(flat), matrix.shape[1])


def _matrix(column: pa.ChunkedArray) -> np.ndarray:
    arr = column.combine_chunks()
    width = arr.type.list_size
    return arr.flatten().to_numpy().reshape(-1, width)


def _subtopic_table(truth: Truth) -> pa.Table:
    subs = truth.taxonomy.subtopics
    return pa.table(
        {
            "subtopic": pa.array(np.arange(len(subs), dtype=np.int16)),
            "name": [s.name for s in subs],
            "topic": [s.topic for s in subs],
            "latent": _fixed_list(truth.subtopic_latent),
        }
    )


def _user_truth_table(truth: Truth) -> pa.Table:
    return pa.table(
        {
            "user_id": pa.array(truth.user_ids, pa.string()),
            "latent": _fixed_list(truth.user_latent),
            "interests": _fixed_list(truth.user_interests.astype(np.int16)),
            "interest_weights": _fixed_list(truth.user_interest_weights),
            "activity": pa.array(truth.user_activity),
            "creator_home": _fixed_list(truth.creator_home.astype(np.int16)),
        }
    )


def _video_truth_table(truth: Truth) -> pa.Table:
    return pa.table(
        {
            "video_id": pa.array(truth.video_ids, pa.string()),
            "subtopic": pa.array(truth.video_subtopic.astype(np.int16)),
            "subtopic_name": pa.array(truth.taxonomy.subtopic_names).take(pa.array(truth.video_subtopic)),
            "latent": _fixed_list(truth.video_latent),
            "quality": pa.array(truth.video_quality),
            "popularity": pa.array(truth.video_popularity),
        }
    )


# --------------------------------------------------------------------------------------------------------------------
# Generation
# --------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class World:
    tables: dict[str, pa.Table]  # videos, users, follows, interactions, ready for Lake.commit
    truth: Truth
    timings: dict[str, float]


@dataclass(slots=True)
class _Users:
    created_ms: np.ndarray
    interests: np.ndarray  # [U, 4] -1 padded
    weights: np.ndarray  # [U, 4]
    latent: np.ndarray  # [U, d] float32
    activity: np.ndarray
    like_bias: np.ndarray
    patience: np.ndarray
    creators: np.ndarray  # user indices of creators
    home: np.ndarray  # [U, 2] -1 padded
    creator_pop: np.ndarray  # [U], 0 for non-creators


@dataclass(slots=True)
class _Videos:
    creator: np.ndarray  # user index
    created_ms: np.ndarray
    subtopic: np.ndarray
    latent: np.ndarray  # [V, d] float32
    log_quality: np.ndarray
    popularity: np.ndarray
    duration_s: np.ndarray
    availability: np.ndarray  # share of the video's expected views that fall inside the window


@dataclass(slots=True)
class _Interactions:
    user: np.ndarray
    video: np.ndarray
    ts_ms: np.ndarray
    watch_s: np.ndarray
    completion: np.ndarray
    liked: np.ndarray
    shared: np.ndarray
    commented: np.ndarray


@dataclass(frozen=True, slots=True)
class _SegmentSampler:
    """Draws an item inside a segment (a sub-topic, a creator) with probability proportional to a weight.

    Items are laid out segment by segment with one running weight sum, so a draw is one
    ``searchsorted`` for any number of rows: no Python loop per draw.
    """

    items: np.ndarray
    cum: np.ndarray
    before: np.ndarray  # per segment: running sum before its first item
    total: np.ndarray  # per segment: its weight
    first: np.ndarray
    last: np.ndarray

    @classmethod
    def build(cls, segment: np.ndarray, weight: np.ndarray, n_segments: int) -> _SegmentSampler:
        order = np.argsort(segment, kind="stable")
        cum = np.cumsum(weight[order].astype(np.float64))
        counts = np.bincount(segment[order], minlength=n_segments)
        end = np.cumsum(counts)
        start = end - counts
        padded = np.concatenate([[0.0], cum])
        before = padded[start]
        return cls(order, cum, before, padded[end] - before, start, np.maximum(end - 1, start))

    def sample(self, rng: np.random.Generator, segments: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Items drawn in ``segments``; the mask is False where a segment has no weight (caller falls back)."""
        u = rng.random(len(segments))
        if len(self.items) == 0:
            return np.zeros(len(segments), dtype=np.int64), np.zeros(len(segments), dtype=bool)
        total = self.total[segments]
        pos = np.searchsorted(self.cum, self.before[segments] + u * total, side="right")
        # Rounding can step one past a segment's end; the clip keeps the draw inside it.
        pos = np.clip(pos, self.first[segments], self.last[segments])
        pos = np.minimum(pos, len(self.items) - 1)
        return self.items[pos], total > 0


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


class _StepClock:
    """Logs each finished stage with its time; at large scale the stages take minutes."""

    def __init__(self, total: int) -> None:
        self.total, self.done = total, 0
        self.timings: dict[str, float] = {}
        self.last = time.perf_counter()

    def step(self, name: str) -> None:
        now = time.perf_counter()
        self.done += 1
        self.timings[name] = round(now - self.last, 3)
        self.last = now
        log.info("world %d/%d: %s in %.2fs", self.done, self.total, name, self.timings[name])


def generate_world(params: WorldParams, seed: int, taxonomy: Taxonomy | None = None) -> World:
    """Build the whole world for ``params``; deterministic in ``seed``."""
    tax = taxonomy or default_taxonomy()
    # One independent stream per stage: changing how one stage draws leaves the others unchanged.
    names = ("taxonomy", "users", "videos", "text", "follows", "interactions", "stats", "profile")
    rngs = {k: np.random.default_rng(s) for k, s in zip(names, np.random.SeedSequence(seed).spawn(8), strict=True)}
    clock = _StepClock(total=6)

    sub_latent, sub_pop = _subtopic_space(rngs["taxonomy"], tax, params)
    users = _make_users(rngs["users"], params, tax, sub_latent, sub_pop)
    clock.step("users")
    videos = _make_videos(rngs["videos"], params, users, sub_latent, sub_pop)
    clock.step("videos")
    follows = _make_follows(rngs["follows"], params, users, len(tax.subtopics))
    clock.step("follows")
    inter = _make_interactions(rngs["interactions"], params, tax, users, videos, follows)
    clock.step("interactions")
    stats = _video_stats(rngs["stats"], params, videos, follows, inter)
    clock.step("video stats")
    user_ids, video_ids = _ids("u", 7, params.users), _ids("v", 8, params.videos)
    u_ids, v_ids = pa.array(user_ids, pa.string()), pa.array(video_ids, pa.string())
    tables = {
        "videos": _videos_table(rngs["text"], tax, videos, stats, v_ids, u_ids),
        "users": _users_table(rngs["profile"], users, u_ids),
        "follows": _follows_table(follows, u_ids),
        "interactions": _interactions_table(inter, u_ids, v_ids),
    }
    clock.step("tables")
    truth = Truth(
        taxonomy=tax,
        params={
            "seed": int(seed),
            "world": dataclasses.asdict(params),
            # Interactions lie in [start, end); cold videos are posted after end.
            "window": {"start": _iso(params.start_ms), "end": _iso(params.end_ms)},
        },
        subtopic_latent=sub_latent,
        user_ids=user_ids,
        user_latent=users.latent,
        user_interests=users.interests.astype(np.int16),
        user_interest_weights=users.weights.astype(np.float32),
        user_activity=users.activity.astype(np.float32),
        creator_home=users.home.astype(np.int16),
        video_ids=video_ids,
        video_subtopic=videos.subtopic.astype(np.int16),
        video_latent=videos.latent,
        video_quality=videos.log_quality.astype(np.float32),
        video_popularity=videos.popularity.astype(np.float32),
    )
    return World(tables, truth, clock.timings)


def _iso(ms: int) -> str:
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).isoformat()


def _ids(prefix: str, width: int, n: int) -> np.ndarray:
    # Zero padded and 1-based, so string order is numeric order and index i is id i + 1.
    return np.array([f"{prefix}{i:0{width}d}" for i in range(1, n + 1)])


def _subtopic_space(rng: np.random.Generator, tax: Taxonomy, p: WorldParams) -> tuple[np.ndarray, np.ndarray]:
    """Sub-topic unit vectors (siblings share a topic direction) and sub-topic popularity (Zipf-like)."""
    n_topics, topic_of = len(tax.topics), tax.topic_of
    topic_vec = _unit(rng.standard_normal((n_topics, p.latent_dim)))
    noise = _unit(rng.standard_normal((len(topic_of), p.latent_dim)))
    sub_latent = _unit(topic_vec[topic_of] + p.sibling_tightness * noise).astype(np.float32)
    ranks = rng.permutation(len(topic_of)) + 1
    sub_pop = ranks**-0.6
    return sub_latent, sub_pop / sub_pop.sum()


def _make_users(
    rng: np.random.Generator, p: WorldParams, tax: Taxonomy, sub_latent: np.ndarray, sub_pop: np.ndarray
) -> _Users:
    n = p.users
    start, end = p.start_ms, p.end_ms
    # Sign-up times: most users predate the window, some join during it (cold-start users). Ids follow sign-up order.
    joined_early = rng.random(n) < 0.85
    created = np.where(
        joined_early,
        rng.integers(start - 730 * MS_PER_DAY, start, n),
        rng.integers(start, end - MS_PER_DAY, n),
    )
    created = np.sort(created)

    interests, weights = _interests(rng, n, tax, sub_pop, p.interest_alpha)
    mix = np.einsum("uk,ukd->ud", weights, sub_latent[np.maximum(interests, 0)])
    noise = rng.standard_normal((n, p.latent_dim)) / np.sqrt(p.latent_dim)
    latent = _unit(mix + p.user_noise * noise).astype(np.float32)

    activity = rng.lognormal(0.0, p.activity_sigma, n)
    activity /= activity.mean()

    # Creators need an account before the window so their back catalogue can predate it. Users are sorted by
    # sign-up, so the eligible ones come first; tiny custom worlds may need the earliest few moved back.
    cutoff = start - int((p.backlog_days + 1) * MS_PER_DAY)
    n_creators = max(1, round(n * p.creator_share))
    n_eligible = max(int((created < cutoff).sum()), n_creators)
    created[:n_eligible] = np.minimum(created[:n_eligible], cutoff - 1)
    creators = np.sort(rng.choice(n_eligible, n_creators, replace=False))
    home = np.full((n, MAX_HOMES), -1, dtype=np.int64)
    home[creators, 0] = interests[creators, 0]
    second = rng.random(n_creators) < 0.5
    home[creators[second], 1] = interests[creators[second], 1]
    creator_pop = np.zeros(n)
    creator_pop[creators] = rng.pareto(p.creator_pareto, n_creators) + 1.0
    return _Users(
        created_ms=created,
        interests=interests,
        weights=weights,
        latent=latent,
        activity=activity,
        like_bias=rng.normal(0.0, 0.6, n),
        patience=rng.normal(0.0, 0.4, n),
        creators=creators,
        home=home,
        creator_pop=creator_pop,
    )


def _interests(
    rng: np.random.Generator, n: int, tax: Taxonomy, sub_pop: np.ndarray, alpha: float
) -> tuple[np.ndarray, np.ndarray]:
    """2-4 distinct interest sub-topics per user, strongest first, with Dirichlet weights."""
    topic_of = tax.topic_of
    primary = rng.choice(len(sub_pop), n, p=sub_pop)
    # Further interests lean towards siblings of the first (people who bake often also grill).
    w = np.log(sub_pop)[None, :] + np.log(1.0 + 3.0 * (topic_of[None, :] == topic_of[primary][:, None]))
    w[np.arange(n), primary] = -np.inf
    gumbel = w - np.log(-np.log(rng.random(w.shape)))  # Gumbel top-k = sampling without replacement
    others = np.argsort(-gumbel, axis=1)[:, : MAX_INTERESTS - 1]
    interests = np.concatenate([primary[:, None], others], axis=1)
    k = rng.integers(2, MAX_INTERESTS + 1, n)
    used = np.arange(MAX_INTERESTS)[None, :] < k[:, None]
    g = rng.gamma(alpha, 1.0, (n, MAX_INTERESTS)) * used  # normalised gammas = Dirichlet over the used slots
    weights = -np.sort(-g / g.sum(axis=1, keepdims=True), axis=1)
    interests = np.where(used, interests, -1)
    return interests, weights * used


def _make_videos(
    rng: np.random.Generator,
    p: WorldParams,
    users: _Users,
    sub_latent: np.ndarray,
    sub_pop: np.ndarray,
) -> _Videos:
    n = p.videos
    start, end = p.start_ms, p.end_ms
    # Posting times: a back catalogue, the window itself, and a few cold videos after it. Ids follow posting order.
    n_cold = round(n * p.cold_share) if n >= 20 else 0
    warm = rng.integers(start - int(p.backlog_days * MS_PER_DAY), end - 3_600_000, n - n_cold)
    cold = rng.integers(end + 60_000, end + int(p.cold_days * MS_PER_DAY), n_cold)
    created = np.sort(np.concatenate([warm, cold]))

    rate = rng.lognormal(0.0, 1.0, len(users.creators))
    creator = users.creators[rng.choice(len(users.creators), n, p=rate / rate.sum())]

    home = users.home[creator]
    has_second = home[:, 1] >= 0
    pick_second = has_second & (rng.random(n) < 0.35)
    home_sub = np.where(pick_second, home[:, 1], home[:, 0])
    stray_sub = rng.choice(len(sub_pop), n, p=sub_pop)
    subtopic = np.where(rng.random(n) < p.home_share, home_sub, stray_sub)

    noise = rng.standard_normal((n, p.latent_dim)) / np.sqrt(p.latent_dim)
    latent = _unit(sub_latent[subtopic] + p.video_noise * noise).astype(np.float32)
    log_quality = rng.normal(0.0, p.quality_sigma, n)
    popularity = users.creator_pop[creator] * np.exp(log_quality)

    return _Videos(
        creator=creator,
        created_ms=created,
        subtopic=subtopic,
        latent=latent,
        log_quality=log_quality,
        popularity=popularity,
        duration_s=_durations(rng, n),
        availability=_availability(p, created),
    )


def _durations(rng: np.random.Generator, n: int) -> np.ndarray:
    # Mostly short clips, a band of ~30 s ones and a tail of long ones.
    medians = np.array([12.0, 30.0, 75.0])
    kind = rng.choice(3, n, p=[0.55, 0.3, 0.15])
    d = medians[kind] * np.exp(rng.normal(0.0, 0.45, n))
    return np.round(np.clip(d, 5.0, 180.0), 1)


def _time_masses(p: WorldParams, created: np.ndarray, lo: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Expected view mass in ``[lo, end)`` of the decaying and the evergreen parts of a video's life."""
    tau = p.decay_days * MS_PER_DAY
    horizon = float(p.end_ms - p.start_ms)
    a = np.maximum(lo - created, 0) / tau
    b = np.maximum(p.end_ms - created, 0) / tau
    decay = (1.0 - p.evergreen_share) * (np.exp(-a) - np.exp(-b))
    even = p.evergreen_share * np.maximum(p.end_ms - lo, 0) / horizon
    return decay, even


def _availability(p: WorldParams, created: np.ndarray) -> np.ndarray:
    # Late videos have had little time to collect views and cold ones none at all.
    decay, even = _time_masses(p, created, np.maximum(created, p.start_ms))
    avail = decay + even
    avail[created >= p.end_ms] = 0.0
    return avail


@dataclass(slots=True)
class _Follows:
    user: np.ndarray  # sorted by (user, creator)
    creator: np.ndarray
    ts_ms: np.ndarray


def _make_follows(rng: np.random.Generator, p: WorldParams, users: _Users, n_subs: int) -> _Follows:
    """Who follows whom: mostly creators of the user's interests, else popular ones."""
    n = p.users
    k = rng.poisson(p.follows_per_user * np.sqrt(users.activity))
    follower = np.repeat(np.arange(n), k)
    m = len(follower)
    sub = _draw_interest(rng, users, follower)

    # A creator appears once per home sub-topic, weighted by popularity.
    c_rows = np.repeat(users.creators, MAX_HOMES)
    c_home = users.home[users.creators].reshape(-1)
    keep = c_home >= 0
    by_home = _SegmentSampler.build(c_home[keep], users.creator_pop[c_rows[keep]], n_subs)
    creator, ok = by_home.sample(rng, sub)
    creator = c_rows[keep][creator]
    glob = _SegmentSampler.build(np.zeros(len(users.creators), dtype=np.int64), users.creator_pop[users.creators], 1)
    pop_pick, _ = glob.sample(rng, np.zeros(m, dtype=np.int64))
    use_interest = ok & (rng.random(m) < p.p_follow_interest)
    creator = np.where(use_interest, creator, users.creators[pop_pick])

    keep = creator != follower
    follower, creator = follower[keep], creator[keep]
    key = follower.astype(np.int64) * n + creator
    _, first = np.unique(key, return_index=True)  # np.unique sorts by key, i.e. by (user, creator)
    follower, creator = follower[first], creator[first]
    # A follow happens once both accounts exist, at any time up to the end of the window.
    lo = np.maximum(users.created_ms[follower], users.created_ms[creator])
    ts = lo + (rng.random(len(lo)) * (p.end_ms - lo)).astype(np.int64)
    return _Follows(follower, creator, ts)


def _draw_interest(rng: np.random.Generator, users: _Users, rows: np.ndarray) -> np.ndarray:
    """One interest sub-topic per row, drawn by the row's user's interest weights."""
    cw = np.cumsum(users.weights[rows], axis=1)
    slot = (rng.random(len(rows))[:, None] * cw[:, -1:] > cw).sum(axis=1)
    k = (users.interests[rows] >= 0).sum(axis=1)
    slot = np.minimum(slot, k - 1)
    return users.interests[rows, slot]


@dataclass(frozen=True, slots=True)
class _Exposure:
    """What a feed draws from: videos by sub-topic, by creator, overall, and each user's followed creators."""

    by_subtopic: _SegmentSampler
    by_creator: _SegmentSampler
    overall: _SegmentSampler
    follow_start: np.ndarray  # per user: first row of their follows (follows are sorted by user)
    follow_count: np.ndarray
    follow_creator: np.ndarray

    @classmethod
    def build(cls, p: WorldParams, n_subs: int, videos: _Videos, follows: _Follows) -> _Exposure:
        # Late videos have had less time to be seen, so availability scales every weight.
        weight = videos.popularity * videos.availability
        count = np.bincount(follows.user, minlength=p.users)
        return cls(
            by_subtopic=_SegmentSampler.build(
                videos.subtopic, videos.popularity**p.interest_pop_power * videos.availability, n_subs
            ),
            by_creator=_SegmentSampler.build(videos.creator, weight, p.users),
            overall=_SegmentSampler.build(np.zeros(p.videos, dtype=np.int64), weight, 1),
            follow_start=np.cumsum(count) - count,
            follow_count=count,
            follow_creator=follows.creator,
        )


def _make_interactions(
    rng: np.random.Generator,
    p: WorldParams,
    tax: Taxonomy,
    users: _Users,
    videos: _Videos,
    follows: _Follows,
) -> _Interactions:
    exposure = _Exposure.build(p, len(tax.subtopics), videos, follows)
    chunk = 5_000  # users per chunk: bounds memory at large scale
    starts = list(range(0, p.users, chunk))
    # One child stream per chunk of a fixed size, so the draws never depend on the machine.
    chunk_rngs = rng.spawn(len(starts))
    progress = Progress("interactions (users)", total=p.users, every_s=5.0, logger=log)
    parts: list[_Interactions] = []
    for lo, chunk_rng in zip(starts, chunk_rngs, strict=True):
        rows = np.arange(lo, min(lo + chunk, p.users))
        user, video = _expose(chunk_rng, p, tax, users, videos, exposure, rows)
        parts.append(_engage(chunk_rng, p, users, videos, user, video))
        progress.advance(len(rows))
    return _Interactions(
        *(np.concatenate([getattr(x, f.name) for x in parts]) for f in dataclasses.fields(_Interactions))
    )


def _expose(
    rng: np.random.Generator,
    p: WorldParams,
    tax: Taxonomy,
    users: _Users,
    videos: _Videos,
    exposure: _Exposure,
    rows: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Which videos each user of ``rows`` watched: interests, followed creators, or popular exploration."""
    start = p.start_ms
    active = (p.end_ms - np.maximum(users.created_ms[rows], start)) / (p.end_ms - start)
    lam = p.interactions_per_user * users.activity[rows] * active
    n_u = np.minimum(rng.poisson(lam), max(1, p.videos // 3))
    # Draw extra exposures: repeats of a (user, video) pair are dropped below, and heavy users would otherwise
    # lose the most, flattening the activity tail.
    draws = np.ceil(n_u * OVERSAMPLE).astype(np.int64) + 2
    user = np.repeat(rows, draws)
    m = len(user)

    sub = _draw_interest(rng, users, user)
    sub = np.where(rng.random(m) < p.p_sibling, _sibling(rng, tax, sub), sub)
    v_interest, ok_interest = exposure.by_subtopic.sample(rng, sub)

    n_follows = exposure.follow_count[user]
    pick = exposure.follow_start[user] + (rng.random(m) * n_follows).astype(np.int64)
    followed = exposure.follow_creator
    creator = followed[np.minimum(pick, len(followed) - 1)] if len(followed) else np.zeros(m, dtype=np.int64)
    v_follow, ok_follow = exposure.by_creator.sample(rng, creator)
    ok_follow &= n_follows > 0

    v_pop, _ = exposure.overall.sample(rng, np.zeros(m, dtype=np.int64))
    channel = rng.random(m)
    use_interest = (channel < p.p_interest) & ok_interest
    use_follow = (channel >= p.p_interest) & (channel < p.p_interest + p.p_follow) & ok_follow
    video = np.where(use_interest, v_interest, np.where(use_follow, v_follow, v_pop))

    # Nobody's feed shows them their own videos, and a (user, video) pair is logged once.
    keep = videos.creator[video] != user
    user, video = user[keep], video[keep]
    _, first = np.unique(user.astype(np.int64) * p.videos + video, return_index=True)
    first.sort()  # back to draw order, which is grouped by user
    user, video = user[first], video[first]
    # Keep each user's first n_u distinct draws.
    counts = np.bincount(user - rows[0], minlength=len(rows))
    rank = np.arange(len(user)) - np.repeat(np.cumsum(counts) - counts, counts)
    keep = rank < n_u[user - rows[0]]
    return user[keep], video[keep]


def _sibling(rng: np.random.Generator, tax: Taxonomy, sub: np.ndarray) -> np.ndarray:
    """A random other sub-topic of the same topic (itself when the topic has only one)."""
    sizes = np.array([len(t.subtopics) for t in tax.topics])
    first = np.cumsum(sizes) - sizes
    topic = tax.topic_of[sub]
    size = sizes[topic]
    offset = sub - first[topic]
    step = 1 + (rng.random(len(sub)) * np.maximum(size - 1, 1)).astype(np.int64)
    return np.where(size > 1, first[topic] + (offset + step) % size, sub)


def _engage(
    rng: np.random.Generator, p: WorldParams, users: _Users, videos: _Videos, user: np.ndarray, video: np.ndarray
) -> _Interactions:
    """When each exposure happened and how the user engaged with it."""
    m, e = len(user), p.engagement
    created = videos.created_ms[video]
    lo = np.maximum(np.maximum(created, users.created_ms[user]), p.start_ms)
    ts = _draw_times(rng, p, created, lo)

    affinity = np.einsum("ij,ij->i", users.latent[user], videos.latent[video]).astype(np.float64)
    q = videos.log_quality[video]
    duration = videos.duration_s[video]
    z = (
        e.completion_bias
        + e.completion_affinity * affinity
        + e.completion_quality * q
        + e.completion_duration * np.log(duration / 20.0)
        + users.patience[user]
        + e.completion_noise * rng.standard_normal(m)
    )
    # The 1.1 stretch lets the best-engaged views reach a full watch.
    completion = np.clip(_sigmoid(z) * 1.1, 0.0, 1.0).astype(np.float32)
    watch = (completion * duration).astype(np.float32)
    c = completion.astype(np.float64)
    like = e.like_bias + e.like_affinity * affinity + e.like_completion * c + e.like_quality * q + users.like_bias[user]
    share = e.share_bias + e.share_affinity * affinity + e.share_completion * c + e.share_quality * q
    comment = (
        e.comment_bias
        + e.comment_affinity * affinity
        + e.comment_completion * c
        + e.comment_quality * q
        + 0.5 * users.like_bias[user]
    )
    return _Interactions(
        user=user.astype(np.int32),
        video=video.astype(np.int32),
        ts_ms=ts,
        watch_s=watch,
        completion=completion,
        liked=rng.random(m) < _sigmoid(like),
        shared=rng.random(m) < _sigmoid(share),
        commented=rng.random(m) < _sigmoid(comment),
    )


def _draw_times(rng: np.random.Generator, p: WorldParams, created: np.ndarray, lo: np.ndarray) -> np.ndarray:
    """A time in ``[lo, end)``: mostly soon after posting (exponential decay), partly evenly spread."""
    decay, even = _time_masses(p, created, lo)
    use_decay = rng.random(len(lo)) * (decay + even) < decay
    tau = p.decay_days * MS_PER_DAY
    a = np.exp(-(lo - created) / tau)
    b = np.exp(-(p.end_ms - created) / tau)
    u = rng.random(len(lo))
    offset_decay = -tau * np.log(a - u * (a - b)) - (lo - created)
    offset_even = u * (p.end_ms - lo)
    offset = np.where(use_decay, offset_decay, offset_even)
    ts = lo + np.floor(offset).astype(np.int64)
    return np.clip(ts, lo, p.end_ms - 1)


@dataclass(slots=True)
class _VideoStats:
    views: np.ndarray
    likes: np.ndarray
    comments: np.ndarray
    shares: np.ndarray
    creator_followers: np.ndarray
    creator_likes: np.ndarray


def _video_stats(
    rng: np.random.Generator,
    p: WorldParams,
    videos: _Videos,
    follows: _Follows,
    inter: _Interactions,
) -> _VideoStats:
    """Platform-wide lifetime counts: the lake's sample scaled up to the platform, with noise."""
    n = p.videos
    seen = np.bincount(inter.video, minlength=n).astype(np.float64)
    # Cold and unlucky videos still get a trickle of views from outside the sample.
    noise = rng.lognormal(0.0, 0.15, n)
    views = rng.poisson(p.platform_scale * (seen + 0.3 * videos.availability + 0.05) * noise)

    def rate_count(flags: np.ndarray) -> np.ndarray:
        # Shrink the per-video rate towards the global one so tiny samples do not give 0% or 100%.
        hits = np.bincount(inter.video, weights=flags.astype(np.float64), minlength=n)
        prior = flags.mean() if len(flags) else 0.05
        rate = (hits + 5.0 * prior) / (seen + 5.0)
        return rng.binomial(views, np.clip(rate, 0.0, 1.0))

    likes = rate_count(inter.liked)
    comments = rate_count(inter.commented)
    shares = rate_count(inter.shared)
    lake_followers = np.bincount(follows.creator, minlength=p.users)
    followers = lake_followers + rng.poisson((p.platform_scale - 1.0) * (lake_followers + 0.5))
    creator_likes = np.bincount(videos.creator, weights=likes, minlength=p.users).astype(np.int64)
    return _VideoStats(
        views=views.astype(np.int64),
        likes=likes.astype(np.int64),
        comments=comments.astype(np.int64),
        shares=shares.astype(np.int64),
        creator_followers=followers[videos.creator].astype(np.int64),
        creator_likes=creator_likes[videos.creator],
    )


# --------------------------------------------------------------------------------------------------------------------
# Tables
# --------------------------------------------------------------------------------------------------------------------


def _ts(ms: np.ndarray) -> pa.Array:
    return pa.array(ms.astype(np.int64), type=pa.int64()).cast(TS)


def _videos_table(
    rng: np.random.Generator,
    tax: Taxonomy,
    videos: _Videos,
    stats: _VideoStats,
    video_ids: pa.Array,
    user_ids: pa.Array,
) -> pa.Table:
    n = len(videos.subtopic)
    shape = rng.choice(4, n, p=[0.86, 0.07, 0.05, 0.02])
    widths = np.array([1080, 1920, 1080, 720], dtype=np.int32)
    heights = np.array([1920, 1080, 1080, 1280], dtype=np.int32)
    return pa.table(
        {
            "video_id": video_ids,
            "creator_id": user_ids.take(pa.array(videos.creator)),
            "caption": pa.array(_captions(rng, tax, videos.subtopic), pa.string()),
            "hashtags": _hashtags(rng, tax, videos.subtopic),
            "duration_s": pa.array(videos.duration_s.astype(np.float32)),
            "width": pa.array(widths[shape]),
            "height": pa.array(heights[shape]),
            "created_at": _ts(videos.created_ms),
            "creator_followers": pa.array(stats.creator_followers),
            "creator_likes": pa.array(stats.creator_likes),
            "views": pa.array(stats.views),
            "likes": pa.array(stats.likes),
            "comments": pa.array(stats.comments),
            "shares": pa.array(stats.shares),
        }
    )


def _pool(groups: Sequence[Sequence[str]]) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Flatten word groups: (all words, first index of each group, size of each group)."""
    flat = [w for g in groups for w in g]
    sizes = np.array([len(g) for g in groups])
    return flat, np.cumsum(sizes) - sizes, sizes


def _captions(rng: np.random.Generator, tax: Taxonomy, subtopic: np.ndarray) -> list[str]:
    n = len(subtopic)
    words, w_first, w_size = _pool([s.words for s in tax.subtopics])
    t_words, t_first, t_size = _pool([t.words for t in tax.topics])
    topic = tax.topic_of[subtopic]
    size = w_size[subtopic]
    a = (rng.random(n) * size).astype(np.int64)
    b = (a + 1 + (rng.random(n) * (size - 1)).astype(np.int64)) % size  # a different word than a
    a_word = w_first[subtopic] + a
    # Now and then the second word comes from a sibling sub-topic, as real captions blend themes.
    sibling = _sibling(rng, tax, subtopic)
    b_sib = w_first[sibling] + (rng.random(n) * w_size[sibling]).astype(np.int64)
    b_word = np.where(rng.random(n) < 0.15, b_sib, w_first[subtopic] + b)
    t_word = t_first[topic] + (rng.random(n) * t_size[topic]).astype(np.int64)
    tpl = rng.integers(0, len(_TEMPLATES), n)
    opener = rng.integers(0, len(_OPENERS), n)
    tail = rng.integers(0, len(_TAILS), n)
    return [
        _TEMPLATES[k].format(a=words[i], b=words[j], t=t_words[t], o=_OPENERS[o], g=_TAILS[g]).strip()
        for k, i, j, t, o, g in zip(
            tpl.tolist(), a_word.tolist(), b_word.tolist(), t_word.tolist(), opener.tolist(), tail.tolist(), strict=True
        )
    ]


def _padded(rows: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
    """Ragged rows as a -1 padded matrix plus row lengths."""
    sizes = np.array([len(r) for r in rows])
    width = max(int(sizes.max()), 1)
    return np.array([r + [-1] * (width - len(r)) for r in rows]), sizes


def _hashtags(rng: np.random.Generator, tax: Taxonomy, subtopic: np.ndarray) -> pa.ListArray:
    """1-3 sub-topic tags, maybe a topic tag, maybe generic ones; distinct within a video, built without a row loop."""
    n = len(subtopic)
    sub_tags = [s.hashtags for s in tax.subtopics]
    topic_tags = [t.hashtags for t in tax.topics]
    vocab = sorted({t for g in [*sub_tags, *topic_tags, _GENERIC_TAGS] for t in g})
    index = {t: i for i, t in enumerate(vocab)}
    sub_table, _ = _padded([[index[t] for t in g] for g in sub_tags])
    topic_table, topic_size = _padded([[index[t] for t in g] for g in topic_tags])
    generic = np.array([index[t] for t in _GENERIC_TAGS])

    # A random order of each video's sub-topic tags (padding sorts last), of which it uses the first 1-3.
    keys = rng.random((n, sub_table.shape[1])) + (sub_table[subtopic] < 0)
    shuffled = np.take_along_axis(sub_table[subtopic], np.argsort(keys, axis=1), axis=1)[:, :3]
    k_sub = rng.integers(1, 4, n)
    topic = tax.topic_of[subtopic]
    topic_tag = topic_table[topic, (rng.random(n) * topic_size[topic]).astype(np.int64)]
    g1 = generic[rng.integers(0, len(generic), n)]
    g2 = generic[rng.integers(0, len(generic), n)]
    cols = np.concatenate([shuffled, topic_tag[:, None], g1[:, None], g2[:, None]], axis=1)
    use = np.concatenate(
        [
            np.arange(shuffled.shape[1])[None, :] < k_sub[:, None],
            (rng.random(n) < 0.5)[:, None],
            (rng.random(n) < 0.6)[:, None],
            (rng.random(n) < 0.3)[:, None],
        ],
        axis=1,
    )
    use &= cols >= 0
    # A topic tag can coincide with a sub-topic tag (e.g. "cooking"); keep the first occurrence only.
    dup = np.zeros_like(use)
    for j in range(1, cols.shape[1]):
        dup[:, j] = ((cols[:, :j] == cols[:, j : j + 1]) & use[:, :j]).any(axis=1)
    use &= ~dup
    counts = use.sum(axis=1)
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int32)
    values = pa.array(vocab, pa.string()).take(pa.array(cols[use]))
    return pa.ListArray.from_arrays(pa.array(offsets), values)


_COUNTRIES = (
    ("US", "en", 0.24),
    ("IN", "hi", 0.10),
    ("BR", "pt", 0.09),
    ("ID", "id", 0.07),
    ("MX", "es", 0.06),
    ("GB", "en", 0.06),
    ("PH", "en", 0.05),
    ("DE", "de", 0.05),
    ("FR", "fr", 0.05),
    ("JP", "ja", 0.04),
    ("TR", "tr", 0.04),
    ("ES", "es", 0.04),
    ("CA", "en", 0.04),
    ("KR", "ko", 0.03),
    ("IT", "it", 0.02),
    ("AU", "en", 0.02),
)
_AGE_GROUPS = (("13-17", 0.12), ("18-24", 0.35), ("25-34", 0.28), ("35-44", 0.14), ("45-54", 0.07), ("55+", 0.04))


def _users_table(rng: np.random.Generator, users: _Users, user_ids: pa.Array) -> pa.Table:
    n = len(users.created_ms)
    c_prob = np.array([c[2] for c in _COUNTRIES])
    country = rng.choice(len(_COUNTRIES), n, p=c_prob / c_prob.sum())
    languages = sorted({c[1] for c in _COUNTRIES})
    native = np.array([languages.index(c[1]) for c in _COUNTRIES])[country]
    # Many users outside English-speaking countries still run the app in English.
    language = np.where(rng.random(n) < 0.15, languages.index("en"), native)
    a_prob = np.array([a[1] for a in _AGE_GROUPS])
    age = rng.choice(len(_AGE_GROUPS), n, p=a_prob / a_prob.sum())

    def optional(values: Sequence[str], idx: np.ndarray, missing: float) -> pa.Array:
        # Profiles are incomplete: a null index becomes a null value.
        return pa.array(list(values), pa.string()).take(pa.array(idx, mask=rng.random(n) < missing))

    return pa.table(
        {
            "user_id": user_ids,
            "created_at": _ts(users.created_ms),
            "country": optional([c[0] for c in _COUNTRIES], country, 0.02),
            "language": optional(languages, language, 0.03),
            "age_group": optional([a[0] for a in _AGE_GROUPS], age, 0.08),
        }
    )


def _follows_table(follows: _Follows, user_ids: pa.Array) -> pa.Table:
    return pa.table(
        {
            "user_id": user_ids.take(pa.array(follows.user)),
            "creator_id": user_ids.take(pa.array(follows.creator)),
            "ts": _ts(follows.ts_ms),
        }
    )


def _interactions_table(inter: _Interactions, user_ids: pa.Array, video_ids: pa.Array) -> pa.Table:
    return pa.table(
        {
            "user_id": user_ids.take(pa.array(inter.user)),
            "video_id": video_ids.take(pa.array(inter.video)),
            "ts": _ts(inter.ts_ms),
            "watch_time_s": pa.array(inter.watch_s),
            "completion": pa.array(inter.completion),
            "liked": pa.array(inter.liked),
            "shared": pa.array(inter.shared),
            "commented": pa.array(inter.commented),
        }
    )
