"""Prefix reuse: resume a forward pass at decoder layer l from the residual stream of one plain pass.

An intervention acting from layer l on leaves layers < l as they were, so the input of layer l is the
same for every variant of it. `PrefixRun` runs the model once with forward pre-hooks that record what
each text decoder layer was called with: its hidden states and its keyword arguments exactly as the model
built them (masks, position embeddings, position ids: Qwen2-VL's 3-D rotary, Gemma 3's per-layer-type
masks with bidirectional image attention). A variant then calls the model's own decoder layer modules
from layer l on with those arguments, and the final norm and unembedding at the last positions only.
Nothing of a model's forward is re-implemented: only the loop over the layers is ours, so every hook an
intervention registers inside the layers (head edits, knockout's attention function) acts as usual.

Variants are stacked along the batch: `resume(l, hidden, n_variants=V)` tiles the layer-l input and every
per-row keyword tensor V times, variant-major (rows `v*B .. v*B + B - 1` are variant v), so one pass runs V
interventions whose edits address different row blocks (see `variant_rows`).

Suffix sweeps: an intervention that touches only positions `s..` (a knockout of edges into `last` or the
instruction, a head edit at the last position) leaves every earlier position as it was in every layer,
because no earlier position attends to a later one. `suffix_sweep` runs the model's own layers on
positions `s..` alone, and an attention wrapper puts the plain pass's keys and values of positions `< s`
in front of theirs, with the model's own mask cut to those query rows. It walks the layers once, in step
with a plain pass that yields each layer's keys and values when they are needed (one layer's at a time,
not a whole cache), and carries every variant's suffix from its first layer to the last. `start_for`
picks `s` and moves it back wherever the mask lets an earlier position see a later one (Gemma 3's
bidirectional attention inside an image), so the result is the full resume's.

Last-position sweeps: when every variant touches only the final position (a head edited at `last`, every
row's last position being the final one, as left padding makes it), `last_sweep` stacks the variants along
the sequence instead of the batch: variant v is query column v of one `[B, V, d]` pass per layer, whose
keys are the plain pass's positions `< T - 1`, shared by all columns rather than copied per variant, and
the columns' own keys, each column seeing only its own (a block-diagonal mask, as in tree decoding).
"""

from __future__ import annotations

import bisect
import inspect
from collections.abc import Callable, Iterator, Mapping, MutableMapping, Sequence
from contextlib import AbstractContextManager, ExitStack
from functools import cached_property

import torch

from ..models.adapter import Batch
from .attention_interface import as_mask, root_implementation, text_implementation, wrap_text_attention
from ..models.ledger import zero_logits
from .gaps import Gaps, record_gaps

#: layer keyword arguments that carry the sequence, and the dimension it is on
_SEQUENCE_DIMS = {"attention_mask": -2, "position_embeddings": -2, "position_ids": -1, "cache_position": -1,
                  "per_layer_input": -2}


def _by_name(module: torch.nn.Module, args: tuple, kwargs: dict) -> dict:
    """A layer call's arguments, those passed by position named as the layer's `forward` names them
    (Gemma 4 passes each layer's per-layer input second, by position)."""
    if not args:
        return dict(kwargs)
    names = list(inspect.signature(module.forward).parameters)
    if len(args) > len(names) or any(name in kwargs for name in names[: len(args)]):
        raise RuntimeError(f"{type(module).__name__} was called with {len(args)} positional arguments that its forward cannot name")
    return {**dict(zip(names, args)), **kwargs}


def _tile(value, n_rows: int, times: int, memo: dict):
    """`value` (a layer keyword argument) with every per-row tensor repeated `times` along the batch.

    A tensor is per row when its first dimension is the batch's; a first dimension of 1 broadcasts
    over any batch and stays as it is. Anything else cannot be stacked safely, so it is an error.
    Tensors shared between layers (one mask for many layers) are tiled once (`memo`). A mutable
    mapping is state that layers write into as they run (Gemma 4's keys and values shared between
    layers): every pass gets its own copy (one per pass through `memo`), so that a variant's writes
    never reach the recorded pass or another variant, even unstacked.
    """
    if isinstance(value, MutableMapping) and not isinstance(value, dict):
        if id(value) not in memo:
            memo[id(value)] = type(value)({k: _tile(v, n_rows, times, memo) for k, v in value.items()})
        return memo[id(value)]
    if isinstance(value, dict):  # a call's keyword arguments: a mapping above may sit inside
        return {k: _tile(v, n_rows, times, memo) for k, v in value.items()}
    if times == 1:
        return value
    if isinstance(value, torch.Tensor):
        if id(value) in memo:
            return memo[id(value)]
        if value.ndim == 0 or (value.shape[0] == 1 and n_rows != 1):
            out = value
        elif value.shape[0] == n_rows:
            out = value.repeat(times, *([1] * (value.ndim - 1)))
        else:
            raise ValueError(f"a decoder-layer argument of shape {tuple(value.shape)} has no batch dimension of {n_rows} rows to stack")
        memo[id(value)] = out
        return out
    if isinstance(value, (tuple, list)):
        return type(value)(_tile(v, n_rows, times, memo) for v in value)
    return value


def variant_rows(n_rows: int, n_variants: int, variant: int, where: torch.Tensor | None = None) -> torch.Tensor:
    """`[V*B]` (or `[V*B, T]` given a `[B, T]` mask `where`) selecting variant `variant`'s rows of a stack."""
    if where is None:
        out = torch.zeros(n_variants * n_rows, dtype=torch.bool)
        out[variant * n_rows : (variant + 1) * n_rows] = True
        return out
    out = torch.zeros(n_variants * n_rows, *where.shape[1:], dtype=torch.bool, device=where.device)
    out[variant * n_rows : (variant + 1) * n_rows] = where.to(torch.bool)
    return out


def variant_columns(n_variants: int, variant: int, where: torch.Tensor) -> torch.Tensor:
    """`[B, V*S]` selecting variant `variant`'s block of a stack along the sequence (`last_sweep`), given the
    `[B, S]` positions `where` it touches."""
    rows, width = where.shape
    out = torch.zeros(rows, n_variants * width, dtype=torch.bool, device=where.device)
    out[:, variant * width : (variant + 1) * width] = where.to(torch.bool)
    return out


def _spread(value, key: str, times: int, memo: dict):
    """Layer keyword argument `value` (named `key`), cut to the final query position, repeated `times`
    along the sequence: one query column per variant (the mask is built apart, `_column_mask`)."""
    if isinstance(value, torch.Tensor):
        dim = _SEQUENCE_DIMS.get(key)
        if dim is None or value.ndim < -dim or value.shape[dim] != 1:
            return value
        if id(value) not in memo:
            shape = list(value.shape)
            shape[dim] = times
            memo[id(value)] = value.expand(shape)
        return memo[id(value)]
    if isinstance(value, (tuple, list)):
        return type(value)(_spread(v, key, times, memo) for v in value)
    return value


def _keeping(kept: dict):
    """An attention wrapper that leaves the call as it is and puts its keys and values in `kept["kv"]`,
    its queries in `kept["q"]` (the plain walk beside a sweep: each layer's, one layer at a time)."""

    def keep(base, module, query, key, value, *args, **kwargs):
        kept["kv"], kept["q"] = (key, value), query
        return base(module, query, key, value, *args, **kwargs)

    return keep


def _cut(value, key: str, start: int, n_tok: int):
    """Layer keyword argument `value` (named `key`) for query positions `start..` only."""
    if isinstance(value, torch.Tensor):
        dim = _SEQUENCE_DIMS.get(key)
        if dim is not None and value.ndim >= -dim and value.shape[dim] == n_tok:
            return value.narrow(dim, start, n_tok - start)
        if value.ndim and n_tok in value.shape[1:]:
            raise ValueError(f"decoder-layer argument {key!r} of shape {tuple(value.shape)} may run along the sequence")
        return value
    if isinstance(value, (tuple, list)):
        return type(value)(_cut(v, key, start, n_tok) for v in value)
    if isinstance(value, Mapping):  # state written along the whole sequence (Gemma 4's shared keys and values)
        raise ValueError(f"decoder-layer argument {key!r} is a mapping")
    return value


def _replacing(args: tuple, kwargs: dict, name: str, value) -> tuple[tuple, dict]:
    """A call's arguments with its first one, passed by position or as `name`, replaced by `value`."""
    if args:
        return (value, *args[1:]), kwargs
    return args, {**kwargs, name: value}


def _allowed(mask: torch.Tensor) -> torch.Tensor:
    """Where a boolean or additive attention mask lets a query see a key."""
    return mask if mask.dtype == torch.bool else mask > torch.finfo(mask.dtype).min / 2


def _mlp_at_final(module, args, kwargs):
    """A forward pre-hook on the last decoder layer's MLP when only the final position of that layer's
    output is read (the logits): the MLP runs on that position alone, and the layer's residual sum
    broadcasts its `[N, 1, d]` output over the sequence. The final position gets the same numbers (bit
    for bit on the organism's batches, measured; a product of a handful of rows may take another kernel
    and round differently); the others, which nothing reads after the last layer, get meaningless ones.
    It saves the MLP of T - 1 positions per pass."""
    hidden = args[0] if args else kwargs["hidden_states"]
    return _replacing(args, kwargs, "hidden_states", hidden[:, -1:])


def whole_passes(adapter) -> bool:
    """Whether no sweep can be cut to a suffix of the positions: a linear-attention layer's recurrent state,
    or state the layers hand on (Gemma 4's shared keys and values), runs along the whole sequence."""
    return bool(adapter.parts.linear or adapter.layer_state)


class PrefixRun:
    """One plain forward pass over `batch`, recorded so that later passes can start at any layer.

    `logits` are the plain pass's `[B, V]` last-position logits (`adapter.last_logits`). `states()`
    yields each layer's input in turn; `resume(layer, hidden, V)` finishes the pass from there, and
    `suffix_sweep` runs many variants that touch only positions `start..` (see the module docstring).

    With `grad=True` the pass's `logits` keep their autograd graph (attribution patching records and
    differentiates one pass); what is recorded is detached. `keep_final=True` also keeps every layer's
    keys and values and its input at the final position, so that `last_sweep` needs no plain walk over
    the layers (memory: the keys and values of every layer, which a pass under autograd holds anyway);
    ignored where no sweep can be cut to a suffix (`whole_passes`).
    """

    def __init__(self, adapter, batch: Batch, keep_final: bool = False, grad: bool = False) -> None:
        keep_final = keep_final and not whole_passes(adapter)
        self.adapter = adapter
        self.model = adapter.model
        self.parts = adapter.parts
        self.n_rows = len(batch)
        self.n_tokens = int(batch.inputs["input_ids"].shape[1])
        self.last = torch.tensor(batch.last, device=adapter.device)
        n_layers = self.parts.n_layers
        self._calls: list[dict | None] = [None] * n_layers
        self._first: torch.Tensor | None = None
        self._root_impl = root_implementation(text_implementation(self.model))
        self._reach: torch.Tensor | None = None
        #: `query_start`'s measured answers, by suffix start
        self._query_starts: dict[int, int] = {}
        #: with `keep_final`: every layer's (keys, values) and its `[B, 1, d]` input at the final position
        self._final: list[tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]] | None = None
        #: planning (`adapter.ledger`): layer calls are counted, not run, on hidden states of width 0
        self.ledger = adapter.ledger
        self._batch = batch
        if self.ledger is not None:
            self._plan(batch, keep_final)
            return
        self._width: int | None = None
        final_inputs: list[torch.Tensor] = []
        kv: list[tuple[torch.Tensor, torch.Tensor]] = []

        def keep(base, module, query, key, value, *args, **kwargs):
            kv.append((key.detach(), value.detach()))
            return base(module, query, key, value, *args, **kwargs)

        def record(index: int):
            def hook(module, args, kwargs):
                if self._calls[index] is not None:
                    raise RuntimeError(f"decoder layer {index} ran twice in one forward pass")
                rest = _by_name(module, args, kwargs)
                if "hidden_states" not in rest:
                    raise RuntimeError(f"decoder layer {index} was called without its hidden states")
                hidden = rest.pop("hidden_states")
                self._calls[index] = rest
                if index == 0:
                    self._first = hidden.detach()
                if keep_final:
                    final_inputs.append(hidden[:, -1:].detach().clone())  # not a view: it would keep the whole input

            return hook

        with ExitStack() as stack:
            for i, layer in enumerate(self.parts.layers):
                stack.callback(layer.register_forward_pre_hook(record(i), with_kwargs=True).remove)
            #: writes the model makes between layers (DeepStack), replayed wherever the layers run again
            self.gaps = stack.enter_context(record_gaps(adapter))
            if keep_final:
                stack.enter_context(wrap_text_attention(self.model, keep, "a last-position sweep"))
            self.logits = adapter.last_logits(batch, grad=grad)
        missing = [i for i, c in enumerate(self._calls) if c is None]
        if missing:
            raise RuntimeError(f"decoder layers {missing} did not run in the forward pass")
        if keep_final:
            if len(kv) != n_layers:
                raise RuntimeError(f"the text model ran its attention {len(kv)} times in a pass of {n_layers} layers")
            self._final = list(zip(final_inputs, kv))
        self._width = int(self._first.shape[-1])

    def _plan(self, batch: Batch, keep_final: bool) -> None:
        """The recorded pass, counted: empty layer arguments, width-0 states, zero logits."""
        self._calls = [{} for _ in range(self.parts.n_layers)]
        self._first = torch.zeros(self.n_rows, self.n_tokens, 0)
        self._width = _sizes(self.adapter)[0]
        self.gaps = Gaps(self.adapter)
        self.logits = self.ledger.forward(self.adapter, batch)
        if keep_final:
            nothing = torch.zeros(self.n_rows, 1, 0)
            self._final = [(nothing, (nothing, nothing))] * self.parts.n_layers

    def _planned_reach(self) -> torch.Tensor:
        """`_furthest_keys` from the token groups when planning: causal, except that an image sees its
        own later positions where the family says so (Gemma 3; Molmo 2's block from `mm_token_type_ids`)."""
        n = self.n_tokens
        reach = torch.arange(n)
        blocks = self._batch.inputs.get("mm_token_type_ids")
        if self.adapter.image_sees_ahead and blocks is not None:
            # Molmo 2: every image token of a row, markers included, in one block that sees its last position
            for row in (blocks.cpu() == 1):
                where = row.nonzero().flatten()
                if len(where):
                    reach[where] = torch.maximum(reach[where], where[-1])
        elif self.adapter.image_sees_ahead:
            for spans in self._batch.spans:
                image = sorted(spans.get("image", []))
                start = 0
                for k in range(1, len(image) + 1):  # contiguous runs of image positions
                    if k == len(image) or image[k] != image[k - 1] + 1:
                        block = torch.tensor(image[start:k])
                        reach[block] = torch.maximum(reach[block], torch.tensor(image[k - 1]))
                        start = k
        return torch.cummax(reach, 0).values

    @property
    def n_layers(self) -> int:
        return self.parts.n_layers

    # ------------------------------------------------------------------ where a suffix may start
    def _furthest_keys(self) -> torch.Tensor:
        """`[T]`: the furthest key any query at or before position t may see in any layer and row;
        all `T - 1` (no suffix possible) when some layer's arguments cannot be cut to a suffix."""
        n = self.n_tokens
        nowhere = torch.full((n,), n - 1)
        if whole_passes(self.adapter):  # a model without a family file: found below
            return nowhere
        if self.ledger is not None:
            return self._planned_reach()
        reach = torch.arange(n)  # a causal mask, and sdpa's shortcut for one (no mask)
        for kwargs in self._calls:
            try:
                for key, value in kwargs.items():
                    _cut(value, key, 0, n)
            except ValueError:
                return nowhere
            mask = kwargs.get("attention_mask")
            if mask is None:
                continue
            if not isinstance(mask, torch.Tensor) or mask.ndim != 4 or mask.shape[-2:] != (n, n):
                return nowhere
            seen = _allowed(mask).any(0).any(0).cpu()  # [T_q, T_k]
            columns = torch.arange(n).expand(n, n)
            reach = torch.maximum(reach, torch.where(seen, columns, -1).amax(1))
        return torch.cummax(reach, 0).values

    def start_for(self, touched: torch.Tensor) -> int:
        """The first position a suffix sweep must recompute when an intervention touches only the
        `[N, T]` positions `touched` (rows of a stack or of the batch): the first touched position,
        at most the first last position, moved back until no earlier position sees a later one."""
        hit = touched.any(0).nonzero()
        start = min(int(hit[0]) if len(hit) else self.n_tokens, int(self.last.min()))
        if start and self._reach is None:
            self._reach = self._furthest_keys()
        while start > 0 and int(self._reach[start - 1]) >= start:
            start -= 1
        return start

    # ------------------------------------------------------------------ running layers
    def _layer(self, index: int, hidden: torch.Tensor, kwargs: dict, n_variants: int = 1, start: int = 0,
               read_last: bool = False) -> torch.Tensor:
        """Decoder layer `index` on `hidden` (positions `start..` of `n_variants` stacked copies of the batch),
        followed by what the model writes after that layer besides it (DeepStack, `self.gaps`).

        `read_last`: only the final position of the output is read, if this is the last layer (`_mlp_at_final`)."""
        if self.ledger is not None:
            self.ledger.layer(index, hidden.shape[0], hidden.shape[1])
            return hidden
        with ExitStack() as stack:
            if read_last and index == self.n_layers - 1 and self._final_is_last and self.adapter.narrow_last_mlp:
                stack.callback(self.parts.mlp(index).register_forward_pre_hook(_mlp_at_final, with_kwargs=True).remove)
            out = self.parts.layers[index](hidden, **kwargs)
        out = out[0] if isinstance(out, (tuple, list)) else out  # some layers return (hidden, ...)
        return self.gaps.apply(index, out, n_variants, start)

    @cached_property
    def _final_is_last(self) -> bool:
        """Every row's last position is the final one and no between-layer writer follows the last layer."""
        return self.last_is_final and (self.n_layers - 1) not in self.gaps.writes

    def _logits(self, hidden: torch.Tensor, n_variants: int, start: int = 0) -> torch.Tensor:
        if self.ledger is not None:
            return zero_logits(self.adapter, hidden.shape[0])
        rows = torch.arange(hidden.shape[0], device=hidden.device)
        last = hidden[rows, (self.last.to(hidden.device) - start).repeat(n_variants)]
        return self.parts.read(last).float()

    @torch.no_grad()
    def states(self, stop: int | None = None) -> Iterator[tuple[int, torch.Tensor]]:
        """`(l, input of layer l)` for `l = 0 .. stop-1` (every layer by default), each computed from the
        previous one by running one plain layer: one pass's worth of layers in all, one state held."""
        stop = self.n_layers if stop is None else stop
        hidden = self._first
        walk: dict = {}  # the walk's own copy of state the layers write into (`_tile`)
        for index in range(stop):
            yield index, hidden
            if index + 1 < stop:
                hidden = self._layer(index, hidden, _tile(self._calls[index], self.n_rows, 1, walk))

    @torch.no_grad()
    def resume(self, layer: int, hidden: torch.Tensor, n_variants: int = 1) -> torch.Tensor:
        """`[V*B, vocab]` last-position logits of running layers `layer..` from `hidden` (layer `layer`'s
        input), stacked `n_variants` times along the batch (variant-major)."""
        memo: dict = {}
        h = _tile(hidden, self.n_rows, n_variants, memo)
        for index in range(layer, self.n_layers):
            h = self._layer(index, h, _tile(self._calls[index], self.n_rows, n_variants, memo), n_variants, read_last=True)
        return self._logits(h, n_variants)

    @torch.no_grad()
    def sweep(
        self, first_layers: Sequence[int], starts: Sequence[int], intervene: Callable[[Sequence[int]], AbstractContextManager],
        per_pass: int | None = None, on_done: Callable[[int], None] | None = None, row_extra: int = 0,
        branches: Sequence[tuple[int, int] | None] | None = None,
    ) -> torch.Tensor:
        """`[n, B, vocab]` last-position logits of `n` ≥ 1 variants, variant j acting from layer
        `first_layers[j]` on and touching positions `starts[j]..` only (`start_for`; 0: every position).

        Variants with a start run in one `suffix_sweep`; the others resume at their first layer,
        `per_pass` with the same first layer stacked (default: `max_variants`). `intervene(js)` is
        entered around each stacked pass and applies variants `js` to its row blocks, in that order;
        `row_extra` is what it holds per stacked row, in floats. `on_done(k)`: k variants finished.
        `branches`: variants of a suffix sweep that branch off another (`suffix_sweep`); the others ignore it.
        """
        out: list[torch.Tensor | None] = [None] * len(first_layers)
        later = [j for j, start in enumerate(starts) if start]
        if later:
            where = {j: k for k, j in enumerate(later)}
            branch = None if branches is None else [
                None if branches[j] is None or branches[j][0] not in where else (where[branches[j][0]], branches[j][1]) for j in later]
            logits = self.suffix_sweep([first_layers[j] for j in later], [starts[j] for j in later],
                                       lambda js: intervene([later[k] for k in js]), per_pass, on_done, row_extra=row_extra,
                                       branches=branch)
            for k, j in enumerate(later):
                out[j] = logits[k]
        by_layer: dict[int, list[int]] = {}
        for j, start in enumerate(starts):
            if not start:
                by_layer.setdefault(first_layers[j], []).append(j)
        per_pass = per_pass or max_variants(self.adapter, self.n_tokens, row_extra=row_extra)
        for layer, hidden in self.states(stop=max(by_layer, default=-1) + 1):
            group = by_layer.get(layer, [])
            for first in range(0, len(group), per_pass):
                chunk = group[first : first + per_pass]
                with intervene(chunk):
                    logits = self.resume(layer, hidden, len(chunk))
                for v, j in enumerate(chunk):
                    out[j] = logits[v * self.n_rows : (v + 1) * self.n_rows]
                if on_done:
                    on_done(len(chunk))
        return self._stacked(out)

    @torch.no_grad()
    def suffix_sweep(
        self, first_layers: Sequence[int], starts: Sequence[int] | int, intervene: Callable[[Sequence[int]], AbstractContextManager],
        per_pass: int | None = None, on_done: Callable[[int], None] | None = None, group_size: int | None = None,
        row_extra: int = 0, branches: Sequence[tuple[int, int] | None] | None = None,
    ) -> torch.Tensor:
        """`[n, B, vocab]` last-position logits of `n` variants, variant j touching only positions
        `starts[j]..` (from `start_for`; one int: the same for all) and acting from layer `first_layers[j]` on.

        Layers run on a variant's positions `start..` alone, variants with the same start stacked
        along the batch, `per_pass` at a time (default: as memory allows, `max_variants`);
        `intervene(js)` is entered around each stacked pass and must apply variants `js` to its row
        blocks, in that order (as for `resume`). The plain pass that yields each layer's keys and values
        runs alongside, once for all starts; variants are carried from their first layer in groups
        whose suffixes together take about what one plain pass's activations take, so memory stays
        about a plain pass's (or `group_size` variants a group). `row_extra`: what `intervene` itself
        holds per stacked row, in floats (a knockout's blocked-entry mask), for the default `per_pass`.
        `on_done(k)` reports k variants finished.

        `branches[j] = (k, l)` says that variant j edits what variant k edits in layers before l, with the
        same start (a knockout of layers 0..5 and one of every layer agree up to layer 6): j then joins at
        layer l from k's state there instead of at its first layer from the plain one, the same rows that it
        would compute (k must branch off nothing, and act from layer l at the latest).
        """
        n, n_tok = len(first_layers), self.n_tokens
        starts = [starts] * n if isinstance(starts, int) else list(starts)
        bad = sorted({s for s in starts if not 0 < s <= int(self.last.min())})
        if bad:
            raise ValueError(f"a suffix starts after the first position and at the latest at the last one, not at {bad}")
        branches = list(branches) if branches is not None else [None] * n
        for j, branch in enumerate(branches):
            if branch is not None:
                k, layer = branch
                if branches[k] is not None or starts[k] != starts[j] or first_layers[k] > layer or k == j:
                    raise ValueError(f"variant {j} cannot branch off variant {k} at layer {layer}")
        children: dict[int, list[int]] = {}
        for j, branch in enumerate(branches):
            if branch is not None:
                children.setdefault(branch[0], []).append(j)
        d = self._width
        room = _plain_pass_size(self.adapter, n_tok) // 4  # floats per row for the carried suffixes
        # a variant and those branching off it are carried in one group
        order = sorted((j for j in range(n) if branches[j] is None), key=lambda j: first_layers[j])
        out: list[torch.Tensor | None] = [None] * n
        while order:
            group, size = [], 0

            def fits(j: int) -> bool:
                return len(group) < group_size if group_size else (not group or size + (n_tok - starts[j]) * d <= room)

            while order and fits(order[0]):
                root = order.pop(0)
                group.append(root)
                size += (n_tok - starts[root]) * d
                for j in children.pop(root, []):
                    if fits(j):
                        group.append(j)
                        size += (n_tok - starts[j]) * d
                    else:  # no room beside its root: it runs from its own first layer, in a later group
                        branches[j] = None
                        bisect.insort(order, j, key=lambda k: first_layers[k])
            for j, logits in self._sweep_group(group, first_layers, starts, intervene, per_pass, row_extra, branches):
                out[j] = logits
            if on_done:
                on_done(len(group))
        return self._stacked(out)

    def _sweep_group(self, group, first_layers, starts, intervene, per_pass, row_extra, branches):
        """Carry the variants `group` through the layers, each from where it joins (its first layer, or
        where it branches off another); yields `(j, logits)`."""
        kept: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        keep = _keeping(kept)

        def prepend(n_variants: int, start: int):
            def joined(earlier: torch.Tensor, later: torch.Tensor) -> torch.Tensor:
                # one allocation: the plain pass's positions `< start`, the same for every variant, then the suffix's
                rows, heads, n_later, dim = later.shape
                out = later.new_empty(rows, heads, start + n_later, dim)
                out.view(n_variants, rows // n_variants, heads, start + n_later, dim)[..., :start, :] = earlier[:, :, :start]
                out[:, :, start:] = later
                return out

            def wrapper(base, module, query, key, value, *args, **kwargs):
                earlier_key, earlier_value = kept["kv"]
                return base(module, query, joined(earlier_key, key), joined(earlier_value, value), *args, **kwargs)

            return wrapper

        n_tok = self.n_tokens
        calls = {s: self._suffix_calls(s) for s in {starts[j] for j in group}}
        passes = {s: per_pass or max_variants(self.adapter, n_tok, n_tok - s, row_extra) for s in calls}
        suffix: dict[int, torch.Tensor] = {}  # variant -> its `[B, T - start, d]` state
        joins = {j: first_layers[j] if branches[j] is None else branches[j][1] for j in group}
        waiting = sorted(group, key=lambda j: (joins[j], branches[j] is not None))  # a variant joins before its branches
        hidden = self._first
        for index in range(self.n_layers):
            if not suffix and index < joins[waiting[0]]:
                hidden = self._layer(index, hidden, self._calls[index])
                continue
            with wrap_text_attention(self.model, keep, "a suffix sweep"):  # the last layer too: its keys
                following = self._layer(index, hidden, self._calls[index])
            while waiting and joins[waiting[0]] == index:
                j = waiting.pop(0)
                # the state is replaced, never written in place, after each layer: the two may hold one tensor
                suffix[j] = hidden[:, starts[j] :] if branches[j] is None else suffix[branches[j][0]]
            for start, per in passes.items():
                active = [j for j in suffix if starts[j] == start]
                for first in range(0, len(active), per):
                    chunk = active[first : first + per]
                    h = torch.cat([suffix[j] for j in chunk])
                    memo: dict = {}
                    with intervene(chunk), wrap_text_attention(self.model, prepend(len(chunk), start), "a suffix sweep"):
                        h = self._layer(index, h, _tile(calls[start][index], self.n_rows, len(chunk), memo), len(chunk), start,
                                        read_last=True)
                    for v, j in enumerate(chunk):
                        suffix[j] = h[v * self.n_rows : (v + 1) * self.n_rows]
            kept.clear()
            hidden = following
        for j, h in suffix.items():
            yield j, self._logits(h, 1, starts[j])

    # ------------------------------------------------------------------ two batches sharing a prefix
    def shared_prefix(self, other: "PrefixRun") -> tuple[int, torch.Tensor] | None:
        """`(start, offsets)` when `other`'s rows repeat this run's rows up to a point (the same item
        under another instruction): for every row i, `other`'s positions from its first real token to
        `start` hold what this run's hold `offsets[i]` positions later (their left padding differs), with
        the same image inputs, and no position of `other` before `start` sees one after it. None when
        the batches do not pair, or share less than half of `other`'s positions (then pairing saves little).
        """
        a, b = self._batch, other._batch
        if len(a) != len(b) or [s.item_id for s in a.samples] != [s.item_id for s in b.samples]:
            return None

        def per_token(batch) -> list[str]:  # the token ids, and what runs along them (token types)
            shape = batch.inputs["input_ids"].shape
            return sorted(k for k, v in batch.inputs.items() if k not in ("attention_mask", "position_ids")
                          and isinstance(v, torch.Tensor) and v.shape == shape)

        streams = per_token(a)
        if streams != per_token(b):
            return None
        for key in set(a.inputs) | set(b.inputs):
            if key in ("attention_mask", "position_ids", *streams):
                continue
            x, y = a.inputs.get(key), b.inputs.get(key)
            same = (isinstance(x, torch.Tensor) and isinstance(y, torch.Tensor) and x.shape == y.shape
                    and torch.equal(x, y)) if isinstance(x, torch.Tensor) or isinstance(y, torch.Tensor) else x == y
            if not same:
                return None
        pads = []
        for batch in (a, b):
            ids = batch.inputs["input_ids"]
            mask = batch.inputs.get("attention_mask", torch.ones_like(ids)).to(torch.bool).cpu()
            real = mask.sum(1)
            pad = ids.shape[1] - real
            if not torch.equal(mask, torch.arange(ids.shape[1])[None] >= pad[:, None]):
                return None  # not left padding
            pads.append(pad)
        pad_a, pad_b = pads
        start = other.n_tokens
        for key in streams:
            ids_a, ids_b = a.inputs[key].cpu(), b.inputs[key].cpu()
            for i in range(len(b)):
                x, y = ids_a[i, int(pad_a[i]):], ids_b[i, int(pad_b[i]):]
                n = min(len(x), len(y))
                differ = (x[:n] != y[:n]).nonzero()
                start = min(start, int(pad_b[i]) + (int(differ[0]) if len(differ) else n))
        touched = torch.zeros(len(b), other.n_tokens, dtype=torch.bool)
        touched[:, min(start, other.n_tokens - 1):] = True
        start = other.start_for(touched)
        if start <= int(pad_b.max()) or 2 * start < other.n_tokens:
            return None
        offsets = pad_a - pad_b
        if self.ledger is None:
            # the shared positions' layer input (embeddings, image features) must agree too
            index = self._shifted(start, offsets)
            mine = self._first.gather(1, index[..., None].expand(-1, -1, self._first.shape[-1]))
            real = (torch.arange(start)[None] >= pad_b[:, None]).to(mine.device)[..., None]
            if not torch.allclose(mine * real, other._first[:, :start] * real, rtol=1e-5, atol=1e-6):
                return None
        return start, offsets

    def _shifted(self, start: int, offsets: torch.Tensor) -> torch.Tensor:
        """`[B, start]`: where this run's row i holds the paired batch's positions `0..start-1`
        (`offsets[i]` later; clamped inside the sequence, for the partner's padding, which its mask hides)."""
        index = (torch.arange(start)[None] + offsets[:, None]).clamp(0, self.n_tokens - 1)
        return index.to(self._first.device)

    @torch.no_grad()
    def query_start(self, start: int) -> int:
        """The first query row a paired sweep's attention runs on when this batch recomputes positions
        `start..` alone: the latest row at or before `start` from which the attention kernel gives rows
        `start..` the bits it gives them in the batch's own full call.

        A kernel may round a query row differently depending on how it blocks the rows together
        (torch's CPU kernel takes 32, 64 or 256 rows a block by the query length), so a suffix's rows
        alone round differently than in the whole sequence; from a block boundary, with at least as
        many rows as puts the kernel on the same block size, they do not. Which start keeps the bits is
        measured, not assumed: on layer 0 of the recorded pass, the full call against calls from the
        candidate rows, the latest candidate that agrees bit for bit (0, the full call, always does).
        Planning counts the probe's layer call and answers `start` (it counts layer passes, not attention rows)."""
        if start in self._query_starts:
            return self._query_starts[start]
        if self.ledger is not None:
            self._layer(0, self._first, self._calls[0])
            self._query_starts[start] = start
            return start
        n = self.n_tokens
        candidates = sorted({(min(start, n - least) // size) * size for size in (1, 8, 16, 32, 64, 128, 256, 512)
                             for least in (0, 192, 768)} - {0}, reverse=True)
        candidates = [c for c in candidates if 0 < c <= start]
        mask = self._calls[0].get("attention_mask")
        explicit = self._causal_mask() if mask is None else mask
        found = [0]

        def probe(base, module, query, key, value, *args, **kwargs):
            full = base(module, query, key, value, *args, **kwargs)
            for first in candidates:
                rest, named = _replacing(args, kwargs, "attention_mask", _cut(explicit, "attention_mask", first, n))
                part = base(module, query[:, :, first:], key, value, *rest, **named)
                if torch.equal(part[0][:, start - first:], full[0][:, start:]):
                    found[0] = first
                    break
            return full

        with wrap_text_attention(self.model, probe, "a paired sweep"):
            self._layer(0, self._first, self._calls[0])
        self._query_starts[start] = found[0]
        return found[0]

    @torch.no_grad()
    def paired_sweep(
        self, other: "PrefixRun", start: int, offsets: torch.Tensor, first_layers: Sequence[int],
        intervene: Callable[[Sequence[int]], AbstractContextManager], intervene_other: Callable[[Sequence[int]], AbstractContextManager],
        per_pass: int | None = None, on_done: Callable[[int], None] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(`[n, B, vocab]` on this run's rows, `[n, B, vocab]` on `other`'s) last-position logits of `n`
        variants acting from layer `first_layers[j]` on at every position of both batches, `other` sharing
        this run's prefix (`shared_prefix`: `start`, `offsets`).

        Variant j runs resumed at its first layer on this run's rows, `per_pass` stacked (default:
        `max_variants`), and in step with it, layer by layer, on `other`'s positions `start..` alone: their
        attention puts in front of their own keys and values those of this run's rows under the same
        variant in the same layer (positions `offsets[i]` later in row i). Both batches take their edits
        from `intervene(js)` and `intervene_other(js)` (rows as for `resume`; `other`'s positions from
        `start` on). `on_done(k)`: k variants finished on both batches."""
        if other.n_rows != self.n_rows:
            raise ValueError("paired batches hold the same items")
        n_rows = self.n_rows
        out_a: list[torch.Tensor | None] = [None] * len(first_layers)
        out_b: list[torch.Tensor | None] = [None] * len(first_layers)
        by_layer: dict[int, list[int]] = {}
        for j, layer in enumerate(first_layers):
            by_layer.setdefault(layer, []).append(j)
        per_pass = per_pass or max_variants(self.adapter, self.n_tokens)
        calls = other._suffix_calls(start)
        first_query = other.query_start(start)
        # from row 0 the model's own masks (sdpa's causal shortcut stays a shortcut): the very call alone
        masks = [c.get("attention_mask") for c in (other._calls if first_query == 0 else other._suffix_calls(first_query))]
        index = self._shifted(start, offsets)
        kept: dict = {}
        keep = _keeping(kept)

        # one shift for every row (the same left padding in both, as a pair's prompts usually have): a slice
        shift = int(offsets[0]) if bool((offsets == offsets[0]).all()) and 0 <= int(offsets[0]) <= self.n_tokens - start else None

        def prepend(n_variants: int, mask: torch.Tensor):
            rows = index.repeat(n_variants, 1)

            def joined(mine: torch.Tensor, theirs: torch.Tensor, skip: int = 0) -> torch.Tensor:
                if shift is not None:
                    return torch.cat([mine[:, :, shift + skip : shift + start], theirs], 2)
                where = rows[:, None, skip:, None].expand(-1, mine.shape[1], -1, mine.shape[-1])
                return torch.cat([mine.gather(2, where), theirs], 2)

            def wrapper(base, module, query, key, value, *args, **kwargs):
                # the shared positions from `first_query` on join as queries too, so that the kernel blocks
                # the suffix's query rows as the batch alone does, and gives them the same bits
                query_a, (key_a, value_a) = kept["q"], kept["kv"]
                args, kwargs = _replacing(args, kwargs, "attention_mask", mask)
                out, weights = base(module, joined(query_a, query, first_query), joined(key_a, key), joined(value_a, value), *args, **kwargs)
                cut = start - first_query
                return out[:, cut:], None if weights is None else weights[..., cut:, :]

            return wrapper

        stop = max(by_layer, default=-1) + 1
        for (layer, hidden), (_, hidden_other) in zip(self.states(stop), other.states(stop)):
            group = by_layer.get(layer, [])
            for first in range(0, len(group), per_pass):
                chunk = group[first : first + per_pass]
                n_var, memo, memo_other = len(chunk), {}, {}
                h = _tile(hidden, n_rows, n_var, memo)
                g = _tile(hidden_other[:, start:], n_rows, n_var, memo_other)
                for i in range(layer, self.n_layers):
                    with intervene(chunk), wrap_text_attention(self.model, keep, "a paired sweep"):
                        h = self._layer(i, h, _tile(self._calls[i], n_rows, n_var, memo), n_var, read_last=True)
                    mask = _tile(masks[i], n_rows, n_var, memo_other)
                    with intervene_other(chunk), wrap_text_attention(self.model, prepend(n_var, mask), "a paired sweep"):
                        g = other._layer(i, g, _tile(calls[i], n_rows, n_var, memo_other), n_var, start, read_last=True)
                    kept.clear()
                logits, logits_other = self._logits(h, n_var), other._logits(g, n_var, start)
                for v, j in enumerate(chunk):
                    out_a[j] = logits[v * n_rows : (v + 1) * n_rows]
                    out_b[j] = logits_other[v * n_rows : (v + 1) * n_rows]
                if on_done:
                    on_done(n_var)
        return self._stacked(out_a), other._stacked(out_b)

    def _stacked(self, out: list[torch.Tensor]) -> torch.Tensor:
        """`[n, B, vocab]` from n `[B, vocab]` logits (planning: zeros that take one float)."""
        if self.ledger is not None:
            return zero_logits(self.adapter, len(out), self.n_rows)
        return torch.stack(out)

    @property
    def last_is_final(self) -> bool:
        """Whether every row's last position is the final one (left padding): `last_sweep` applies."""
        return bool((self.last == self.n_tokens - 1).all())

    @torch.no_grad()
    def last_sweep(
        self, first_layers: Sequence[int], intervene: Callable[[Sequence[int]], AbstractContextManager],
        per_pass: int | None = None, on_done: Callable[[int], None] | None = None,
        blocked: Callable[[int, Sequence[int]], torch.Tensor | None] | None = None,
    ) -> torch.Tensor:
        """`[n, B, vocab]` last-position logits of `n` variants that touch only the final position, variant j
        acting from layer `first_layers[j]` on; every row's last position must be the final one (`last_is_final`).

        Variants are query columns of one pass per layer (see the module docstring), `per_pass` at a time
        (default `max_columns`), each joining at its first layer; each layer's keys and values are the
        recorded pass's (`keep_final`) or come from one plain walk over the layers, for all variants.
        `intervene(js)` is entered around each pass and must apply variants `js` to their columns, in
        that order (`variant_columns`). `blocked(layer, js)`, if given, is `[B, len(js), T - 1]`: the earlier
        positions each of those columns may not attend to in that layer (a knockout into the final
        position), or None for none. `on_done(k)` reports k variants finished.
        """
        if not self.last_is_final:
            raise ValueError("a last-position sweep needs every row's last position to be the final one (left padding)")
        final = torch.zeros(self.n_rows, self.n_tokens, dtype=torch.bool)
        final[:, -1] = True
        if self.start_for(final) != self.n_tokens - 1:
            raise ValueError("a last-position sweep needs a final position that no earlier position sees")
        if self.gaps.touches(self.n_tokens - 1):
            raise ValueError("a last-position sweep needs a final position that no between-layer writer touches")
        n = len(first_layers)
        if not n:
            raise ValueError("a last-position sweep needs at least one variant")
        per_pass = per_pass or max_columns(self.adapter, self.n_tokens)
        calls = self._suffix_calls(self.n_tokens - 1)
        kept: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        keep = _keeping(kept)

        def prepend(base, module, query, key, value, *args, **kwargs):
            earlier_key, earlier_value = kept["kv"]
            return base(module, query, torch.cat([earlier_key[:, :, :-1], key], 2), torch.cat([earlier_value[:, :, :-1], value], 2), *args, **kwargs)

        masks: dict = {}
        waiting = sorted(range(n), key=lambda j: first_layers[j])
        active: list[int] = []
        columns: list[torch.Tensor] = []  # `[B, 1, d]` each: variant active[v]'s final position
        hidden = self._first
        for index in range(self.n_layers):
            if self._final is not None:  # kept by the recorded pass
                final_input, kept["kv"] = self._final[index]
            elif not active and index < first_layers[waiting[0]]:  # no variant acts yet
                hidden = self._layer(index, hidden, self._calls[index])
                continue
            else:
                final_input = hidden[:, -1:]
                with wrap_text_attention(self.model, keep, "a last-position sweep"):  # the last layer too: its keys
                    hidden = self._layer(index, hidden, self._calls[index])
            while waiting and first_layers[waiting[0]] == index:
                active.append(waiting.pop(0))
                columns.append(final_input)
            # one plain walk for all variants; its columns pass per_pass at a time
            for first in range(0, len(active), per_pass):
                chunk = slice(first, first + per_pass)
                cut = blocked(index, active[chunk]) if blocked else None
                kwargs = self._column_call(calls[index], len(active[chunk]), masks, cut)
                with intervene(active[chunk]), wrap_text_attention(self.model, prepend, "a last-position sweep"):
                    # columns are the final position, which no between-layer writer touches (checked above)
                    out = self._layer(index, torch.cat(columns[chunk], 1), kwargs, start=self.n_tokens - 1)
                columns[chunk] = out.split(1, 1)
            kept.clear()
        if on_done:
            on_done(n)
        if self.ledger is not None:
            return zero_logits(self.adapter, n, self.n_rows)
        logits = None
        for first in range(0, n, per_pass):
            chunk = self.parts.read(torch.cat(columns[first : first + per_pass], 1)).float()
            if logits is None:  # written in place, chunk by chunk: the logits are held once, not twice
                logits = chunk.new_empty(n, self.n_rows, chunk.shape[-1])
            logits[torch.tensor(active[first : first + per_pass])] = chunk.transpose(0, 1)
        return logits

    def _column_call(self, kwargs: dict, n_columns: int, masks: dict, cut: torch.Tensor | None = None) -> dict:
        """One layer's keyword arguments for `n_columns` query columns at the final position (`cut`: the
        `[B, V, T - 1]` earlier positions each column may not see)."""
        if self.ledger is not None:
            return {}
        memo: dict = {}
        out = {k: _spread(v, k, n_columns, memo) for k, v in kwargs.items() if k != "attention_mask"}
        mask = kwargs["attention_mask"]
        if cut is not None:
            out["attention_mask"] = self._column_mask(mask, n_columns, cut)
            return out
        if (id(mask), n_columns) not in masks:
            masks[(id(mask), n_columns)] = self._column_mask(mask, n_columns)
        out["attention_mask"] = masks[(id(mask), n_columns)]
        return out

    def _column_mask(self, mask: torch.Tensor, n_columns: int, cut: torch.Tensor | None = None) -> torch.Tensor:
        """`[b, 1, V, T - 1 + V]` (b: the mask's batch; B with `cut`): every column sees what the final
        position sees among the earlier positions (`mask`: that position's row) but the ones `cut`
        (`[B, V, T - 1]`) takes from it, and of the columns itself alone."""
        row = _allowed(mask)[..., -1:, :]  # [b, heads or 1, 1, T]
        earlier = row[..., :-1].expand(*row.shape[:2], n_columns, -1)
        if cut is not None:
            earlier = earlier & ~cut.to(earlier.device)[:, None]
        own = torch.eye(n_columns, dtype=torch.bool, device=row.device).expand(*earlier.shape[:2], -1, -1)
        return as_mask(torch.cat([earlier, own], -1), self._root_impl, self._first.dtype)

    def _suffix_calls(self, start: int) -> list[dict]:
        """Every layer's keyword arguments cut to query positions `start..` (masks: their query rows)."""
        if self.ledger is not None:
            return list(self._calls)
        memo: dict = {}  # one cut per shared argument, so that stacking tiles it once too
        causal = None
        calls = []
        for kwargs in self._calls:
            kwargs = dict(kwargs)
            if kwargs.get("attention_mask") is None:
                causal = self._causal_mask() if causal is None else causal
                kwargs["attention_mask"] = causal
            for k, v in kwargs.items():
                if (id(v), k) not in memo:
                    memo[(id(v), k)] = _cut(v, k, start, self.n_tokens)
            calls.append({k: memo[(id(v), k)] for k, v in kwargs.items()})
        return calls

    def _causal_mask(self) -> torch.Tensor:
        """What sdpa's causal shortcut (no mask) stands for, as a mask whose rows can be cut."""
        like = self._first
        allowed = torch.ones(self.n_tokens, self.n_tokens, dtype=torch.bool, device=like.device).tril()[None, None]
        return as_mask(allowed, self._root_impl, like.dtype)


def _sizes(adapter) -> tuple[int, int, int]:
    """(hidden size, MLP width, key-value width) of the text model."""
    text = adapter.model.config.get_text_config()
    parts = adapter.parts
    head_dim = max(parts.head_dims)
    d = int(getattr(text, "hidden_size", parts.n_heads * head_dim))
    ffn = int(getattr(text, "intermediate_size", None) or 4 * d)
    # the widest layer's keys (layers may differ: Gemma 4; layers reusing another's keys have no k_proj)
    projections = [parts.attn(l).k_proj for l in range(parts.n_layers) if hasattr(parts.attn(l), "k_proj")]
    kv = max((int(p.out_features) for p in projections), default=parts.n_heads * head_dim)
    return d, ffn, kv


def _plain_pass_size(adapter, n_tokens: int) -> int:
    """Floats per row that a plain pass's largest live activations take: the full-sequence logits, the
    MLP's intermediates and the attention scores, per token."""
    d, ffn, _ = _sizes(adapter)
    return n_tokens * (int(adapter.parts.unembed.out_features) + 3 * ffn + 4 * d + adapter.parts.n_heads * n_tokens)


#: the share of a plain pass's activations a suffix sweep's stacked pass may take: the sweep also holds
#: the plain pass's layer input and output, one layer's keys and values, and its variants' suffixes
#: (at most a quarter of a plain pass's activations)
SUFFIX_SHARE = 0.8


def max_variants(adapter, n_tokens: int, n_queries: int | None = None, row_extra: int = 0) -> int:
    """How many variants to stack in one resumed pass so that its transient memory stays about that of
    one plain pass over the same rows (at least one).

    A resumed pass computes logits at the last position only, so the room the full-sequence logits took
    holds more variants. A suffix sweep (`n_queries` < `n_tokens` positions) computes the activations of
    its queries alone, but joins every position's keys and values per layer (and attention may repeat
    them for grouped heads); it gets `SUFFIX_SHARE` of the room. `row_extra`: floats per stacked row the
    intervention itself holds (a knockout's `[T, T]` blocked entries).
    """
    d, ffn, kv = _sizes(adapter)
    parts = adapter.parts
    n_queries = n_tokens if n_queries is None else n_queries
    per_token = 3 * ffn + 4 * d + parts.n_heads * n_tokens
    room = _plain_pass_size(adapter, n_tokens)
    if n_queries == n_tokens:
        return max(1, room // (n_tokens * per_token + row_extra))
    resumed = n_queries * per_token + 2 * n_tokens * (kv + parts.n_heads * max(parts.head_dims)) + row_extra
    return max(1, int(SUFFIX_SHARE * room) // resumed)


def max_columns(adapter, n_tokens: int) -> int:
    """How many variants a `last_sweep` stacks as query columns in one pass: as many as keep that pass's
    activations (one query per variant, every earlier position's keys and values once, scores against
    them) within `SUFFIX_SHARE` of a plain pass's, and at most `n_tokens`, so that the columns' own
    `[V, V]` block of the mask stays within the size of a plain pass's mask."""
    d, ffn, _ = _sizes(adapter)
    per_column = 3 * ffn + 4 * d + 2 * adapter.parts.n_heads * n_tokens
    return max(1, min(n_tokens, int(SUFFIX_SHARE * _plain_pass_size(adapter, n_tokens)) // per_column))
