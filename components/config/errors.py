"""ParamsError: every problem of a params file in one message, each naming its key path.

One line per problem: the dotted key path (``train.batch_size``, ``train.grid_seeds[1]``), the
value found, what is allowed, and the profile file when the applied profile sets that key (the
value then comes from configs/profiles/NAME.yaml, so that is where to fix it; when params.yaml was
changed after the profile was applied, the line says what the profile sets instead).
"""
from __future__ import annotations

import difflib
import re
import types
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from pathlib import PurePath
from typing import Annotated, Any, Union, get_args, get_origin

class _Missing:
    """The value of a problem that has none to show (a required key that is absent); one object, also
    after pickling."""

    def __repr__(self) -> str:
        return "<missing>"

    def __reduce__(self) -> str:
        return "NO_VALUE"


NO_VALUE = _Missing()
_VALUE_CHARS = 80    # longer values are cut in messages (a caption list, a whole mapping)


class FieldProblem(ValueError):
    """A check across fields that names the key it blames (relative to the model that raised it).

    pydantic reports a model-level check at the model's own path; ParamsError reads ``field`` and
    ``value`` from here so the message names e.g. ``data.raw_dir`` rather than ``data``.

    Args:
        field (str): the blamed key, dotted, relative to the model (``"raw_dir"``).
        value (Any): the value the key holds.
        message (str): what is wrong and what is allowed.
    """

    def __init__(self, field: str, value: Any, message: str):
        super().__init__(message)
        self.field, self.value, self.message = field, value, message


@dataclass(frozen=True)
class Problem:
    """One invalid key.

    Attributes:
        path (str): the dotted key path (``train.batch_size``).
        value (Any): the value found (``NO_VALUE`` for an absent required key: nothing to show).
        allowed (str): what is wrong and what is allowed (``must be >= 1``).
        profile (str | None): the profile file the value comes from, when it does.
        note (str | None): more on where the value comes from (a profile that sets another value).
    """

    path: str
    value: Any
    allowed: str
    profile: str | None = None
    note: str | None = None

    def line(self) -> str:
        shown = "" if self.value is NO_VALUE else f" = {_short(self.value)}"
        where = f" (set by profile {self.profile})" if self.profile else (f" ({self.note})" if self.note else "")
        return f"{self.path}{shown}: {self.allowed}{where}"


class ParamsError(ValueError):
    """Invalid params: every problem at once, one line each, and the file they are in.

    Args:
        problems (Iterable[Problem]): what is wrong (at least one).
        file (str, optional): the params file read (params.yaml with its folder).
        heading (str, optional): the first line; default ``"<file>: N invalid params"``.

    Attributes:
        problems (list[Problem]): as given.
        file (str | None): as given.
    """

    def __init__(self, problems: Iterable[Problem], file: str | None = None, heading: str | None = None):
        self.problems, self.file, self.heading = list(problems), file, heading
        super().__init__(self._message())

    def __reduce__(self):
        # Prefect and multiprocessing pickle exceptions; the default would call cls(message).
        return (type(self), (self.problems, self.file, self.heading))

    def _message(self) -> str:
        count = len(self.problems)
        heading = self.heading or f"{self.file or 'params'}: {count} invalid param{'s' if count != 1 else ''}"
        lines = [heading, *(f"  {problem.line()}" for problem in self.problems)]
        for profile in sorted({problem.profile for problem in self.problems if problem.profile}):
            name = PurePath(profile).stem
            lines.append(f"A key profile {name!r} sets: fix it in {profile}, then run `mesa profile use {name}`.")
        return "\n".join(lines)

    @classmethod
    def from_validation(cls, error: Any, model: type, *, prefix: str = "", file: str | None = None,
                        profile: str | None = None, profile_values: Mapping[str, Any] | None = None,
                        heading: str | None = None, extra: Iterable[Problem] = ()) -> ParamsError:
        """A ParamsError from a pydantic ``ValidationError`` of `model`.

        Args:
            error (pydantic.ValidationError): what pydantic found.
            model (type[BaseModel]): the model that was validated (to name keys and allowed keys).
            prefix (str, default ""): the model's dotted path in params.yaml (``"registry.gate"``).
            file (str, optional): the file the values came from.
            profile (str, optional): the profile file applied (``configs/profiles/micro.yaml``).
            profile_values (Mapping[str, Any], optional): what that profile sets, by dotted key.
            heading (str, optional): the message's first line.
            extra (Iterable[Problem]): problems found outside pydantic, listed after its own.
        """
        values = dict(profile_values or {})
        merged: dict[str, list] = {}  # path -> [value, [allowed...]]: union members report one key twice
        for item in error.errors(include_url=False):
            path, owner = _locate(model, item["loc"], prefix)
            value = NO_VALUE if item["type"] == "missing" else item.get("input", NO_VALUE)
            cause = (item.get("ctx") or {}).get("error")
            if isinstance(cause, FieldProblem):
                path, value, allowed = _join(path, cause.field), cause.value, cause.message
            else:
                allowed = _allowed(item, owner, path)
            entry = merged.setdefault(path, [value, []])
            if allowed not in entry[1]:
                entry[1].append(allowed)
        problems = [_from_profile(Problem(path, value, _either(allowed)), profile, values)
                    for path, (value, allowed) in merged.items()]
        return cls([*problems, *extra], file=file, heading=heading)


def _either(texts: list[str]) -> str:
    """Union members' complaints as one: "must be 'auto' or a number"."""
    if len(texts) > 1 and all(text.startswith("must be ") for text in texts):
        return "must be " + " or ".join(text.removeprefix("must be ") for text in texts)
    return " or ".join(texts)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= _VALUE_CHARS else text[:_VALUE_CHARS - 3] + "..."


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _from_profile(problem: Problem, profile: str | None, values: Mapping[str, Any]) -> Problem:
    """`problem` with the profile that sets its key (or a key it is inside: ``train.grid_seeds[1]``)."""
    key = next((k for k in values if problem.path == k or problem.path.startswith((f"{k}.", f"{k}["))), None)
    if profile is None or key is None:
        return problem
    if key == problem.path and problem.value is not NO_VALUE and problem.value != values[key]:
        # params.yaml was edited after the profile was applied: the profile is not the culprit
        return replace(problem, note=f"profile {profile} sets {_short(values[key])}")
    return replace(problem, profile=profile)


def _unwrap(annotation: Any) -> Any:
    """The type under Annotated and Optional (``Optional[Annotated[int, ...]]`` -> ``int``)."""
    while True:
        origin = get_origin(annotation)
        if origin is Annotated:
            annotation = get_args(annotation)[0]
        elif origin in (Union, types.UnionType):
            members = [a for a in get_args(annotation) if a is not type(None)]
            if len(members) != 1:
                return annotation
            annotation = members[0]
        else:
            return annotation


def _is_model(annotation: Any) -> bool:
    return isinstance(annotation, type) and hasattr(annotation, "model_fields")


def _locate(model: type, loc: tuple, prefix: str) -> tuple[str, type | None]:
    """(dotted key path, the model that holds the last key) for a pydantic error location.

    Walks the model's annotations along `loc`: field names and mapping keys become ``.key``,
    sequence positions ``[i]``; the labels pydantic adds for union members and mapping keys are
    not keys of params.yaml and are skipped.
    """
    path, node, owner = prefix, model, None
    for item in loc:
        node = _unwrap(node)
        origin = get_origin(node)
        if item == "[key]" or origin in (Union, types.UnionType):
            continue
        if _is_model(node):
            owner = node
            field = node.model_fields.get(item) if isinstance(item, str) else None
            path, node = _join(path, str(item)), (field.annotation if field else None)
        elif origin in (list, tuple, set, frozenset):
            owner = None
            args = [a for a in get_args(node) if a is not Ellipsis]
            path += f"[{item}]"
            single = len(args) == 1 or get_args(node)[-1] is Ellipsis
            node = args[0] if single and args else (args[item] if isinstance(item, int) and item < len(args) else None)
        elif origin in (dict, Mapping) or node is dict:
            owner = None
            args = get_args(node)
            path, node = _join(path, str(item)), (args[1] if len(args) == 2 else None)
        else:
            owner, node = None, None
            path = f"{path}[{item}]" if isinstance(item, int) else _join(path, str(item))
    return path, owner


_BOUNDS = {"greater_than_equal": ">=", "greater_than": ">", "less_than_equal": "<=", "less_than": "<"}


def _allowed(item: Mapping[str, Any], owner: type | None, path: str) -> str:
    """What is allowed, in the words of params.yaml (not pydantic's "Input should be ...")."""
    kind, ctx = item["type"], item.get("ctx") or {}
    key_problem = "[key]" in item["loc"]
    if kind == "extra_forbidden":
        known = list(owner.model_fields) if owner is not None else []
        leaf = path.rsplit(".", 1)[-1]
        guess = difflib.get_close_matches(leaf, known, n=1)
        hint = f" (did you mean {guess[0]!r}?)" if guess else ""
        group = path.rsplit(".", 1)[0] if "." in path else "params.yaml"
        return f"unknown key{hint}; {group} takes {', '.join(known)}" if known else f"unknown key{hint}"
    if kind == "missing":
        return "missing (required)"
    if kind in _BOUNDS:
        bound = next(iter(ctx.values()))
        text = f"must be {_BOUNDS[kind]} {bound}"
    elif kind == "multiple_of":
        text = f"must be a multiple of {ctx['multiple_of']}"
    elif kind == "bool_type":
        text = "must be true or false"
    elif kind in ("int_type", "int_from_float"):
        text = "must be a whole number"
    elif kind in ("float_type", "finite_number"):
        text = "must be a finite number" if kind == "finite_number" else "must be a number"
    elif kind in ("dict_type", "model_type", "model_attributes_type"):
        text = "must be a mapping (key: value lines)"
    elif kind in ("tuple_type", "list_type"):
        text = "must be a list"
    elif kind == "value_error":
        text = item["msg"].removeprefix("Value error, ")
    else:
        text = re.sub(r"^\w+ should (be|have)", lambda m: f"must {m.group(1)}", item["msg"])
        text = text.replace(" after validation", "")
    return f"its key {text}" if key_problem else text
