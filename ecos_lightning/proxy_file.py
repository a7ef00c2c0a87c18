"""The image files of a proxy of an image-folder pool, checked on this machine.

:func:`proxy_image_files` resolves a proxy's paths (symlinks followed) and checks that each stays
inside the root and opens as an image, so a training run can refuse a bad proxy file before it starts.
The proxy itself is :class:`ecos_lightning.proxy.Proxy`.
"""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from .proxy import Proxy


def proxy_image_files(proxy: Proxy, where: str = "proxy file") -> list[Path]:
    """The resolved image file of each of ``proxy.paths`` (symlinks followed).

    ``ValueError`` naming the first path that leads outside the resolved ``root`` or does not open
    as an image (PIL ``verify``).
    """
    root = Path(proxy.root)
    if not root.is_dir():
        raise ValueError(f"{where}: the pool root {root} is not a folder on this machine: train where the pool is")
    real_root = root.resolve()
    files = []
    for relative in proxy.paths:
        try:
            file = (root / relative).resolve()
        except (OSError, RuntimeError) as exc:  # RuntimeError: a symlink loop
            raise ValueError(f"{where}: {relative!r} cannot be resolved ({exc}): remove it or run "
                             "`ecos-cloud sample` again") from None
        if not file.is_relative_to(real_root):
            raise ValueError(f"{where}: {relative!r} leads outside the pool root {root}: remove it or run "
                             "`ecos-cloud sample` again")
        if not file.is_file():
            what = "is not a regular file" if file.exists() else "does not exist"
            raise ValueError(f"{where}: {relative!r} {what}: remove it or run `ecos-cloud sample` again")
        try:
            with Image.open(file) as image:
                image.verify()
        except Exception as exc:  # noqa: BLE001 - PIL raises many types for a file it cannot decode
            raise ValueError(f"{where}: {relative!r} is not a readable image ({exc}): remove it or run "
                             "`ecos-cloud sample` again") from None
        files.append(file)
    if len(set(files)) != len(files):
        raise ValueError(f"{where}: two paths lead to the same image: a proxy holds each image once; run "
                         "`ecos-cloud sample` again")
    return files
