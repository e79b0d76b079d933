"""The Python API's argument checks: pydantic's `validate_call` on a public function's annotations
(strict: "3" is not an int, True is not a number), its errors turned into one `ArgumentError` line
that names the call, the argument, the value and what is allowed, as the command line's are:

    MetricMonitor(linear_depth='3'): not allowed: an integer
    metric_pass(num_classes=1): not allowed: a number >= 2

Imports nothing heavy at import time (pydantic when `checked` decorates, torch when batches are
checked), so `metric_pass` can use `refuse` and `check_pairs` and stay importable on its own."""

from __future__ import annotations

import functools
import inspect
import reprlib
from collections.abc import Iterable

from .errors import ArgumentError

_repr = reprlib.Repr()
_repr.maxstring, _repr.maxother, _repr.maxlist, _repr.maxdict = 60, 60, 6, 6


def shown(value) -> str:
    """A value as an error message shows it: its repr, cut short; an object without a repr of its
    own as <its class>."""
    text = repr(value) if not isinstance(value, (str, list, tuple, dict, set)) else None
    if text is not None and text.startswith("<") and " at 0x" in text:
        return f"<{type(value).__name__}>"
    return _repr.repr(value)


def allowed(error: dict) -> str:
    """What a pydantic error says is allowed, in the command line's words ('a number >= 1')."""
    kind, ctx = error["type"], error.get("ctx", {})
    bounds = {
        "greater_than_equal": ">= {ge}",
        "greater_than": "> {gt}",
        "less_than": "< {lt}",
        "less_than_equal": "<= {le}",
    }
    if kind in bounds:
        return "a number " + bounds[kind].format(**ctx)
    words = {
        "int_type": "an integer",
        "float_type": "a number",
        "bool_type": "true or false",
        "string_type": "a string",
        "list_type": "a list",
        "dict_type": "a mapping",
        "callable_type": "a callable",
        "sequence_str": "a list of names (not one string)",
        "extra_forbidden": "no such setting (check the spelling; a model or data module of your own has its own keys)",
        "missing": "a value (this setting is required)",
        "unexpected_keyword_argument": "no such argument",
        "missing_argument": "a value (this argument is required)",
    }
    if kind == "literal_error":
        return f"one of {ctx.get('expected', '')}"
    if kind == "is_instance_of":
        return f"an instance of {ctx.get('class', '?')}"
    if kind in words:
        return words[kind]
    return error["msg"][0].lower() + error["msg"][1:]


def _argument(loc: tuple, parameters: list[str]) -> str:
    """A validate_call error location as the argument's name: a positional index becomes the
    parameter's name; the members of a union pydantic tried are left out; items are kept."""
    name = ""
    for i, part in enumerate(loc):
        if i == 0 and isinstance(part, int):
            name = parameters[part] if part < len(parameters) else f"argument {part}"
        elif isinstance(part, int):
            name += f"[{part}]"
        elif part.isidentifier() and part not in {"int", "float", "str", "bool", "list", "dict", "none"}:
            name += f".{part}" if name else part
        elif not name:
            name = part
    return name


def one_line(call: str, error, parameters: list[str]) -> str:
    """pydantic's errors for one call as one line: the first argument it names, every reason given
    for that argument (one per member of a union)."""
    errors = error.errors()
    first = _argument(errors[0]["loc"], parameters)
    reasons = [allowed(e) for e in errors if _argument(e["loc"], parameters) == first]
    value = errors[0].get("input")
    if errors[0]["type"] == "unexpected_keyword_argument":
        return f"{call}({first}=...): no such argument; the arguments are {[p for p in parameters if p != 'self']}"
    return f"{call}({first}={shown(value)}): not allowed: {'; or '.join(dict.fromkeys(reasons))}"


def checked(func):
    """`func` with its arguments checked against its annotations when it is called (pydantic's
    `validate_call`, strict, any class allowed as an annotation), every mistake an ArgumentError
    of one line. The arguments reach `func` as validated (e.g. a tuple for a Sequence)."""
    from pydantic import ConfigDict, ValidationError, validate_call

    validated = validate_call(config=ConfigDict(strict=True, arbitrary_types_allowed=True))(func)
    parameters = [p for p in inspect.signature(func).parameters if p != "self"]
    offset = 1 if "self" in inspect.signature(func).parameters else 0
    name = func.__qualname__.removesuffix(".__init__")

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return validated(*args, **kwargs)
        except ValidationError as e:
            names = (["self"] if offset else []) + parameters
            raise ArgumentError(one_line(name, e, names)) from None

    return wrapper


def refuse(call: str, argument: str, value, what: str) -> ArgumentError:
    """The one-line error for a mistake the annotations cannot express: `raise refuse(...)`."""
    return ArgumentError(f"{call}({argument}={shown(value)}): not allowed: {what}")


def check_pairs(batches: Iterable, call: str, argument: str = "batches"):
    """`batches` with each batch checked to be an (inputs, labels) pair of tensors, labels 1-D
    and as many as the inputs; the first batch that is not is named (a dict, a Dataset's single
    sample, ...). Yields the pairs."""
    import torch

    for i, batch in enumerate(batches):
        if not (isinstance(batch, (tuple, list)) and len(batch) == 2):
            kind = (
                f"a dict with keys {sorted(map(str, batch))}"
                if isinstance(batch, dict)
                else f"a {type(batch).__name__}"
                + (f" of {len(batch)} items" if isinstance(batch, (tuple, list)) else "")
            )
            raise ArgumentError(
                f"{call}({argument}=...): batch {i} is {kind}, not an (inputs, labels) pair; give a loader that "
                "yields (x, y) batches (a DataLoader over (x, y) samples, or a collate_fn that returns them)"
            )
        x, y = batch
        if not (isinstance(x, torch.Tensor) and isinstance(y, torch.Tensor) and y.dim() == 1 and len(x) == len(y)):
            what = lambda t: f"a tensor of shape {tuple(t.shape)}" if isinstance(t, torch.Tensor) else type(t).__name__  # noqa: E731
            raise ArgumentError(
                f"{call}({argument}=...): batch {i} is ({what(x)}, {what(y)}); expected (inputs [B, ...], labels [B]) "
                "tensors: a DataLoader's batches, not a Dataset's single samples"
            )
        yield x, y
