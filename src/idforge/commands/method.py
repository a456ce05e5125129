"""A command for every registered method: its flags come from the method's body (the same vocabulary, defaults,
choices and help as its HTTP schema) and its image inputs, plus what its `CommandLine` adds (model files, face
choice, outputs). Errors name the flag the user typed, not the body field."""

from __future__ import annotations

import argparse
import types
import typing
from typing import Any

from idforge.commands._common import (
    add_generation_arguments,
    generation_params,
    make_engine,
    progress_bar,
    report,
)
from idforge.errors import ParameterError, check_choice
from idforge.methods.body import COMMON_FIELDS, JOB_FIELDS
from idforge.methods.persons import add_person_argument, persons_from_arguments
from idforge.methods.registry import Method, MethodCall, get_method, methods


def register(subparsers: argparse._SubParsersAction) -> None:
    for method in methods():
        add_method_command(subparsers, method)


def body_flags(method: Method) -> dict[str, str]:
    """Body field -> flag, for the fields a method adds to the common ones (images and aliases aside)."""
    images = {image.field for image in method.images} | {
        image.extra for image in method.images if image.extra
    }
    skip = COMMON_FIELDS | JOB_FIELDS | images | set(method.body.ALIASES) | method.cli.skip | {"persons"}
    return {
        name: method.cli.flags.get(name, "--" + name.replace("_", "-"))
        for name in method.body.model_fields
        if name not in skip
    }


def _flag_type(annotation: Any) -> tuple[Any, tuple[Any, ...] | None]:
    """(argparse type, choices) of a body field's annotation: Optional unwrapped, Literal as choices."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        annotation = next(arg for arg in typing.get_args(annotation) if arg is not type(None))
    if typing.get_origin(annotation) is typing.Literal:
        choices = typing.get_args(annotation)
        return (_spaced(choices) if isinstance(choices[0], str) else type(choices[0])), choices
    return annotation, None


def _spaced(choices: tuple[str, ...]) -> Any:
    """A choice with spaces ("norm average", "ease in-out") may be typed with dashes: norm-average."""

    def parse(text: str) -> str:
        if text in choices:
            return text
        for choice in choices:
            if choice.replace(" ", "-") == text:
                return choice
        return text  # argparse then names the choices

    return parse


def flag_names(method: Method) -> dict[str, str]:
    """Body field -> the flag that sets it, for error messages."""
    names = {image.field: image.flag for image in method.images}
    names |= {image.extra: image.flag for image in method.images if image.extra}
    if method.cli.person_strengths:
        names["persons"] = "--person"
    return names | dict(method.cli.flags) | body_flags(method)


def add_method_command(subparsers: argparse._SubParsersAction, method: Method) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        method.name, help=method.cli.help or method.summary, conflict_handler="resolve"
    )
    for image in method.images:
        parser.add_argument(
            image.flag,
            dest=f"image_{image.field}",
            action="append" if image.extra else "store",
            default=[] if image.extra else None,
            required=image.required,
            metavar="IMG",
            help=image.help,
        )
    group = parser.add_argument_group(method.title)
    for name, flag in body_flags(method).items():
        info = method.body.model_fields[name]
        kind, choices = _flag_type(info.annotation)
        text = info.description or ""
        if kind is bool:
            group.add_argument(flag, dest=f"param_{name}", action="store_true", default=None, help=text)
        else:
            default = None if info.is_required() else info.default
            if choices:  # checked in method_call: a one-line error, not argparse's usage dump
                text = f"{text} one of: {' | '.join(map(str, choices))}".strip()
            group.add_argument(
                flag,
                dest=f"param_{name}",
                type=kind,
                default=None,
                metavar=name.upper(),
                help=text if default is None else f"{text} (default {default})",
            )
    steps = method.body.model_fields["num_inference_steps"].default
    guidance = method.body.model_fields["guidance_scale"].default
    add_generation_arguments(parser, steps=steps, guidance=guidance, lora_flag=method.cli.lora_flag)
    if method.cli.person_strengths:
        add_person_argument(parser, method.cli.person_strengths)
    if method.cli.pick:
        pick = method.face_search.pick
        choices = " | ".join(dict.fromkeys((pick, "largest", "score", "INDEX")))
        parser.add_argument("--pick", default=pick, help=f"{choices} (face choice in reference images)")
    if method.cli.add_arguments:
        method.cli.add_arguments(parser)
    parser.set_defaults(func=run, method_name=method.name)
    return parser


def method_call(method: Method, args: argparse.Namespace) -> MethodCall:
    """The MethodCall of the command line: the body's defaults, then every flag given."""
    params: dict[str, Any] = {}
    for name in method.body.model_fields:
        info = method.body.model_fields[name]
        params[name] = None if info.is_required() else info.get_default(call_default_factory=True)
    for name, flag in body_flags(method).items():
        value = getattr(args, f"param_{name}", None)
        if value is not None:
            _, choices = _flag_type(method.body.model_fields[name].annotation)
            if choices and value not in choices:
                check_choice(flag, value, choices)
            params[name] = value
    images: dict[str, Any] = {}
    for image in method.images:
        value = getattr(args, f"image_{image.field}")
        if image.extra:
            images[image.field] = value[0] if value else None
            images[image.extra] = value[1:]
        else:
            images[image.field] = value
    options = method.cli.options(args) if method.cli.options else {}
    if method.cli.pick:
        options["pick"] = args.pick
    persons = persons_from_arguments(args) if method.cli.person_strengths else []
    return MethodCall(
        params=params, images=images, generation=generation_params(args), persons=persons, options=options
    )


def run(args: argparse.Namespace) -> int:
    method = get_method(args.method_name)
    call = method_call(method, args)
    try:
        if method.check is not None:
            method.check(call)
        request = method.build_request(call)
    except ParameterError as exc:
        flag = flag_names(method).get(exc.name)
        if flag is None:
            raise
        raise ParameterError(flag, exc.problem) from None
    choices = method.cli.model_choices(args) if method.cli.model_choices else {}
    engine = make_engine(args, **choices)
    update, close = progress_bar(args, method.name)
    try:
        result = method.run(engine, request, update)
    finally:
        close()
    written = result.save(args.output)
    if method.cli.after:
        method.cli.after(args, result)
    report(args, result, written)
    return 0
