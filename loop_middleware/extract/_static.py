"""The static embedding model shipped inside the package: good intents on the core install.

``pip install loop-middleware`` brings no torch, so MiniLM cannot run there. What does run is a
model2vec static model (a token -> vector table, a tokenizer, and a mean): the one
:func:`~loop_middleware.extract._embed.distill_static_model` distils from all-MiniLM-L6-v2,
stored here with int8 rows and one float scale per token (8 MB; cosine 0.99997 to the float32
table on BANKING77). It needs only numpy, ``tokenizers`` and ``model2vec``, and loads from this
folder: nothing is downloaded, ever.

Quality, from ``benchmarks/intent_discovery.py`` on BANKING77 (k not given): NMI about 0.72
with this model, 0.82 with MiniLM (the ``[embeddings]`` extra), 0.57 with TF-IDF.

Rebuild (needs the ``[embeddings]`` extra, about a minute on two cores)::

    python -m loop_middleware.extract._static
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

__all__ = ["SHIPPED_STATIC_MODEL", "quantize_static_model", "shipped_static_model"]

SHIPPED_STATIC_MODEL = Path(__file__).resolve().parent / "static_model"
"""Folder of the shipped model (model2vec layout: ``model.safetensors``, ``tokenizer.json``,
``config.json``)."""

_README = """---
license: apache-2.0
library_name: model2vec
base_model: sentence-transformers/all-MiniLM-L6-v2
---

# static-minilm (shipped with loop-middleware)

A model2vec static embedding model distilled from sentence-transformers/all-MiniLM-L6-v2
(Apache-2.0, <https://www.sbert.net>) by `loop_middleware.extract._embed.distill_static_model`
(recipe {recipe}: every WordPiece token through the transformer, PCA to {dims} dimensions, SIF
weights from a Zipf estimate of token frequency), stored as int8 rows with one float32 scale per
token (`weights`). The tokenizer is MiniLM's own (`tokenizer.json`, Apache-2.0).

Rebuild: `python -m loop_middleware.extract._static` (needs `loop-middleware[embeddings]`).
"""


def shipped_static_model() -> Path | None:
    """The shipped model's folder, or None when it is missing (a broken install)."""
    path = SHIPPED_STATIC_MODEL
    ok = all((path / f).is_file() for f in ("config.json", "model.safetensors", "tokenizer.json"))
    return path if ok else None


def quantize_static_model(source: Path, target: Path) -> Path:
    """Write ``source`` (a float model2vec model) to ``target`` with int8 rows and a float32
    scale per token: 4x smaller, same vectors up to rounding (each row keeps its own range, so
    the small rows of frequent tokens lose nothing to the big ones)."""
    from model2vec import StaticModel

    model = StaticModel.from_pretrained(str(source), force_download=False)
    table = np.asarray(model.embedding, dtype=np.float32)
    scale = np.abs(table).max(axis=1) / 127.0
    scale[scale == 0] = 1.0
    rows = np.clip(np.rint(table / scale[:, None]), -127, 127).astype(np.int8)
    config = dict(model.config)
    quantized = StaticModel(vectors=rows, tokenizer=model.tokenizer, config=config,
                            normalize=True, weights=scale.astype(np.float32),
                            base_model_name=model.base_model_name)
    tmp = Path(tempfile.mkdtemp(prefix="static-", dir=target.parent))
    quantized.save_pretrained(str(tmp))
    (tmp / "README.md").write_text(_README.format(recipe=config.get("recipe", "?"),
                                                  dims=table.shape[1]))
    # mkdtemp makes a private folder; the shipped files must be readable by every user.
    tmp.chmod(0o755)
    for f in tmp.iterdir():
        f.chmod(0o644)
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)
    return target


def _build() -> int:  # pragma: no cover - a maintainer's tool, needs torch
    from loop_middleware.extract._embed import distill_static_model

    with tempfile.TemporaryDirectory() as work:
        source = distill_static_model(Path(work) / "float")
        quantize_static_model(source, SHIPPED_STATIC_MODEL)
    config = json.loads((SHIPPED_STATIC_MODEL / "config.json").read_text())
    size = sum(f.stat().st_size for f in SHIPPED_STATIC_MODEL.iterdir()) / 1e6
    print(f"wrote {SHIPPED_STATIC_MODEL} ({size:.1f} MB, {config})")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(_build())
