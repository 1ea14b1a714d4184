"""Cache keys that cannot go stale: each artifact kind's CODE_VERSION is tied to the source of
the code that computes it.

``artifacts.CODE_SOURCE_DIGEST[kind]`` records a digest of the stage's source (STAGE_SOURCES
below; comments, docstrings and blank lines do not count) taken when ``CODE_VERSION[kind]`` was
last set. When that code changes and the record does not, this test fails naming the stage and
saying what to do: bump the version if the change can alter the artifact's values (so old
artifacts are no longer reused), then record the new digest.
"""
from __future__ import annotations

import hashlib
import io
import tokenize
from pathlib import Path

import pytest

from cdissect_common import artifacts

REPO = Path(__file__).resolve().parents[2]
EMBEDDER = "services/embedder/cdissect_embedder/**/*.py"
COMMON = "services/common/cdissect_common/"
# The code whose output each artifact kind stores (its service package, plus the common modules
# that shape the values or the keys). __main__.py starts a process.
# Images reach the models through images.py (decoding), prefetch.py and parallel.py (order,
# batches) and devices.py (stacking, the copy to the device).
IMAGE_PATH = (f"{COMMON}images.py", f"{COMMON}prefetch.py", f"{COMMON}parallel.py", f"{COMMON}devices.py")
# CLIP models are named, loaded and given their preprocessing by clip_checkpoints.py (the embedder's
# CLIP and the activations service's clip: targets); model_specs.py splits model strings into the
# model and its checkpoint (the model_id of every key).
CLIP_MODELS = (f"{COMMON}clip_checkpoints.py", f"{COMMON}model_specs.py")
# Not listed, because they cannot change a value under an unchanged key: manifest.py (read_shard
# refuses a shard whose images differ from the manifest's names and digests), userfiles.py and
# downloads.py (files are verified by the sha256 that keys carry), model_cache.py, batching.py
# (inline calls, which store nothing).
STAGE_SOURCES: dict[str, tuple[str, ...]] = {
    "embeddings/image": (EMBEDDER, *IMAGE_PATH, *CLIP_MODELS),
    "embeddings/text": (EMBEDDER, *CLIP_MODELS),
    # checkpoint_format.py picks the loader of a checkpoint file.
    "activations": ("services/activations/cdissect_activations/**/*.py", *IMAGE_PATH, *CLIP_MODELS,
                    f"{COMMON}checkpoint_format.py"),
    # evaluation.py: the held-out split (heldout_mask) and the selection defaults.
    "labels": ("services/labeler/cdissect_labeler/**/*.py", f"{COMMON}vocabulary.py", f"{COMMON}evaluation.py"),
}


def code_text(source: str) -> str:
    """The file's text without comments, docstrings (bare string statements), trailing spaces
    and blank lines: what runs. Cut by the tokenizer's positions, so any Python gives the same."""
    tokens = [t for t in tokenize.generate_tokens(io.StringIO(source).readline)]
    significant = [t for t in tokens if t.type not in (tokenize.COMMENT, tokenize.NL)]
    cuts = [(t.start, t.end) for t in tokens if t.type == tokenize.COMMENT]
    for i, tok in enumerate(significant):
        before = significant[i - 1].type if i else tokenize.NEWLINE
        after = significant[i + 1].type if i + 1 < len(significant) else tokenize.ENDMARKER
        if tok.type == tokenize.STRING and before in (tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT) \
                and after in (tokenize.NEWLINE, tokenize.ENDMARKER):
            cuts.append((tok.start, tok.end))
    line_starts = [0]
    for line in io.StringIO(source).readlines():          # the tokenizer's lines
        line_starts.append(line_starts[-1] + len(line))
    kept, pos = [], 0
    for (row0, col0), (row1, col1) in sorted(cuts):
        start, end = line_starts[row0 - 1] + col0, line_starts[row1 - 1] + col1
        kept.append(source[pos:start])
        pos = max(pos, end)
    kept.append(source[pos:])
    lines = (line.rstrip() for line in "".join(kept).splitlines())
    return "\n".join(line for line in lines if line)


def stage_files(kind: str) -> list[Path]:
    files = {p for pattern in STAGE_SOURCES[kind] for p in REPO.glob(pattern) if p.name != "__main__.py"}
    return sorted(files)


def source_digest(kind: str) -> str:
    """sha256 over the stage's files (by repository path) and their code tokens."""
    digest = hashlib.sha256()
    for path in stage_files(kind):
        digest.update(path.relative_to(REPO).as_posix().encode() + b"\0")
        digest.update(code_text(path.read_text()).encode() + b"\0")
    return digest.hexdigest()


def test_every_artifact_kind_has_sources_and_a_recorded_digest() -> None:
    assert set(STAGE_SOURCES) == set(artifacts.CODE_VERSION) == set(artifacts.CODE_SOURCE_DIGEST)
    for kind in STAGE_SOURCES:
        assert stage_files(kind), f"no source files match STAGE_SOURCES[{kind!r}]"


@pytest.mark.parametrize("kind", sorted(artifacts.CODE_VERSION))
def test_code_version_matches_the_source_of_its_stage(kind: str) -> None:
    current = source_digest(kind)
    assert artifacts.CODE_SOURCE_DIGEST[kind] == current, (
        f"stage {kind!r}: the code that computes it changed since CODE_VERSION[{kind!r}] = "
        f"{artifacts.CODE_VERSION[kind]!r} was recorded ({len(stage_files(kind))} files: "
        f"{', '.join(sorted(set(STAGE_SOURCES[kind])))}). In services/common/cdissect_common/artifacts.py: "
        f"if the change can alter the values of {kind} artifacts, bump CODE_VERSION[{kind!r}] (old artifacts "
        f"are then recomputed, not reused); in every case set CODE_SOURCE_DIGEST[{kind!r}] = {current!r}.")


def test_comments_and_docstrings_do_not_count_but_code_does() -> None:
    base = 'def f(x):\n    """Doc."""\n    return x + 1  # note\n'
    assert code_text(base) == code_text('def f(x):\n    """Other\n    doc."""\n\n    return x + 1\n') \
        == "def f(x):\n    return x + 1"
    assert code_text(base) != code_text('def f(x):\n    """Doc."""\n    return x + 2\n')
    assert "'# not a comment'" in code_text("y = '# not a comment'  # a comment\n")


def test_code_versions_are_small_numbers() -> None:
    """A version is a counter bumped by hand ("1", "2", ...), never a digest pasted into the wrong
    table (which once happened: keys then changed with no code change to explain it)."""
    bad = {kind: v for kind, v in artifacts.CODE_VERSION.items() if not (v.isdigit() and len(v) <= 4)}
    assert not bad, f"CODE_VERSION values must be small decimal counters; fix {bad} in cdissect_common/artifacts.py"
