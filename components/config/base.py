"""What every params group model shares: unknown keys refused, strict types, errors as ParamsError.

Types are strict (pydantic ``strict=True``) because the stages also read the plain dict of
params.yaml: a value the schema would coerce (``"12"`` to 12, ``"false"`` to False) would mean
one thing to the typed reader and another to ``bool("false")`` in a stage. Lists become tuples
where a model holds a tuple (YAML has no tuples).
"""
from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator, Mapping
from typing import Annotated, Any, ClassVar

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, ValidationError

from components.config.errors import FieldProblem, ParamsError  # noqa: F401 (the models raise FieldProblem)


def _list_as_tuple(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


def tuple_of(item: Any) -> Any:
    """A tuple of `item` that params.yaml writes as a list (``tuple_of(int)``)."""
    return Annotated[tuple[item, ...], BeforeValidator(_list_as_tuple)]


def fixed_tuple(*items: Any) -> Any:
    """A tuple of fixed length (``[min, max]``, a bbox) that params.yaml writes as a list."""
    return Annotated[tuple[items], BeforeValidator(_list_as_tuple)]


def _not_blank(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be empty")
    return value


NonBlank = Annotated[str, AfterValidator(_not_blank)]
Probability = Annotated[float, Field(ge=0.0, le=1.0)]
Count = Annotated[int, Field(ge=1)]          # steps, batch sizes, workers: at least one
NonNegativeInt = Annotated[int, Field(ge=0)]
NonNegativeFloat = Annotated[float, Field(ge=0.0, allow_inf_nan=False)]
PositiveFloat = Annotated[float, Field(gt=0.0, allow_inf_nan=False)]


@contextlib.contextmanager
def shadowing(*names: str) -> Iterator[None]:
    """Define models whose fields are named like BaseModel attributes (params.yaml's ``validate``
    group, ``registry.register``): the field wins on instances, so pydantic's warning is noise."""
    with warnings.catch_warnings():
        for name in names:
            warnings.filterwarnings("ignore", message=f'Field name "{name}"', category=UserWarning)
        yield


class ParamsModel(BaseModel):
    """Base of every params group: unknown keys are errors, values are strict and read-only.

    Attributes:
        GROUP (ClassVar[str]): the group's dotted path in params.yaml (``"train"``,
            ``"registry.gate"``), used by ``from_params`` to name keys in errors.
    """

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)
    GROUP: ClassVar[str] = ""

    @classmethod
    def from_params(cls, mapping: Mapping[str, Any] | None, *, group: str | None = None, file: str | None = None):
        """The group from its plain mapping (None gives the defaults).

        Args:
            mapping (Mapping[str, Any] | None): the group as params.yaml holds it.
            group (str, optional): the dotted path errors name (default ``GROUP``).
            file (str, optional): the file the mapping came from, for the error message.

        Raises:
            ParamsError: every problem at once, each with its key path, value and what is allowed.
        """
        try:
            return cls.model_validate(dict(mapping or {}))
        except ValidationError as err:
            raise ParamsError.from_validation(err, cls, prefix=cls.GROUP if group is None else group,
                                              file=file) from None
