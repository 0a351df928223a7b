"""Start-up hook of safetensors_c's compatibility switch (see safetensors_c.compat).

``safetensors_c_compat.pth``, installed next to this module in site-packages, imports it at
interpreter start-up when the environment variable SAFETENSORS_C_COMPAT is set to something
other than ``0``. With ``SAFETENSORS_C_COMPAT=1`` it puts a lazy trigger on ``sys.meta_path``:
safetensors_c (and NumPy) are imported only when the process first imports ``safetensors``, at
which point the trigger calls ``safetensors_c.compat.install()`` and steps aside. A process that
never imports safetensors pays for nothing but this small module.

This module is top-level on purpose: importing anything inside safetensors_c would import the
whole package at every interpreter start.
"""

import os
import sys

VARIABLE = "SAFETENSORS_C_COMPAT"


class _Trigger:
    """Waits on ``sys.meta_path`` for the first ``import safetensors...``."""

    # safetensors_c.compat recognises (and removes) the trigger by this attribute.
    safetensors_c_trigger = True

    @classmethod
    def find_spec(cls, fullname, path=None, target=None):
        if fullname != "safetensors" and not fullname.startswith("safetensors."):
            return None
        remove()
        try:
            from safetensors_c import compat
        except Exception as exc:  # a broken install must not stop every program of the environment
            sys.stderr.write(
                f"{VARIABLE}=1: safetensors_c could not be imported ({exc!r}); "
                "'import safetensors' uses the real package\n"
            )
            return None
        compat.install()
        return compat._FINDER.find_spec(fullname, path, target)

    @classmethod
    def invalidate_caches(cls):
        pass


def activate():
    """Reads SAFETENSORS_C_COMPAT; on ``1``, arms the trigger."""
    value = os.environ.get(VARIABLE, "")
    if value == "1":
        if _Trigger not in sys.meta_path:
            sys.meta_path.insert(0, _Trigger)
    elif value not in ("", "0"):
        sys.stderr.write(
            f"{VARIABLE}={value!r} is not understood (use 1 to switch safetensors to "
            "safetensors_c, 0 for the real package); using the real package\n"
        )


def remove():
    """Takes the trigger off ``sys.meta_path``."""
    while _Trigger in sys.meta_path:
        sys.meta_path.remove(_Trigger)
