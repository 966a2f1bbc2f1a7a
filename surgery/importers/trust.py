"""Which code a spec may run without asking: a spec is a file from a repository, a pull
request or a forum post, and ``factory: "os:system"`` would run at ``plan``.

A torch source's factory runs code by design. It runs silently when it comes from a
package the user already trusts by having installed it for this purpose (torchvision,
timm, transformers, surgery itself) or from a Python file under the spec's own folder
(the spec's repository). Anything else runs only when the user says so: ``--trust-code``
on the command line, ``trust_code=True`` in the API, or ``SURGERY_TRUST_CODE=1`` in the
environment (a machine's own setting, which no file can make). transformers'
``trust_remote_code`` is the precedent. A factory the user names on the command line
(``surgery inspect package.module:callable``) is the user's own choice and runs.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
from collections.abc import Iterator
from pathlib import Path

from surgery.errors import SpecError

#: Top-level packages whose factories a spec may name without --trust-code.
TRUSTED_PACKAGES = ("torchvision", "timm", "transformers", "surgery")

#: ``SURGERY_TRUST_CODE=1``: trust every factory on this machine.
TRUST_ENV = "SURGERY_TRUST_CODE"

_trusted: contextvars.ContextVar[bool] = contextvars.ContextVar("surgery_trust_code", default=False)


@contextlib.contextmanager
def trusting_code(trust: bool = True) -> Iterator[None]:
    """Within the block, a spec's factory may name any module or file (when ``trust``;
    ``False`` leaves the setting as it is, so an inner call never withdraws trust)."""
    token = _trusted.set(_trusted.get() or trust)
    try:
        yield
    finally:
        _trusted.reset(token)


def code_is_trusted() -> bool:
    """Whether any factory may run now."""
    return _trusted.get() or os.environ.get(TRUST_ENV, "") == "1"


def check_factory(reference: str, module_ref: str, base_dir: Path) -> None:
    """Refuse, naming what would have run, a factory outside the trusted packages and the
    spec's folder unless code is trusted."""
    if code_is_trusted():
        return
    if module_ref.endswith(".py"):
        path = (base_dir / module_ref).resolve()
        if path.is_relative_to(base_dir.resolve()):
            return
        what = f"the Python file {str(path)!r}, outside the spec's folder {str(base_dir.resolve())!r}"
    else:
        package = module_ref.split(".", 1)[0]
        if package in TRUSTED_PACKAGES:
            return
        trusted = ", ".join(TRUSTED_PACKAGES)
        what = f"the module {module_ref!r}, which is not one of the packages a spec may name ({trusted})"
    raise SpecError(
        f"factory {reference!r} would run code from {what}; a spec runs such code only when you say you trust it",
        fix="read the factory's code; if you trust it, run again with --trust-code (API: trust_code=True), "
        "or move the factory file under the spec's folder",
        subject=reference,
    )
