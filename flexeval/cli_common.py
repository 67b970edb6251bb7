"""What every `flexeval` command shares: the one error path, and `--model-args key=value,...`.

The error path: a command (or a group's callback) registered on a `FlexEvalTyper` runs inside
`one_error_path`, which turns what a user can cause into one line on stderr and an exit code:
FlexEvalError -> its message, exit 1; Ctrl-C -> what was kept and how to continue, exit 130; a full
disk or an unwritable file -> the same kind of line, exit 1 (flexeval/interrupt.py). Anything else is
a bug and keeps its traceback.

`--model-args` is how lm-evaluation-harness and lmms-eval users pass model settings
(`--model_args pretrained=...,dtype=float16`). Each key is one of the command's own model flags,
written with underscores (`first_layer=9` is `--first-layer 9`), plus `pretrained` for `--model`. A
value is converted and checked exactly as the flag's would be; a key the command lacks is an error
listing the valid ones; a key that contradicts a flag given on the command line is an error.
"""

from __future__ import annotations

import functools

import typer

from flexeval.errors import FlexEvalError

# The model knobs --model-args may set, where the command has the flag (flexeval run has them all).
MODEL_KNOBS = ("model", "selection", "threshold", "first_layer", "zoom", "dtype", "device", "model_kind", "recipe",
               "trust_remote_code", "min_pixels", "max_pixels", "batch_size", "seed")
ALIASES = {"pretrained": "model"}  # lm-eval / lmms-eval's name of the checkpoint
MODEL_ARGS_HELP = ("the model flags as key=value,... (lm-eval / lmms-eval style), e.g. "
                   "pretrained=PATH,dtype=float16,selection=attention; checked like the flags")


def fail(message: str, code: int = 1) -> None:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code)


def one_error_path(command):
    """Wrap a command: FlexEvalError, Ctrl-C and write errors become one line and an exit code."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        from flexeval.interrupt import is_write_error, stop_message

        try:
            return command(*args, **kwargs)
        except FlexEvalError as e:
            fail(str(e))
        except KeyboardInterrupt as e:  # one line: what was kept, how to continue
            typer.secho(stop_message(e), fg=typer.colors.YELLOW, err=True)
            raise typer.Exit(130) from None
        except OSError as e:
            if not is_write_error(e):
                raise
            fail(stop_message(e))

    wrapper.error_path = one_error_path  # how a test finds that a command is wrapped
    return wrapper


class FlexEvalTyper(typer.Typer):
    """A typer app whose every command and callback runs inside `one_error_path`."""

    def command(self, *args, **kwargs):
        register = super().command(*args, **kwargs)
        return lambda f: (register(one_error_path(f)), f)[1]

    def callback(self, *args, **kwargs):
        register = super().callback(*args, **kwargs)
        return lambda f: (register(one_error_path(f)), f)[1]


def apply_model_args(ctx: typer.Context, spec: str | None) -> dict:
    """The command's parameters (ctx.params) with `--model-args` applied (see the module docstring)."""
    from flexeval.items import parse_key_values

    params = dict(ctx.params)
    if not spec:
        return params
    flags = {p.name: p for p in ctx.command.params if p.param_type_name == "option" and p.name in MODEL_KNOBS}
    valid = sorted(["pretrained", *(k for k in flags if k != "model")])
    for key, text in parse_key_values(spec, "--model-args", "dtype=float16").items():
        name = ALIASES.get(key, key)
        if name not in flags or key == "model":
            raise FlexEvalError(f"--model-args: unknown key {key!r} for `flexeval {ctx.info_name}`; "
                                f"valid keys: {', '.join(valid)}")
        param = flags[name]
        flag = max(param.opts, key=len)
        try:
            value = param.process_value(ctx, text)  # typer's own conversion and checks of the flag
        except typer.BadParameter as e:
            raise FlexEvalError(f"--model-args {key}={text}: {e.format_message()}") from None
        given = getattr(ctx.get_parameter_source(name), "name", None) == "COMMANDLINE"  # typer's own click
        if given and params[name] != value:
            raise FlexEvalError(f"--model-args {key}={text} contradicts {flag} {params[name]}; give one of them")
        params[name] = value
    return params
