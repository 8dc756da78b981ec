"""The model organisms: small LLaVA-class models trained by the project on synthetic conflict data and
shipped inside the package (`checkpoint/`, the natural one; `anchor/`, the planted one), each with its
`MODEL_CARD.md`. Their folders are named in `core.paths`.

Importing this package is cheap (no torch); training lives in `train.py`, the parts in `build.py`.
"""
