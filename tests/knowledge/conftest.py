"""Knowledge fixtures: the embedding model (loaded once), a generated corpus, a pre-ingested origin.

The corpus is ingested once per session into an origin data folder (a real ingest through
`LocalTarget`); each test that needs a populated origin gets a copy of that folder, so the
embedding model runs over the corpus once, not once per test.
"""

import asyncio
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

import numpy as np
import pytest
from aiohttp.test_utils import TestServer

from cachenet.knowledge.embedder import Embedder, load_embedder
from registry.config import OriginSettings
from registry.knowledge.ingest import IngestReport, ingest_paths
from registry.publish import LocalTarget

COLLECTION: Final = "facts"
SHARDS: Final = 8
CHUNK_WORDS: Final = 80
OVERLAP_WORDS: Final = 10
TOPICS: Final = (
    ("astronomy", "telescope", "nebula", "orbit", "comet", "observatory"),
    ("baking", "sourdough", "oven", "flour", "crust", "yeast"),
    ("sailing", "harbour", "mast", "tide", "regatta", "keel"),
    ("beekeeping", "hive", "honey", "queen bee", "pollen", "swarm"),
    ("volcanology", "lava", "magma", "crater", "eruption", "ash cloud"),
    ("chess", "opening", "endgame", "grandmaster", "bishop", "checkmate"),
    ("cycling", "peloton", "gear ratio", "mountain stage", "saddle", "sprint"),
    ("cardiology", "heart valve", "arrhythmia", "stent", "pulse", "cholesterol"),
    ("jazz", "saxophone", "improvisation", "swing rhythm", "trumpet", "bebop"),
    ("glaciology", "ice sheet", "crevasse", "meltwater", "moraine", "snowfall"),
    ("cryptography", "cipher", "private key", "hash function", "signature", "entropy"),
    ("viticulture", "vineyard", "grape harvest", "fermentation", "barrel", "tannin"),
    ("railways", "locomotive", "signal box", "timetable", "gauge", "freight wagon"),
    ("origami", "paper crane", "fold pattern", "crease", "square sheet", "valley fold"),
    ("mycology", "mushroom", "spore print", "mycelium", "forest floor", "toadstool"),
    ("archery", "longbow", "arrow", "target face", "fletching", "draw weight"),
    ("pottery", "kiln", "glaze", "potter's wheel", "clay body", "stoneware"),
    ("ornithology", "migration", "plumage", "nest", "songbird", "binoculars"),
    ("robotics", "servo motor", "gripper", "path planning", "lidar", "actuator"),
    ("tea culture", "green tea", "teapot", "infusion", "tea ceremony", "oolong"),
    ("seismology", "earthquake", "fault line", "seismograph", "aftershock", "tremor"),
    ("fencing", "epee", "parry", "lunge", "fencing mask", "riposte"),
    ("cartography", "map projection", "contour line", "legend", "surveyor", "atlas"),
    ("perfumery", "fragrance", "essential oil", "top note", "musk", "distillation"),
)
DOCS_PER_TOPIC: Final = 10
_FIRST: Final = (
    "Alma",
    "Boris",
    "Chiara",
    "Dmitri",
    "Elif",
    "Farid",
    "Greta",
    "Hiro",
    "Ines",
    "Jonas",
    "Kamala",
    "Lev",
    "Mireille",
    "Nuno",
    "Olga",
    "Pavel",
    "Quinn",
    "Rosa",
    "Sven",
    "Tariq",
)
_LAST: Final = (
    "Abara",
    "Brandt",
    "Castell",
    "Dvorak",
    "Eklund",
    "Ferreira",
    "Gallo",
    "Haddad",
    "Ivanova",
    "Jansen",
    "Kowalski",
    "Lindqvist",
    "Moreau",
    "Nakamura",
    "Okafor",
    "Petrov",
)
_TOWNS: Final = (
    "Arbroath",
    "Bergamo",
    "Cluj",
    "Dunedin",
    "Esbjerg",
    "Faro",
    "Galway",
    "Hobart",
    "Izmir",
    "Jyvaskyla",
    "Kotor",
    "Lund",
    "Matera",
    "Nantes",
    "Oulu",
    "Porto",
    "Quimper",
    "Riga",
)


def make_documents(seed: int = 7) -> dict[str, str]:
    """A few hundred short documents, ten per distinct topic, each naming a unique person."""
    rng = np.random.default_rng(seed)
    docs: dict[str, str] = {}
    used: set[str] = set()
    for t, (topic, *words) in enumerate(TOPICS):
        for i in range(DOCS_PER_TOPIC):
            while True:
                person = f"{_FIRST[rng.integers(len(_FIRST))]} {_LAST[rng.integers(len(_LAST))]}"
                if person not in used:
                    used.add(person)
                    break
            town = _TOWNS[rng.integers(len(_TOWNS))]
            a, b, c, d = (words[j] for j in rng.permutation(len(words))[:4])
            years, count = int(rng.integers(2, 40)), int(rng.integers(10, 999))
            docs[f"{topic.replace(' ', '-')}/{t:02d}-{i:02d}.md"] = (
                f"# {person} and {topic}\n\n"
                f"{person} from {town} has worked on {topic} for {years} years, "
                f"with a focus on the {a}. "
                f"Colleagues remember how {person} explained the {b} and the {c} to visitors. "
                f"In {town}, {person} once recorded {count} observations about the {d}."
            )
    return docs


def write_corpus(folder: Path, docs: dict[str, str]) -> Path:
    """Write documents as files under `folder`."""
    for rel, text in docs.items():
        path = folder / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return folder


def passage(text: str) -> str:
    """The chunk text a document becomes (whitespace collapsed, as the chunker joins words)."""
    return " ".join(text.split())


@pytest.fixture(scope="session")
def embedder() -> Embedder:
    """The real all-MiniLM-L6-v2 embedder, loaded once per session."""
    return load_embedder()


@pytest.fixture(scope="session")
def corpus_docs() -> dict[str, str]:
    """The generated documents: relative path → text."""
    return make_documents()


@pytest.fixture(scope="session")
def ingested(
    tmp_path_factory: pytest.TempPathFactory, embedder: Embedder, corpus_docs: dict[str, str]
) -> tuple[Path, Path, IngestReport]:
    """(corpus folder, origin data folder holding the ingested collection, the ingest report)."""
    root = tmp_path_factory.mktemp("knowledge")
    corpus = write_corpus(root / "corpus", corpus_docs)
    settings = OriginSettings(data_dir=root / "origin", fsync=False)

    async def run() -> IngestReport:
        target = LocalTarget(settings)
        try:
            return await ingest_paths(
                [corpus],
                collection=COLLECTION,
                target=target,
                embedder=embedder,
                chunk_size=CHUNK_WORDS,
                overlap=OVERLAP_WORDS,
                shards=SHARDS,
                seed=1,
            )
        finally:
            await target.close()

    return corpus, settings.data_dir, asyncio.run(run())


@pytest.fixture
def seeded_origin_data(origin_settings: OriginSettings, ingested: tuple[Path, Path, IngestReport]) -> Path:
    """The origin's data folder, filled with a copy of the ingested collection."""
    shutil.copytree(ingested[1], origin_settings.data_dir, dirs_exist_ok=True)
    return origin_settings.data_dir


@pytest.fixture
async def knowledge_origin(seeded_origin_data: Path, origin_server: TestServer) -> TestServer:
    """A real origin serving the ingested collection."""
    return origin_server


def url_of(server: TestServer) -> str:
    """Base URL of a test server."""
    return str(server.make_url("")).rstrip("/")


EdgeFactory = Callable[..., Any]
