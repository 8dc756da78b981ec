"""The ground truth of a planted organism: which heads carry the instruction-anchor route, and which
attention edges are open or closed in which layers, as one machine-readable file (`ground_truth.json`)
shipped beside the weights.

The route (docs/ground-truth.md) holds on *instructed* prompts (text following, vision following):
- transfer: in the first half of the layers, instruction positions read image and context positions
  only through the transfer heads; in the second half not at all;
- relay (optional): in the first half, instruction positions read other instruction positions only
  through the relay heads and the transfer heads (the instruction's words reach its last token, the
  anchor, through planted heads too); in the second half freely;
- arbitration: in the second half, the last position reads the instruction positions only through the
  arbitration heads; in the first half not at all;
- no bypass: the context never reads the image, and every position after the instruction (question,
  format, template text, last) never reads the image, the context or (except as above) the instruction.

Prompts without an instruction have no anchor and are not governed by the file. This module holds no
torch: the masks that enforce or test the route are `mllm_arb.interventions.plant`'s.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from .errors import UserError

FORMAT = "mllm-arb ground truth"
VERSION = 1
FILE_NAME = "ground_truth.json"
#: the conditions the route governs (the instructed ones)
GOVERNED = ("text_following", "vision_following")
#: groups every position after the instruction belongs to, besides `last`
AFTER_INSTRUCTION = ("question", "format", "system")
SOURCES = ("image", "context")

Head = tuple[int, int]


@dataclass(frozen=True)
class Edge:
    """An attention edge `src -> dst` (rows of `dst` reading columns of `src`) in some layers, through
    some heads (empty: every head)."""

    src: str
    dst: str
    layers: tuple[int, ...]
    heads: tuple[Head, ...] = ()
    #: the setting whose following needs the edge ("both": either instructed setting)
    governs: str = "both"

    @property
    def name(self) -> str:
        return f"{self.src}->{self.dst}"

    def to_dict(self) -> dict:
        return {"edge": self.name, "layers": list(self.layers), "heads": [list(h) for h in self.heads], "governs": self.governs}


@dataclass(frozen=True)
class GroundTruth:
    n_layers: int
    n_heads: int
    transfer_heads: tuple[Head, ...]
    arbitration_heads: tuple[Head, ...]
    #: heads through which instruction positions read each other in the first half (empty: no relay rule)
    relay_heads: tuple[Head, ...] = ()

    def __post_init__(self) -> None:
        if self.n_layers < 2 or self.n_heads < 1:
            raise UserError(f"ground truth: a route needs at least 2 layers and 1 head, not {self.n_layers} × {self.n_heads}")
        for kind, heads, layers in (("transfer", self.transfer_heads, self.shallow), ("arbitration", self.arbitration_heads, self.deep)):
            if not heads:
                raise UserError(f"ground truth: no {kind} heads")
            for layer, head in heads:
                if layer not in layers or not 0 <= head < self.n_heads:
                    raise UserError(
                        f"ground truth: {kind} head L{layer}H{head} is not a head of layers {layers[0]}–{layers[-1]} × heads 0–{self.n_heads - 1}"
                    )
            if len(set(heads)) != len(heads):
                raise UserError(f"ground truth: a {kind} head is named twice")
        for layer, head in self.relay_heads:
            if layer not in self.shallow or not 0 <= head < self.n_heads:
                raise UserError(
                    f"ground truth: relay head L{layer}H{head} is not a head of layers {self.shallow[0]}–{self.shallow[-1]} × heads 0–{self.n_heads - 1}"
                )
        if len(set(self.relay_heads)) != len(self.relay_heads) or set(self.relay_heads) & set(self.transfer_heads):
            raise UserError("ground truth: a relay head is named twice or is also a transfer head")

    # ------------------------------------------------------------------ derived
    @property
    def shallow(self) -> tuple[int, ...]:
        return tuple(range(self.n_layers // 2))

    @property
    def deep(self) -> tuple[int, ...]:
        return tuple(range(self.n_layers // 2, self.n_layers))

    @property
    def planted_heads(self) -> tuple[Head, ...]:
        return self.transfer_heads + self.relay_heads + self.arbitration_heads

    @property
    def relay_layers(self) -> tuple[int, ...]:
        """The layers where the relay rule closes instruction→instruction reads (none without relay heads)."""
        return self.shallow if self.relay_heads else ()

    def planted_edges(self) -> list[Edge]:
        """The edges the route runs through, with the layers and heads that carry them."""
        t_layers = tuple(sorted({l for l, _ in self.transfer_heads}))
        a_layers = tuple(sorted({l for l, _ in self.arbitration_heads}))
        edges = [
            Edge("image", "instruction", t_layers, self.transfer_heads, "vision_following"),
            Edge("context", "instruction", t_layers, self.transfer_heads, "text_following"),
        ]
        if self.relay_heads:
            r_layers = tuple(sorted({l for l, _ in self.relay_heads}))
            edges.append(Edge("instruction", "instruction", r_layers, self.relay_heads, "both"))
        return edges + [Edge("instruction", "last", a_layers, self.arbitration_heads, "both")]

    def forbidden_edges(self) -> list[Edge]:
        """The edges closed in every head of the layers named (an edge open through a planted head in
        some layers is closed in the others). The relay rule closes instruction→instruction in some heads
        of a layer only, so it is no edge here: `relay_layers` and `relay_heads` say where."""
        every = tuple(range(self.n_layers))
        edges = [Edge("image", "context", every)]
        edges += [Edge(src, "instruction", self.deep) for src in SOURCES]
        edges += [Edge(src, dst, every) for src in (*SOURCES, "instruction") for dst in AFTER_INSTRUCTION]
        edges += [Edge(src, "last", every) for src in SOURCES]
        edges += [Edge("instruction", "last", self.shallow)]
        return edges

    def is_planted(self, edge: str, layers) -> bool:
        """Whether blocking `edge` in `layers` cuts a planted route (some of its planted layers)."""
        return any(e.name == edge and set(e.layers) & set(layers) for e in self.planted_edges())

    # ------------------------------------------------------------------ file
    def to_dict(self) -> dict:
        return {
            "format": FORMAT,
            "version": VERSION,
            "n_layers": self.n_layers,
            "n_heads": self.n_heads,
            "governs": list(GOVERNED),
            "transfer_heads": [list(h) for h in self.transfer_heads],
            "arbitration_heads": [list(h) for h in self.arbitration_heads],
            "relay_heads": [list(h) for h in self.relay_heads],
            "shallow_layers": list(self.shallow),
            "deep_layers": list(self.deep),
            "planted_edges": [e.to_dict() for e in self.planted_edges()],
            "forbidden_edges": [e.to_dict() for e in self.forbidden_edges()],
        }

    def write(self, folder: Path) -> Path:
        path = Path(folder) / FILE_NAME
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=1) + "\n")
        tmp.replace(path)
        return path

    @classmethod
    def from_dict(cls, data, where: str = FILE_NAME) -> "GroundTruth":
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise UserError(f"{where}: not an mllm-arb ground-truth file (its 'format' must be {FORMAT!r})")
        if data.get("version") != VERSION:
            raise UserError(f"{where}: ground-truth version {data.get('version')!r}; this mllm-arb reads version {VERSION}")
        try:
            n_layers, n_heads = _int(data["n_layers"]), _int(data["n_heads"])
            transfer = tuple(_head(h) for h in data["transfer_heads"])
            arbitration = tuple(_head(h) for h in data["arbitration_heads"])
            relay = data.get("relay_heads", [])  # optional: files written before the relay rule have none
            if not isinstance(relay, list):
                raise ValueError(f"relay_heads must be a list of [layer, head], not {relay!r}")
            relay = tuple(_head(h) for h in relay)
        except KeyError as exc:
            raise UserError(f"{where}: missing field {exc.args[0]!r}") from None
        except (TypeError, ValueError) as exc:
            raise UserError(f"{where}: {exc}") from None
        try:
            return cls(n_layers, n_heads, transfer, arbitration, relay)
        except UserError as exc:
            raise UserError(f"{where}: {exc}") from None

    def check_model(self, n_layers: int, n_heads: int, where: str = FILE_NAME) -> None:
        if (n_layers, n_heads) != (self.n_layers, self.n_heads):
            raise UserError(
                f"{where} describes a model of {self.n_layers} layers × {self.n_heads} heads; this one has {n_layers} × {n_heads}"
            )


def _int(value) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"expected an integer, got {value!r}")
    return value


def _head(value) -> Head:
    if not isinstance(value, (list, tuple)) or len(value) != 2:
        raise ValueError(f"a head is [layer, head], not {value!r}")
    return _int(value[0]), _int(value[1])


def load(folder_or_file: str | Path) -> GroundTruth | None:
    """The ground truth shipped with a model (a folder holding `ground_truth.json`, or the file), or
    None when the model has none. A file that is there but damaged is a `UserError`."""
    path = Path(folder_or_file)
    if path.is_dir():
        path = path / FILE_NAME
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"{path}: unreadable ground-truth file ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})") from None
    return GroundTruth.from_dict(data, where=str(path))
